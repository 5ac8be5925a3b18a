"""The paper's 4x4 stride-2 convolutions with a faster kernel gradient in bfloat16:
Keras' `Conv2D` and `Conv2DTranspose`, whose weight gradient on small feature maps is
computed by a matrix product or a forward convolution instead of `Conv2DBackpropFilter`.

On a CPU without AMX, oneDNN runs a bfloat16 `Conv2DBackpropFilter` with its older
`jit_bf16` kernel: on the deepest layers (4x4 and 8x8 outputs at batch 128) it takes 2-3
times as long as the same layer's forward pass, and no less than float32. The same sum
dw[kh, kw, c, o] = sum over n, i, j of x_pad[n, 2i + kh, 2j + kw, c] * dy[n, i, j, o]
is cheaper there as (docs/performance.md has the profile):
- a 4x4 output: one matmul of the patches (built by `space_to_depth` and four slices,
  not `extract_patches`, which runs on Eigen) by dy, `brg_matmul` at the GEMM peak;
- an 8x8 output: a forward convolution of the padded input, channels as the batch, with
  dy as a 2-dilated filter, which runs oneDNN's `brg_conv_fwd` kernel.
Larger outputs, float32 (where the backward kernel is already as fast as either), other
kernel sizes and strides keep Keras' own path. Both are sums in a fixed order, so op
determinism holds. The input gradient is the usual transposed convolution.

These are training layers: `nets.serialisation.save_model` writes them as Keras' own,
with the same config and weights.
"""

from __future__ import annotations

import keras
import tensorflow as tf

# Output sides (of the strided convolution) at or below which each form is the faster.
MATMUL_MAX_SIDE, DILATED_MAX_SIDE = 4, 8


def weight_gradient(x: tf.Tensor, dy: tf.Tensor, shape: tuple[int, int, int, int]) -> tf.Tensor:
    """The gradient, with respect to a (4, 4, C, O) kernel `shape`, of
    `sum(conv2d(x, kernel, strides=2, padding="SAME") * dy)`; x (B, 2S, 2S, C), dy (B, S, S, O).
    """
    side, (_, _, channels, filters) = dy.shape[1], shape
    padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])  # SAME for k4 s2: 1 on each side
    if side <= MATMUL_MAX_SIDE:
        # 1. Patches: x_pad[n, 2i + 2a + p, 2j + 2b + q, c] is blocks[n, i + a, j + b, (p, q, c)].
        blocks = tf.nn.space_to_depth(padded, 2)  # (B, S + 1, S + 1, 4C)
        patches = tf.concat([blocks[:, a:a + side, b:b + side] for a in (0, 1) for b in (0, 1)],
                            axis=-1)  # (B, S, S, 16C) in (a, b, p, q, c) order
        grad = tf.matmul(tf.reshape(patches, [-1, 16 * channels]),
                         tf.reshape(dy, [-1, filters]), transpose_a=True)  # (16C, O)
        # 2. kh = 2a + p, kw = 2b + q.
        grad = tf.transpose(tf.reshape(grad, [2, 2, 2, 2, channels, filters]), [0, 2, 1, 3, 4, 5])
        return tf.reshape(grad, shape)
    if side <= DILATED_MAX_SIDE:
        images = tf.transpose(padded, [3, 1, 2, 0])  # (C, 2S + 2, 2S + 2, B)
        kernel = tf.transpose(dy, [1, 2, 0, 3])  # (S, S, B, O)
        grad = tf.nn.conv2d(images, kernel, 1, "VALID", dilations=2)  # (C, 4, 4, O)
        return tf.transpose(grad, [1, 2, 0, 3])
    return tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=shape, out_backprop=dy,
                                           strides=[1, 2, 2, 1], padding="SAME")


def _takes_faster_gradient(layer: keras.layers.Layer, small_side: int) -> bool:
    """Whether `layer` is a 4x4 stride-2 'same' convolution in bfloat16 without bias whose
    strided side `small_side` is small enough for `weight_gradient`'s faster forms."""
    return (layer.compute_dtype == "bfloat16" and not layer.use_bias
            and tuple(layer.kernel_size) == (4, 4) and tuple(layer.strides) == (2, 2)
            and layer.padding == "same" and tuple(layer.dilation_rate) == (1, 1)
            and layer.data_format == "channels_last" and small_side <= DILATED_MAX_SIDE)


@keras.saving.register_keras_serializable(package="dcgan")
class FastGradConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D`, with `weight_gradient` as its kernel gradient where faster."""

    keras_twin = keras.layers.Conv2D

    def convolution_op(self, inputs: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        if inputs.shape[1] is None or not _takes_faster_gradient(self, inputs.shape[1] // 2):
            return super().convolution_op(inputs, kernel)

        @tf.custom_gradient
        def conv(x: tf.Tensor, w: tf.Tensor) -> tuple[tf.Tensor, object]:
            def grad(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                dx = tf.nn.conv2d_transpose(dy, w, tf.shape(x), 2, "SAME")
                return dx, weight_gradient(x, dy, tuple(w.shape))

            return tf.nn.conv2d(x, w, 2, "SAME"), grad

        return conv(inputs, tf.convert_to_tensor(kernel))


@keras.saving.register_keras_serializable(package="dcgan")
class FastGradConv2DTranspose(keras.layers.Conv2DTranspose):
    """`keras.layers.Conv2DTranspose`, with `weight_gradient` as its kernel gradient where
    faster: its kernel (4, 4, O, C) is that of the strided convolution from its output to
    its input, so the roles of x and dy swap."""

    keras_twin = keras.layers.Conv2DTranspose

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        if inputs.shape[1] is None or not _takes_faster_gradient(self, inputs.shape[1]):
            return super().call(inputs)
        _, height, width, _ = inputs.shape
        output_shape = tf.stack([tf.shape(inputs)[0], 2 * height, 2 * width, self.filters])

        @tf.custom_gradient
        def conv_transpose(x: tf.Tensor, w: tf.Tensor) -> tuple[tf.Tensor, object]:
            def grad(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                return tf.nn.conv2d(dy, w, 2, "SAME"), weight_gradient(dy, x, tuple(w.shape))

            return tf.nn.conv2d_transpose(x, w, output_shape, 2, "SAME"), grad

        outputs = conv_transpose(inputs, tf.convert_to_tensor(self.kernel))
        return outputs if self.activation is None else self.activation(outputs)
