"""Reproducibility and precision: the one place that seeds every random source, makes TF
deterministic (`seed_everything`), and sets Keras' dtype policy (`set_precision`).

Every stage that trains or samples calls `seed_everything` before it builds a model, so the
same params give the same bytes: weights, samples, metrics (two clean `dvc repro` runs give
identical md5s in dvc.lock). Op determinism costs little here; docs/reproducibility.md gives
the figure. Training then calls `set_precision`: `auto` resolves to mixed_bfloat16 where the
hardware computes bfloat16 natively, float32 elsewhere (emulated bfloat16 ran about 20x
slower).
"""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this machine computes bfloat16 natively: a GPU of compute capability 8.0 or
    newer (Ampere on), else a CPU with AVX512_BF16 or AMX. An AVX2-only CPU emulates it: an
    MNIST epoch took 321 s in mixed_bfloat16 (other work sharing the cores), about 14 s in
    float32, on one."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return tuple(details.get("compute_capability", (0, 0))) >= (8, 0)
    try:
        flags = cpuinfo.read_text()
    except OSError:  # not Linux: no way to tell, so the safe choice
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def resolve_precision(precision: str) -> str:
    """The Keras dtype policy for `train.precision`: `auto` becomes mixed_bfloat16 where
    bfloat16 is native (see `native_bfloat16`), float32 elsewhere; others are kept."""
    if precision != "auto":
        return precision
    return "mixed_bfloat16" if native_bfloat16() else "float32"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TF, and make TF ops deterministic.

    Keras' session is cleared first, for its name counters: layer names go into the saved
    files, and a second model built in one process would otherwise be saved as `conv2d_7`
    where the first was `conv2d`.
    """
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def set_precision(precision: str) -> str:
    """Set Keras' global dtype policy for `train.precision` (`auto` resolved by
    `resolve_precision`); returns the policy set. Call it before building the models."""
    policy = resolve_precision(precision)
    keras.mixed_precision.set_dtype_policy(policy)
    return policy
