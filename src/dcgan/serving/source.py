"""Find a generator from what a user names: a registered version, a run's model, or a file.

`dcgan sample` and `dcgan export` take any of:
- `models:/dcgan-generator/3` or `models:/dcgan-generator@best-mnist-5k` (the registry);
- `runs:/<run id>/generator` (a run's logged model);
- a `.keras` file (e.g. models/generator.keras, the train stage's output).

URIs are read from the MLflow store the pipeline uses ($MLFLOW_TRACKING_URI, else the
repo's mlflow.db). Each mistake is one UserError line naming what to use instead.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import keras

from dcgan.core.errors import UserError

URI_SCHEMES = ("models:/", "runs:/")
REMEDY = ("name a .keras file (models/generator.keras after `dvc repro`), "
          "models:/dcgan-generator/<version>, models:/dcgan-generator@<alias> or "
          "runs:/<run id>/generator")


@dataclass(frozen=True)
class Source:
    """A loaded generator and the MLflow run it belongs to (None when no run is known)."""

    generator: keras.Model
    run_id: str | None


def load(ref: str) -> Source:
    """Load the generator `ref` names, and find its run.

    For a file, the run is the one tagged with the file's md5 (the run its train stage
    logged), if the store has it.

    Raises:
        UserError: if `ref` names no model, an unset alias, a missing version or run, a
            file that is not a Keras model, or a model that is not a generator.
    """
    if ref.startswith(URI_SCHEMES):
        generator, run_id = _from_mlflow(ref)
    else:
        from dcgan.nets.serialisation import load_model

        generator = load_model(Path(ref), remedy=REMEDY)
        run_id = _run_of_file(Path(ref))
    _check_generator(generator, ref)
    return Source(generator, run_id)


def float32_copy(generator: keras.Model) -> keras.Model:
    """The generator with every layer computing in float32, same weights.

    A generator trained under `mixed_bfloat16` keeps that policy in its saved config;
    ONNX and TFLite exporters need float32 graphs, and float32 is what parity is checked
    against.
    """
    config = json.loads(json.dumps(generator.get_config()).replace(
        '"name": "mixed_bfloat16"', '"name": "float32"').replace(
        '"name": "mixed_float16"', '"name": "float32"'))
    copy = generator.__class__.from_config(config)
    copy.set_weights(generator.get_weights())
    return copy


def _from_mlflow(uri: str) -> tuple[keras.Model, str | None]:
    """The Keras flavour of a logged model, and the run that logged it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from dcgan.tracking.store import tracking_uri, use_store

    use_store(create=False)
    try:
        info = mlflow.models.get_model_info(uri)
        if "keras" not in info.flavors:
            raise UserError(f"{uri}: a {', '.join(info.flavors)} model, not a Keras generator; "
                            f"{REMEDY}")
        generator = mlflow.keras.load_model(
            uri, load_model_kwargs={"compile": False, "safe_mode": True})
    except MlflowException as err:
        raise UserError(f"{uri}: {_first_line(err.message)} in {tracking_uri()}; "
                        f"{_hint(uri)}") from None
    return generator, info.run_id


def _hint(uri: str) -> str:
    """What to do when `uri` names nothing in the store."""
    if "@" in uri:
        return ("`dcgan sync` sets best-<dataset> after a pipeline run; use a version "
                "number instead (`mlflow ui`: Models lists them)")
    if uri.startswith("runs:/"):
        return "`dcgan compare` lists the runs; a run's model is runs:/<run id>/generator"
    return "`mlflow ui` (Models) lists the registered versions; `dcgan sync` registers one"


def _first_line(text: str) -> str:
    return " ".join(text.strip().split("\n")[0].split()).rstrip(".")


def _run_of_file(path: Path) -> str | None:
    """The run tagged with the file's md5, if the store exists and has one."""
    from dcgan.tracking import queries
    from dcgan.tracking.store import tracking_uri

    if tracking_uri().startswith("sqlite:///") and \
            not Path(tracking_uri().removeprefix("sqlite:///")).exists():
        return None
    try:
        runs = queries.runs_of_generator(hashlib.md5(path.read_bytes()).hexdigest())
    except UserError:  # an unreachable server: the file itself is all that is needed
        return None
    return runs[0].info.run_id if runs else None


def _check_generator(model: keras.Model, ref: str) -> None:
    """Refuse a model that does not map z vectors to images (e.g. D or the classifier)."""
    inputs, outputs = model.input_shape, model.output_shape
    if not (isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(outputs, tuple)
            and len(outputs) == 4):
        raise UserError(f"{ref}: not a generator (it maps {_shape(inputs)} to "
                        f"{_shape(outputs)}, a generator maps z vectors (N, latent) to images "
                        f"(N, H, W, C)); {REMEDY}")


def _shape(shape: object) -> str:
    return re.sub(r"\bNone\b", "N", str(shape))
