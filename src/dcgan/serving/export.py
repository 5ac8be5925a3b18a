"""Export a generator to the formats other runtimes load, each checked against Keras.

- `saved_model`: a TensorFlow SavedModel folder (TF Serving, `tf.saved_model.load`),
  written by Keras 3's `Model.export(format="tf_saved_model")`; endpoint `serve`.
- `tflite`: a LiteRT / TensorFlow Lite flat buffer for phones and microcontrollers
  (`Model.export(format="litert")`, TensorFlow's converter), run by `tf.lite.Interpreter`.
- `onnx`: an ONNX graph (`Model.export(format="onnx")`, through tf2onnx), run by ONNX
  Runtime.

Every export is made from the float32 copy of the generator (source.float32_copy: the
exporters need float32 graphs) and then loaded back in its own runtime, which must
answer fixed z vectors as the Keras float32 model does, within `TOLERANCE`. Nothing is
left behind when a step fails: the file or folder appears at its path only once checked.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dcgan.core.errors import UserError

if TYPE_CHECKING:  # TensorFlow loads when an export runs, not when `dcgan --help` does
    import keras

FORMATS = {"saved_model": "", "tflite": ".tflite", "onnx": ".onnx"}
# Largest absolute difference allowed between an export's images and Keras' (tanh output
# in [-1, 1]; a pixel step is 2/255 = 0.0078). Measured on the default generator: 0 for the
# SavedModel, about 1e-6 for TFLite and ONNX (docs/serving.md).
TOLERANCE = 1e-4
# The parity check's z: fixed, so that an export is always checked on the same inputs.
PARITY_SEED, PARITY_BATCH = 0, 16


def default_path(fmt: str) -> Path:
    """Where an export goes unless told: exports/generator[.tflite|.onnx]."""
    return Path("exports") / f"generator{'_saved_model' if fmt == 'saved_model' else ''}" \
        f"{FORMATS[fmt]}"


def check_format(fmt: str) -> None:
    """Raises: UserError if `fmt` is not one of FORMATS."""
    if fmt not in FORMATS:
        raise UserError(f"cannot export to {fmt!r}: the formats are {', '.join(FORMATS)} "
                        "(TorchScript and OpenVINO need other backends or packages)")


def export(generator: keras.Model, fmt: str, out: Path) -> float:
    """Write `generator` to `out` in format `fmt` and check it against Keras.

    Replaces an earlier export at `out` only once the new one has passed.

    Returns:
        The largest absolute difference between the export's and Keras' outputs on the
        parity z.

    Raises:
        UserError: for an unknown format, a failed conversion, or a parity miss.
    """
    check_format(fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    z = np.random.default_rng(PARITY_SEED).standard_normal(
        (PARITY_BATCH, generator.input_shape[-1])).astype(np.float32)
    expected = np.asarray(generator(z, training=False), dtype=np.float32)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        staged = Path(tmp) / f"export{FORMATS[fmt]}"
        try:
            with _quiet():
                generator.export(str(staged), format=_KERAS_FORMAT[fmt], verbose=False)
        except Exception as err:  # the converters raise anything; say which format failed
            raise UserError(f"{fmt} export failed ({type(err).__name__}: "
                            f"{str(err).strip().splitlines()[-1] if str(err).strip() else ''}); "
                            "try another --format") from None
        got = RUNNERS[fmt](staged, z)
        diff = float(np.abs(got - expected).max())
        if not diff <= TOLERANCE:
            raise UserError(f"{fmt} export does not match the Keras generator: max |diff| "
                            f"{diff:.3g} > {TOLERANCE:g}; nothing written")
        _replace(staged, out)
    return diff


def _run_saved_model(path: Path, z: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))  # held: `serve` needs its variables alive
    return np.asarray(loaded.serve(z), dtype=np.float32)


def _run_tflite(path: Path, z: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    with warnings.catch_warnings():  # tf.lite.Interpreter's notice about ai-edge-litert
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    [inp], [out] = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(inp["index"], list(z.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], z)
    interpreter.invoke()
    return np.asarray(interpreter.get_tensor(out["index"]), dtype=np.float32)


def _run_onnx(path: Path, z: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [inp] = session.get_inputs()
    return np.asarray(session.run(None, {inp.name: z})[0], dtype=np.float32)


RUNNERS = {"saved_model": _run_saved_model, "tflite": _run_tflite, "onnx": _run_onnx}
_KERAS_FORMAT = {"saved_model": "tf_saved_model", "tflite": "litert", "onnx": "onnx"}


def _replace(staged: Path, out: Path) -> None:
    """Move the checked export to `out`, replacing an earlier one (file or folder)."""
    if out.is_dir() and not out.is_symlink():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(staged, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, out)


@contextlib.contextmanager
def _quiet():
    """Hide the converters' chatter (tf2onnx's and the TFLite converter's progress and
    warnings); errors still raise."""
    import logging

    loggers = [logging.getLogger(n) for n in ("tf2onnx", "absl", "tensorflow")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)

