"""Reproducibility: the one place that seeds every random source and makes TF deterministic.

Every stage that trains or samples calls `seed_everything` before it builds a model, so the
same params give the same bytes: weights, samples, metrics (two clean `dvc repro` runs give
identical md5s in dvc.lock). Op determinism costs little here; the README gives the figure.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def seed_everything(seed: int, precision: str = "float32") -> None:
    """Seed Python, NumPy and TF, make TF ops deterministic, and set the dtype policy.

    Keras' name counters are reset too: layer names go into the saved files, and a second
    model built in one process would otherwise be saved as `conv2d_7` where the first was
    `conv2d`.
    """
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_dtype_policy(precision)
