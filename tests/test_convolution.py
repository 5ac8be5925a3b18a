"""Tests of nets.convolution: its weight-gradient forms give Conv2DBackpropFilter's sums,
its layers give Keras' own outputs and gradients (bitwise in float32, where they are
Keras' own path), and they are saved as Keras' own layers."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from dcgan.nets.convolution import FastGradConv2D, FastGradConv2DTranspose, weight_gradient
from dcgan.nets.serialisation import as_keras_layers, load_model, save_model


@pytest.mark.parametrize("side", [2, 4, 8, 16])  # matmul, matmul, dilated conv, Keras' op
def test_each_weight_gradient_form_is_the_backprop_filter_sum(side: int) -> None:
    rng = np.random.default_rng(side)
    x = tf.constant(rng.normal(size=(3, 2 * side, 2 * side, 5)), tf.float32)
    dy = tf.constant(rng.normal(size=(3, side, side, 7)), tf.float32)
    want = tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=[4, 4, 5, 7], out_backprop=dy,
                                           strides=[1, 2, 2, 1], padding="SAME")
    np.testing.assert_allclose(weight_gradient(x, dy, (4, 4, 5, 7)), want, rtol=1e-4, atol=1e-4)


def _outputs_and_gradients(layer: keras.layers.Layer, x: np.ndarray) -> list[np.ndarray]:
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.cast(layer(x), tf.float32)
        loss = tf.reduce_sum(y * tf.sin(y))  # a gradient that differs per element
    return [np.asarray(tf.cast(t, tf.float32))
            for t in [y, *tape.gradient(loss, [x, layer.kernel])]]


PAIRS = [(FastGradConv2D, keras.layers.Conv2D, 8), (FastGradConv2D, keras.layers.Conv2D, 16),
         (FastGradConv2DTranspose, keras.layers.Conv2DTranspose, 4),
         (FastGradConv2DTranspose, keras.layers.Conv2DTranspose, 8)]


@pytest.mark.parametrize(("ours", "theirs", "side"), PAIRS)
def test_the_layers_match_keras_in_bfloat16(ours: type, theirs: type, side: int) -> None:
    x = np.random.default_rng(side).uniform(-1, 1, (8, side, side, 32)).astype(np.float32)
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        layers = [cls(16, 4, strides=2, padding="same", use_bias=False) for cls in (ours, theirs)]
        for layer in layers:
            layer.build(x.shape)
        layers[1].set_weights(layers[0].get_weights())
        got, want = (_outputs_and_gradients(layer, x) for layer in layers)
        ops = [_op_types(layer, x) for layer in layers]
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    for a, b in zip(got, want, strict=True):  # bfloat16 keeps 8 bits of mantissa
        np.testing.assert_allclose(a, b, rtol=0.05, atol=0.05 * np.abs(b).max())
    assert "Conv2DBackpropFilter" in ops[1]
    assert "Conv2DBackpropFilter" not in ops[0]  # the faster form was taken


def _op_types(layer: keras.layers.Layer, x: np.ndarray) -> set[str]:
    """The op types of the traced forward and backward pass of `layer` on `x`."""
    traced = tf.function(lambda x: _outputs_and_gradients_graph(layer, x))
    graph = traced.get_concrete_function(tf.constant(x)).graph.as_graph_def()
    return {node.op for node in graph.node} | {
        node.op for function in graph.library.function for node in function.node_def}


def _outputs_and_gradients_graph(layer: keras.layers.Layer, x: tf.Tensor) -> list[tf.Tensor]:
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(tf.cast(layer(x), tf.float32)))
    return tape.gradient(loss, layer.trainable_variables)


@pytest.mark.parametrize(("ours", "theirs", "side"), PAIRS)
def test_in_float32_the_layers_are_keras_own_bitwise(ours: type, theirs: type,
                                                     side: int) -> None:
    x = np.random.default_rng(side).uniform(-1, 1, (4, side, side, 8)).astype(np.float32)
    layers = [cls(6, 4, strides=2, padding="same", use_bias=False) for cls in (ours, theirs)]
    for layer in layers:
        layer.build(x.shape)
    layers[1].set_weights(layers[0].get_weights())
    for a, b in zip(*(_outputs_and_gradients(layer, x) for layer in layers), strict=True):
        np.testing.assert_array_equal(a, b)


def test_saved_models_hold_keras_convolutions(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((8, 8, 3)),
                              FastGradConv2D(4, 4, strides=2, padding="same", use_bias=False),
                              FastGradConv2DTranspose(3, 4, strides=2, padding="same")], name="g")
    assert [type(layer).__name__ for layer in as_keras_layers(model).layers] == [
        "Conv2D", "Conv2DTranspose"]
    save_model(model, tmp_path / "g.keras")
    loaded = load_model(tmp_path / "g.keras", remedy="")
    assert [type(layer) for layer in loaded.layers] == [keras.layers.Conv2D,
                                                        keras.layers.Conv2DTranspose]
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded(x), model(x))
