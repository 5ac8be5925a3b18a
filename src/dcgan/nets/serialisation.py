"""`.keras` files: saved atomically and reproducibly, loaded safely with one error line.

Every model the pipeline writes (G, D, the classifier) goes through `save_model`, and
every one it reads through `load_model`. G and D are saved as plain Keras models of built-in
layers (each training layer with a `keras_twin`, nets.batchnorm and nets.convolution,
becomes that Keras layer), so loading needs none of the package's network code.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import keras

from dcgan.core.errors import UserError
from dcgan.core.outputs import atomic_path

# A .keras file is a zip. Keras stamps it with the save time (metadata.json's date_saved
# and the weights entry's zip date) and numbers shared objects by their memory address
# (config.json's shared_object_id), so identical weights would hash differently on every
# run and DVC would see a new model. The times become the zip format's epoch, as
# reproducible builds do (wheels, SOURCE_DATE_EPOCH); the ids 0, 1, 2... in order.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def save_model(model: keras.Model, path: Path) -> None:
    """Save a model as `.keras`, atomically (a killed save never leaves a half-written
    file) and reproducibly (the same weights give the same bytes); training layers are
    written as their Keras twins (`as_keras_layers`)."""
    model = as_keras_layers(model)
    with atomic_path(path) as tmp:  # keeps the .keras suffix Keras requires
        raw = tmp.with_name(f"{tmp.stem}.raw.keras")  # what Keras writes, before restamping
        try:
            model.save(raw)
            _restamp(raw, tmp)
        finally:
            raw.unlink(missing_ok=True)


def as_keras_layers(model: keras.Model) -> keras.Model:
    """`model` with each training layer (one with a `keras_twin` class, such as
    `FusedBatchNorm`) as that Keras layer, with the same config, names and weights; `model`
    itself when it has none. For Sequential and functional models."""
    if not any(hasattr(layer, "keras_twin") for layer in model.layers):
        return model

    def plain(layer: keras.layers.Layer) -> keras.layers.Layer:
        return getattr(layer, "keras_twin", type(layer)).from_config(layer.get_config())

    twin = keras.models.clone_model(model, clone_function=plain)
    twin.set_weights(model.get_weights())
    return twin


def _restamp(src: Path, dst: Path) -> None:
    """Copy the .keras zip `src` to `dst` with every timestamp set to `ZIP_EPOCH`."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "metadata.json":
                meta = json.loads(data)
                meta["date_saved"] = "{}-{:02d}-{:02d}@{:02d}:{:02d}:{:02d}".format(*ZIP_EPOCH)
                data = json.dumps(meta).encode()
            elif info.filename == "config.json":
                data = json.dumps(_renumber_shared(json.loads(data), {})).encode()
            entry = zipfile.ZipInfo(info.filename, ZIP_EPOCH)
            entry.compress_type, entry.external_attr = info.compress_type, info.external_attr
            zout.writestr(entry, data)


def _renumber_shared(node: object, ids: dict[int, int]) -> object:
    """`node` with each `shared_object_id` replaced by its order of first appearance."""
    if isinstance(node, dict):
        return {k: ids.setdefault(v, len(ids)) if k == "shared_object_id" else
                _renumber_shared(v, ids) for k, v in node.items()}
    if isinstance(node, list):
        return [_renumber_shared(v, ids) for v in node]
    return node


def load_model(path: Path, remedy: str) -> keras.Model:
    """Load a `.keras` model saved by this package.

    Args:
        path: the file.
        remedy: what the user should run if it is missing or broken.

    Raises:
        UserError: if the file is missing or is not a Keras model.
    """
    if not Path(path).is_file():
        raise UserError(f"{path}: no model here; {remedy}")
    if not zipfile.is_zipfile(path):  # Keras would call it "File not found"
        raise UserError(f"{path}: cannot be loaded as a Keras model (not a .keras zip "
                        f"archive: truncated or another format); {remedy}")
    try:
        # safe_mode refuses Lambda layers and other code inside a model file.
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as err:
        raise UserError(f"{path}: cannot be loaded as a Keras model ({err}); {remedy}") from None
