"""The `python_function` flavour of the registered generator: z vectors in, pictures out.

MLflow serves a model through its pyfunc flavour (`mlflow models serve`, a batch
`spark_udf`, `mlflow.pyfunc.load_model`). The Keras flavour's own pyfunc returns the
generator's raw tanh output, floats in [-1, 1], which a client must then rescale and
round the way the pipeline does. This loader answers with what a client can use:

- `format: pixels` (the default): uint8 pixels, shape (N, H, W, C), 0 black, 255 white;
- `format: png`: one base64-encoded PNG per image (a string a browser or
  `base64.b64decode` turns into a file);
- `format: raw`: the generator's float32 output in [-1, 1].

The format is an MLflow inference parameter, so a served model takes it in the request:
`{"inputs": [[...100 floats...]], "params": {"format": "png"}}`.

The same logged model keeps its Keras flavour, so `mlflow.keras.load_model(uri)` still
gives the Keras generator (tracking.registry writes both). This file is copied into each
logged model (its `code/` folder, as `dcgan_generator_pyfunc.py`) and imports nothing of
the dcgan package, so the model loads where dcgan is not installed.
"""

from __future__ import annotations

import base64
import io
import os

import numpy as np

FORMATS = ("pixels", "png", "raw")
# Images per generator call: a request of many z vectors stays within memory.
BATCH = 256


def to_pixels(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats to uint8 pixels, as the pipeline's pictures (sampling.images.to_uint8)."""
    return np.clip(np.rint((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def to_png(pixels: np.ndarray) -> str:
    """One (H, W, C) uint8 image as a base64-encoded PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class GeneratorImages:
    """The generator as MLflow's pyfunc calls it: `predict(z, params)`."""

    def __init__(self, generator) -> None:
        self.generator = generator

    def predict(self, model_input, params: dict | None = None):
        """Images for the z vectors in `model_input` (an (N, latent_dim) array or frame).

        Raises:
            mlflow.exceptions.MlflowException: for an unknown format (HTTP 400 when served).
        """
        fmt = (params or {}).get("format") or "pixels"
        if fmt not in FORMATS:
            from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

            raise MlflowException(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}",
                                  INVALID_PARAMETER_VALUE)
        z = np.asarray(getattr(model_input, "values", model_input), dtype=np.float32)
        images = np.concatenate([np.asarray(self.generator(z[i:i + BATCH], training=False),
                                            dtype=np.float32)
                                 for i in range(0, max(len(z), 1), BATCH)])
        if fmt == "raw":
            return images
        pixels = to_pixels(images)
        return pixels if fmt == "pixels" else [to_png(p) for p in pixels]


def _load_pyfunc(path: str) -> GeneratorImages:
    """MLflow's loader hook: `path` is the logged model's folder, whose Keras flavour
    holds the generator (`<data>/model.keras`)."""
    import keras
    from mlflow.models import Model

    data = Model.load(os.path.join(path, "MLmodel")).flavors["keras"]["data"]
    generator = keras.saving.load_model(os.path.join(path, data, "model.keras"), compile=False,
                                        safe_mode=True)
    return GeneratorImages(generator)
