"""Tests of nets.batchnorm.FusedBatchNorm against Keras' own BatchNormalization: the same
outputs, gradients and moving statistics in float32 (1e-5 relative), in training and
inference; bfloat16 inputs; and saved models that hold Keras' layer only.

Run with `pytest tests/test_batchnorm.py -q` (a few seconds).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from dcgan.nets.batchnorm import FusedBatchNorm
from dcgan.nets.serialisation import as_keras_layers, load_model, save_model

SHAPES = [(16, 4, 4, 32), (8, 7, 7, 5), (32, 24)]  # images, and a Dense layer's output


def _pair(shape: tuple[int, ...]) -> tuple[keras.layers.Layer, keras.layers.Layer]:
    """Keras' layer and ours, built, with the same non-trivial weights."""
    ours = FusedBatchNorm(gamma_initializer=keras.initializers.RandomNormal(1.0, 0.2, seed=1),
                          beta_initializer=keras.initializers.RandomNormal(0.0, 0.2, seed=2))
    theirs = keras.layers.BatchNormalization()
    for layer in (ours, theirs):
        layer.build(shape)
    stats = np.random.default_rng(3).uniform(0.5, 1.5, (2, shape[-1])).astype(np.float32)
    ours.set_weights([*ours.get_weights()[:2], stats[0] - 1.0, stats[1]])
    theirs.set_weights(ours.get_weights())
    return ours, theirs


def _close(a: object, b: object) -> None:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_training_matches_keras_outputs_gradients_and_moving_statistics(
        shape: tuple[int, ...]) -> None:
    ours, theirs = _pair(shape)
    x = tf.constant(np.random.default_rng(0).normal(2.0, 3.0, shape).astype(np.float32))
    upstream = tf.constant(np.random.default_rng(1).normal(size=shape).astype(np.float32))
    start = [w.copy() for w in ours.get_weights()[2:]]
    for _ in range(3):  # the moving statistics move three times
        grads = []
        for layer in (ours, theirs):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True)
                loss = tf.reduce_sum(y * upstream)
            grads.append((y, *tape.gradient(loss, [x, layer.gamma, layer.beta])))
        for a, b in zip(*grads, strict=True):
            _close(a, b)
        for a, b in zip(ours.non_trainable_weights, theirs.non_trainable_weights, strict=True):
            _close(a, b)
    assert not any(np.allclose(a, b) for a, b in zip(start, ours.get_weights()[2:],
                                                     strict=True))


@pytest.mark.parametrize("shape", SHAPES)
def test_inference_matches_keras_and_leaves_the_statistics(shape: tuple[int, ...]) -> None:
    ours, theirs = _pair(shape)
    x = tf.constant(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    before = [w.copy() for w in ours.get_weights()]
    _close(ours(x, training=False), theirs(x, training=False))
    for a, b in zip(before, ours.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_bfloat16_inputs_keep_float32_weights() -> None:
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        ours = FusedBatchNorm()
        x = tf.random.stateless_normal((16, 8, 8, 4), seed=[0, 1])
        y = ours(x, training=True)
        assert y.dtype == tf.bfloat16 and ours.gamma.dtype == "float32"
        assert ours.moving_mean.dtype == "float32"
        reference = keras.layers.BatchNormalization(dtype="float32")(x, training=True)
        np.testing.assert_allclose(np.asarray(tf.cast(y, tf.float32)), reference,
                                   atol=0.05)  # bfloat16 keeps 8 bits of mantissa
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_saved_models_hold_keras_batch_norm_with_the_same_weights(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 3),
                              FusedBatchNorm(), keras.layers.ReLU()], name="g")
    x = np.random.default_rng(0).normal(size=(8, 6, 6, 3)).astype(np.float32)
    model(x, training=True)  # moving statistics away from their start
    twin = as_keras_layers(model)
    assert [type(layer).__name__ for layer in twin.layers] == [
        "Conv2D", "BatchNormalization", "ReLU"]
    assert [layer.name for layer in twin.layers] == [layer.name for layer in model.layers]
    save_model(model, tmp_path / "g.keras")
    loaded = load_model(tmp_path / "g.keras", remedy="")
    assert not any(isinstance(layer, FusedBatchNorm) for layer in loaded.layers)
    _close(loaded(x, training=False), model(x, training=False))
    assert as_keras_layers(loaded) is loaded  # nothing to convert


def test_a_channels_first_axis_is_refused() -> None:
    with pytest.raises(ValueError, match="last axis"):
        FusedBatchNorm(axis=1).build((4, 3, 8, 8))
