"""Export a generator to the formats other runtimes load, each checked against Keras.

- `saved_model`: a TensorFlow SavedModel folder (TF Serving, `tf.saved_model.load`),
  written by Keras 3's `Model.export(format="tf_saved_model")`; endpoint `serve`.
- `tflite`: a LiteRT / TensorFlow Lite flat buffer for phones and microcontrollers
  (`Model.export(format="litert")`, TensorFlow's converter), run by LiteRT's interpreter
  (the `ai-edge-litert` package; `tf.lite.Interpreter` is deprecated in its favour).
- `onnx`: an ONNX graph (`Model.export(format="onnx")`, through tf2onnx), run by ONNX
  Runtime.

Called as `export(generator, fmt, out)` by `dcgan export` (dcgan.tools.cli_use). Every
export is made from the float32 copy of the generator (generator_ref.float32_copy: the exporters
need float32 graphs) and then loaded back in its own runtime on fixed z. Its `Parity`
holds two differences:
- from that float32 copy: the conversion's own error, which must be within `TOLERANCE`;
- from the trained generator as it runs (in bfloat16 when trained under mixed_bfloat16,
  as `mlflow models serve` runs it): what a user comparing the export with the served
  model sees, mostly bfloat16's rounding, so it is reported but not held to TOLERANCE.
Nothing is left behind when a step fails: the file or folder appears at its path only
once checked.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dcgan.core.errors import UserError

if TYPE_CHECKING:  # TensorFlow loads when an export runs, not when `dcgan --help` does
    import keras

FORMATS = {"saved_model": "", "tflite": ".tflite", "onnx": ".onnx"}
# Largest absolute difference allowed between an export's images and its float32 source's
# (tanh output in [-1, 1]; a pixel step is 2/255 = 0.0078): a conversion error, not
# precision. docs/examples/export-formats.txt shows what the default generator measures.
TOLERANCE = 1e-4
# The parity check's z: fixed, so that an export is always checked on the same inputs.
PARITY_SEED, PARITY_BATCH = 0, 16


@dataclass(frozen=True)
class Parity:
    """An export's parity check: largest absolute differences between its images and
    Keras' on the PARITY_BATCH fixed z (tanh output in [-1, 1])."""

    fmt: str
    # From the float32 copy the export was made from: the conversion's error, <= TOLERANCE.
    vs_float32: float
    # From the trained generator as it runs (bfloat16 compute under mixed_bfloat16, as the
    # served model runs): what comparing the export with the served model shows.
    vs_trained: float

    def summary(self) -> str:
        """Both differences in one clause, for the line `dcgan export` prints."""
        return (f"max |diff| on {PARITY_BATCH} fixed z: {self.vs_float32:.2g} from the float32 "
                f"copy it was made from (tolerance {TOLERANCE:g}); {self.vs_trained:.2g} from "
                "the trained generator, as served")

    def metrics(self) -> dict[str, float]:
        """Both differences as MLflow metrics, named `export.<fmt>.max_abs_diff_vs_*`."""
        return {f"export.{self.fmt}.max_abs_diff_vs_float32": self.vs_float32,
                f"export.{self.fmt}.max_abs_diff_vs_trained": self.vs_trained}


def default_path(fmt: str) -> Path:
    """Where an export goes unless told: exports/generator[.tflite|.onnx]."""
    return Path("exports") / f"generator{'_saved_model' if fmt == 'saved_model' else ''}" \
        f"{FORMATS[fmt]}"


def check_format(fmt: str) -> None:
    """Raises: UserError if `fmt` is not one of FORMATS."""
    if fmt not in FORMATS:
        raise UserError(f"cannot export to {fmt!r}: the formats are {', '.join(FORMATS)} "
                        "(TorchScript and OpenVINO need other backends or packages)")


def export(generator: keras.Model, fmt: str, out: Path) -> Parity:
    """Write `generator`'s float32 copy to `out` in format `fmt` and check it against Keras.

    Replaces an earlier export at `out` only once the new one has passed.

    Args:
        generator: the trained generator as it runs (any dtype policy).
        fmt: one of FORMATS.
        out: the file (folder for saved_model) to write.

    Returns:
        The export's differences from the float32 copy and from `generator` itself.

    Raises:
        UserError: for an unknown format, a failed conversion, or a parity miss.
    """
    from dcgan.tools.generator_ref import float32_copy  # here: it imports Keras

    check_format(fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    # 1. Both references on the fixed z: the trained generator and its float32 copy.
    copy = float32_copy(generator)
    z = np.random.default_rng(PARITY_SEED).standard_normal(
        (PARITY_BATCH, generator.input_shape[-1])).astype(np.float32)
    from_trained, from_float32 = (np.asarray(g(z, training=False), dtype=np.float32)
                                  for g in (generator, copy))
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        # 2. Convert the copy into a staging path beside `out`.
        staged = Path(tmp) / f"export{FORMATS[fmt]}"
        try:
            with _quiet():
                copy.export(str(staged), format=_KERAS_FORMAT[fmt], verbose=False)
        except Exception as err:  # the converters raise anything; say which format failed
            raise UserError(f"{fmt} export failed ({type(err).__name__}: "
                            f"{str(err).strip().splitlines()[-1] if str(err).strip() else ''}); "
                            "try another --format") from None
        # 3. Run it in its own runtime; only the conversion's error is held to TOLERANCE.
        got = RUNNERS[fmt](staged, z)
        parity = Parity(fmt, vs_float32=float(np.abs(got - from_float32).max()),
                        vs_trained=float(np.abs(got - from_trained).max()))
        if not parity.vs_float32 <= TOLERANCE:
            raise UserError(f"{fmt} export does not match the Keras generator's float32 copy: "
                            f"max |diff| {parity.vs_float32:.3g} > {TOLERANCE:g}; "
                            "nothing written")
        # 4. Only now put it where it was asked for.
        _replace(staged, out)
    return parity


def _run_saved_model(path: Path, z: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))  # held: `serve` needs its variables alive
    return np.asarray(loaded.serve(z), dtype=np.float32)


def _run_tflite(path: Path, z: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    [inp], [out] = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(inp["index"], list(z.shape))  # the file's batch is 1
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

