"""The networks: generator G and discriminator D, in two architectures.

- `paper`: Radford, Metz & Chintala 2015 (arXiv 1511.06434), section 3 guidelines.
- `tutorial`: the TensorFlow DCGAN tutorial's networks, for comparison.

Both are plain `keras.Sequential` models of built-in layers, so a saved `generator.keras`
loads anywhere with `keras.saving.load_model` (nets.serialisation saves and loads them).
"""

from __future__ import annotations

import math

import keras
from keras import layers

from dcgan.core.config import TrainConfig, paper_start_size
from dcgan.core.errors import UserError


# Paper, section 4: "All weights were initialized from a zero-centered Normal
# distribution with standard deviation 0.02." BN's scale is centred on 1 instead.
# One initializer per layer, made when the layer is: an instance draws its seed when
# constructed, so a shared module-level one would give every layer the same draws and
# take its seed from before `keras.utils.set_random_seed` ran.
def _w_init() -> keras.initializers.Initializer:
    return keras.initializers.RandomNormal(0.0, 0.02)


def _gamma_init() -> keras.initializers.Initializer:
    return keras.initializers.RandomNormal(1.0, 0.02)


def _batch_norm(sync_bn: bool) -> layers.BatchNormalization:
    return layers.BatchNormalization(gamma_initializer=_gamma_init(), synchronized=sync_bn)


def _paper_depth(image_size: int) -> tuple[int, int]:
    """(start side s, number of stride-2 layers n) with image_size = s * 2**n."""
    start = paper_start_size(image_size)
    if start is None:
        raise UserError(f"image size {image_size} cannot be produced by the paper architecture")
    return start, int(math.log2(image_size // start))


def Generator(cfg: TrainConfig, image_shape: tuple[int, int, int],
              sync_bn: bool = False) -> keras.Sequential:
    """The generator G: z of `latent_dim` dims -> image of `image_shape` in [-1, 1].

    `sync_bn`: batch norm takes its statistics over the global batch, across replicas
    (set it when training on several; on one it would only cost time).

    Raises:
        UserError: if the architecture cannot produce `image_shape`.
    """
    size, _, channels = image_shape
    if cfg.arch == "tutorial":
        return _tutorial_generator(cfg.latent_dim, size, channels, sync_bn)
    start, depth = _paper_depth(size)
    width = cfg.g_filters * 2 ** (depth - 1)
    model = keras.Sequential(name="generator")
    model.add(keras.Input((cfg.latent_dim,)))
    # The paper's "project and reshape" as a convolution: no fully connected hidden layer.
    model.add(layers.Reshape((1, 1, cfg.latent_dim)))  # (B, 1, 1, z)
    model.add(layers.Conv2DTranspose(width, start, use_bias=False, kernel_initializer=_w_init()))
    model.add(_batch_norm(sync_bn))
    model.add(layers.ReLU())  # (B, s, s, F * 2**(n-1))
    for _ in range(depth - 1):
        width //= 2
        model.add(layers.Conv2DTranspose(
            width, 4, strides=2, padding="same", use_bias=False, kernel_initializer=_w_init()
        ))
        model.add(_batch_norm(sync_bn))
        model.add(layers.ReLU())  # side doubles, width halves
    # No batch norm on G's output layer; tanh matches data scaled to [-1, 1].
    model.add(layers.Conv2DTranspose(
        channels, 4, strides=2, padding="same", kernel_initializer=_w_init()
    ))
    model.add(layers.Activation("tanh", dtype="float32"))  # (B, H, W, C)
    return model


def Discriminator(cfg: TrainConfig, image_shape: tuple[int, int, int],
                  sync_bn: bool = False) -> keras.Sequential:
    """The discriminator D: image -> one real/fake logit (`sync_bn`: as for `Generator`).

    Raises:
        UserError: if the architecture cannot take `image_shape`.
    """
    if cfg.arch == "tutorial":
        return _tutorial_discriminator(image_shape)
    _, depth = _paper_depth(image_shape[0])
    model = keras.Sequential(name="discriminator")
    model.add(keras.Input(image_shape))
    # No batch norm on D's input layer (paper, section 3).
    model.add(layers.Conv2D(
        cfg.d_filters, 4, strides=2, padding="same", kernel_initializer=_w_init()
    ))
    model.add(layers.LeakyReLU(0.2))  # (B, H/2, W/2, F)
    for i in range(1, depth):
        model.add(layers.Conv2D(
            cfg.d_filters * 2**i, 4, strides=2, padding="same", use_bias=False,
            kernel_initializer=_w_init(),
        ))
        model.add(_batch_norm(sync_bn))
        model.add(layers.LeakyReLU(0.2))  # side halves, width doubles
    # "The last convolution layer is flattened and then fed into a single sigmoid output."
    model.add(layers.Flatten())
    model.add(layers.Dense(1, kernel_initializer=_w_init(), dtype="float32"))  # (B, 1) logits
    return model


def _tutorial_generator(latent_dim: int, size: int, channels: int,
                        sync_bn: bool) -> keras.Sequential:
    if size % 4:
        raise UserError(f"image size {size} cannot be produced by the tutorial architecture "
                        "(it needs a multiple of 4)")
    start = size // 4
    return keras.Sequential([
        keras.Input((latent_dim,)),
        layers.Dense(start * start * 256, use_bias=False),
        layers.BatchNormalization(synchronized=sync_bn),
        layers.LeakyReLU(),
        layers.Reshape((start, start, 256)),  # (B, s, s, 256)
        layers.Conv2DTranspose(128, 5, strides=1, padding="same", use_bias=False),
        layers.BatchNormalization(synchronized=sync_bn),
        layers.LeakyReLU(),  # (B, s, s, 128)
        layers.Conv2DTranspose(64, 5, strides=2, padding="same", use_bias=False),
        layers.BatchNormalization(synchronized=sync_bn),
        layers.LeakyReLU(),  # (B, 2s, 2s, 64)
        layers.Conv2DTranspose(channels, 5, strides=2, padding="same", use_bias=False),
        layers.Activation("tanh", dtype="float32"),  # (B, 4s, 4s, C)
    ], name="generator")


def _tutorial_discriminator(image_shape: tuple[int, int, int]) -> keras.Sequential:
    return keras.Sequential([
        keras.Input(image_shape),
        layers.Conv2D(64, 5, strides=2, padding="same"),
        layers.LeakyReLU(),
        layers.Dropout(0.3),
        layers.Conv2D(128, 5, strides=2, padding="same"),
        layers.LeakyReLU(),
        layers.Dropout(0.3),
        layers.Flatten(),
        layers.Dense(1, dtype="float32"),  # (B, 1) logits
    ], name="discriminator")
