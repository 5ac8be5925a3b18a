"""Find a generator from what a user names: a registered version, a run's model, or a file.

`dcgan sample` and `dcgan export` take any of:
- `models:/dcgan-generator/3` or `models:/dcgan-generator@best-mnist-5k` (the registry);
- `runs:/<run id>/generator` (a run's logged model);
- a `.keras` file (e.g. models/generator.keras, the train stage's output).

URIs are read from the MLflow store the pipeline uses ($MLFLOW_TRACKING_URI, else the
repo's mlflow.db). Each mistake is one UserError line naming what to use instead.
"""

from __future__ import annotations

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
class LoadedGenerator:
    """A loaded generator and the MLflow run it belongs to (None when no run is known)."""

    generator: keras.Model
    run_id: str | None


def load(ref: str) -> LoadedGenerator:
    """Load the generator `ref` names, and find its run.

    For a file, the run is the one tagged with the file's md5 (the run its train stage
    logged), if the store has it.

    Raises:
        UserError: if `ref` names no model, an unset alias, a missing version or run, a
            file that is not a Keras model, or a model that is not a generator.
    """
    from dcgan.tracking import logged

    if ref.startswith(URI_SCHEMES):
        generator, run_id = logged.load_logged_generator(ref, REMEDY)
    else:
        from dcgan.core.outputs import file_md5
        from dcgan.nets.serialisation import load_model

        generator = load_model(Path(ref), remedy=REMEDY)
        run_id = logged.run_of_file(file_md5(Path(ref)))
    _check_generator(generator, ref)
    return LoadedGenerator(generator, run_id)


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
