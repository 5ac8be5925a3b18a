"""Batch norm as one fused TensorFlow op: Keras' `BatchNormalization`, with its training and
inference passes run by `tf.nn.fused_batch_norm` (FusedBatchNormV3).

Keras 3's own layer is not fused: it casts its input to float32 and runs `tf.nn.moments`
and `tf.nn.batch_normalization`, about 40 Eigen ops per BN+ReLU forward and backward. The
fused op runs oneDNN's batch-norm kernel in bfloat16 or float32, its gradient is one op
too, and grappler's remapper can fuse a following ReLU into it (docs/performance.md).

`FusedBatchNorm` keeps the parent's weights, config and semantics: gamma, beta and the
moving statistics in float32; the batch's population variance to normalise and to update
the moving variance (`moving = moving * momentum + batch * (1 - momentum)`), as Keras 3
does. The fused op returns the Bessel-corrected variance, scaled back here by (n - 1) / n.
Inputs of rank 2 (a Dense layer's output) are normalised as (B, 1, 1, C) images.

It is a training layer: `nets.serialisation.save_model` writes it as Keras' own
`BatchNormalization` with the same weights, so every saved model stays plain Keras.
Synchronised batch norm (several replicas) stays Keras' own layer: the fused op sees one
replica's batch only.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="dcgan")
class FusedBatchNorm(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` over the last axis, computed by one fused op."""

    keras_twin = keras.layers.BatchNormalization

    def build(self, input_shape: tuple) -> None:
        if self.axis not in (-1, len(input_shape) - 1) or len(input_shape) not in (2, 4):
            raise ValueError(f"FusedBatchNorm normalises the channels (last axis) of 2-D or "
                             f"4-D inputs, not axis {self.axis} of {input_shape}")
        if self.synchronized or self.renorm or not (self.center and self.scale):
            raise ValueError("FusedBatchNorm has gamma and beta, and no renorm or sync")
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, training: bool | None = None,
             mask: tf.Tensor | None = None) -> tf.Tensor:
        if mask is not None:
            raise ValueError("FusedBatchNorm takes no mask")
        shape = tf.shape(inputs)
        x = inputs if inputs.shape.rank == 4 else tf.reshape(inputs, [-1, 1, 1, shape[-1]])
        if training and self.trainable:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, self.gamma.value, self.beta.value, epsilon=self.epsilon,
                is_training=True)  # variance: the Bessel-corrected one
            n = tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)
            population = variance * ((n - 1.0) / tf.maximum(n, 1.0))
            momentum = self.momentum
            self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
            self.moving_variance.assign(self.moving_variance * momentum
                                        + population * (1.0 - momentum))
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, self.gamma.value, self.beta.value, mean=self.moving_mean.value,
                variance=self.moving_variance.value, epsilon=self.epsilon, is_training=False)
        return y if inputs.shape.rank == 4 else tf.reshape(y, shape)

