"""The networks, one registry: `train.arch` names an entry of `ARCHITECTURES`, a generator G
and a discriminator D with the Adam settings they train with by default.

- `paper`: Radford, Metz & Chintala 2015 (arXiv 1511.06434), section 3 guidelines.
- `tutorial`: the TensorFlow DCGAN tutorial's networks, for comparison.

Both are plain `keras.Sequential` models of built-in layers, so a saved `generator.keras`
loads anywhere with `keras.saving.load_model` (nets.serialisation saves and loads them).
To add an architecture, add its two builders and an entry here, and a test in
tests/test_model.py; the params validator, the CLI and the docs read `ARCHITECTURES`.

Keras is imported inside the builders, not at the top: params validation reads this
registry in every stage, fetch included, and importing Keras costs seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dcgan.core.errors import UserError

if TYPE_CHECKING:
    import keras

    from dcgan.core.train_config import TrainConfig

    Builder = Callable[[TrainConfig, tuple[int, int, int], bool], keras.Sequential]


@dataclass(frozen=True)
class Architecture:
    """A named G and D, the image sides they can produce, and their default Adam."""

    description: str
    adam: tuple[tuple[float, float], float]  # ((G's, D's learning rate), beta1)
    sizes: str  # the image sides it can produce, in words
    fits: Callable[[int], bool]  # whether it can produce images of this side
    generator: Builder
    discriminator: Builder


def paper_start_size(image_size: int) -> int | None:
    """Side of the paper generator's first feature map, or None if it cannot reach `image_size`.

    G starts from an s x s map with s in 4..7 and doubles it n >= 2 times
    (28 = 7 * 2**2, 32 = 4 * 2**3, 64 = 4 * 2**4).
    """
    size, doublings = image_size, 0
    while size % 2 == 0 and size > 7:
        size, doublings = size // 2, doublings + 1
    return size if 4 <= size <= 7 and doublings >= 2 else None


# Paper, section 4: "All weights were initialized from a zero-centered Normal
# distribution with standard deviation 0.02." BN's scale is centred on 1 instead.
# One initializer per layer, made when the layer is: an instance draws its seed when
# constructed, so a shared module-level one would give every layer the same draws and
# take its seed from before `keras.utils.set_random_seed` ran.
def _w_init() -> keras.initializers.Initializer:
    import keras

    return keras.initializers.RandomNormal(0.0, 0.02)


def _batch_norm(sync_bn: bool, **kwargs: object) -> keras.layers.BatchNormalization:
    """Batch norm as one fused op (nets.batchnorm); over several replicas, Keras' own
    synchronised layer, whose statistics span the global batch."""
    import keras

    from dcgan.nets.batchnorm import FusedBatchNorm

    if sync_bn:
        return keras.layers.BatchNormalization(synchronized=True, **kwargs)
    return FusedBatchNorm(**kwargs)


def _paper_batch_norm(sync_bn: bool) -> keras.layers.BatchNormalization:
    import keras

    return _batch_norm(sync_bn, gamma_initializer=keras.initializers.RandomNormal(1.0, 0.02))


def _paper_depth(image_size: int) -> tuple[int, int]:
    """(start side s, number of stride-2 layers n) with image_size = s * 2**n."""
    start = paper_start_size(image_size)
    if start is None:
        raise UserError(f"image size {image_size} cannot be produced by the paper architecture")
    return start, int(math.log2(image_size // start))


def Generator(cfg: TrainConfig, image_shape: tuple[int, int, int],
              sync_bn: bool = False) -> keras.Sequential:
    """The generator G of `train.arch`: z of `latent_dim` dims -> image of `image_shape` in
    [-1, 1].

    `sync_bn`: batch norm takes its statistics over the global batch, across replicas
    (set it when training on several; on one it would only cost time).

    Raises:
        UserError: if the architecture cannot produce `image_shape`.
    """
    return ARCHITECTURES[cfg.arch].generator(cfg, image_shape, sync_bn)


def Discriminator(cfg: TrainConfig, image_shape: tuple[int, int, int],
                  sync_bn: bool = False) -> keras.Sequential:
    """The discriminator D of `train.arch`: image -> one real/fake logit (`sync_bn`: as for
    `Generator`).

    Raises:
        UserError: if the architecture cannot take `image_shape`.
    """
    return ARCHITECTURES[cfg.arch].discriminator(cfg, image_shape, sync_bn)


def _paper_generator(cfg: TrainConfig, image_shape: tuple[int, int, int],
                     sync_bn: bool) -> keras.Sequential:
    import keras
    from keras import layers

    from dcgan.nets.convolution import FastGradConv2DTranspose

    size, _, channels = image_shape
    start, depth = _paper_depth(size)
    width = cfg.g_filters * 2 ** (depth - 1)
    model = keras.Sequential(name="generator")
    model.add(keras.Input((cfg.latent_dim,)))
    # The paper's "project and reshape" as a convolution: no fully connected hidden layer.
    model.add(layers.Reshape((1, 1, cfg.latent_dim)))  # (B, 1, 1, z)
    model.add(layers.Conv2DTranspose(width, start, use_bias=False, kernel_initializer=_w_init()))
    model.add(_paper_batch_norm(sync_bn))
    model.add(layers.ReLU())  # (B, s, s, F * 2**(n-1))
    for _ in range(depth - 1):
        width //= 2
        model.add(FastGradConv2DTranspose(
            width, 4, strides=2, padding="same", use_bias=False, kernel_initializer=_w_init()
        ))
        model.add(_paper_batch_norm(sync_bn))
        model.add(layers.ReLU())  # side doubles, width halves
    # No batch norm on G's output layer; tanh matches data scaled to [-1, 1].
    model.add(layers.Conv2DTranspose(
        channels, 4, strides=2, padding="same", kernel_initializer=_w_init()
    ))
    model.add(layers.Activation("tanh", dtype="float32"))  # (B, H, W, C)
    return model


def _paper_discriminator(cfg: TrainConfig, image_shape: tuple[int, int, int],
                         sync_bn: bool) -> keras.Sequential:
    import keras
    from keras import layers

    from dcgan.nets.convolution import FastGradConv2D

    _, depth = _paper_depth(image_shape[0])
    model = keras.Sequential(name="discriminator")
    model.add(keras.Input(image_shape))
    # No batch norm on D's input layer (paper, section 3).
    model.add(layers.Conv2D(
        cfg.d_filters, 4, strides=2, padding="same", kernel_initializer=_w_init()
    ))
    model.add(layers.LeakyReLU(0.2))  # (B, H/2, W/2, F)
    for i in range(1, depth):
        model.add(FastGradConv2D(
            cfg.d_filters * 2**i, 4, strides=2, padding="same", use_bias=False,
            kernel_initializer=_w_init(),
        ))
        model.add(_paper_batch_norm(sync_bn))
        model.add(layers.LeakyReLU(0.2))  # side halves, width doubles
    # "The last convolution layer is flattened and then fed into a single sigmoid output."
    model.add(layers.Flatten())
    model.add(layers.Dense(1, kernel_initializer=_w_init(), dtype="float32"))  # (B, 1) logits
    return model


def _tutorial_generator(cfg: TrainConfig, image_shape: tuple[int, int, int],
                        sync_bn: bool) -> keras.Sequential:
    import keras
    from keras import layers

    latent_dim, (size, _, channels) = cfg.latent_dim, image_shape
    if size % 4:
        raise UserError(f"image size {size} cannot be produced by the tutorial architecture "
                        "(it needs a multiple of 4)")
    start = size // 4
    return keras.Sequential([
        keras.Input((latent_dim,)),
        layers.Dense(start * start * 256, use_bias=False),
        _batch_norm(sync_bn),
        layers.LeakyReLU(),
        layers.Reshape((start, start, 256)),  # (B, s, s, 256)
        layers.Conv2DTranspose(128, 5, strides=1, padding="same", use_bias=False),
        _batch_norm(sync_bn),
        layers.LeakyReLU(),  # (B, s, s, 128)
        layers.Conv2DTranspose(64, 5, strides=2, padding="same", use_bias=False),
        _batch_norm(sync_bn),
        layers.LeakyReLU(),  # (B, 2s, 2s, 64)
        layers.Conv2DTranspose(channels, 5, strides=2, padding="same", use_bias=False),
        layers.Activation("tanh", dtype="float32"),  # (B, 4s, 4s, C)
    ], name="generator")


def _tutorial_discriminator(cfg: TrainConfig, image_shape: tuple[int, int, int],
                            sync_bn: bool) -> keras.Sequential:
    import keras
    from keras import layers

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


ARCHITECTURES = {
    "paper": Architecture(
        "Radford et al. 2015's guidelines (arXiv 1511.06434, section 3)",
        # Two time-scales with G's rate 4x D's, this project's recipe (docs/recipe.md; the
        # paper itself used 2e-4 for both).
        adam=((4e-3, 1e-3), 0.5),
        sizes="s * 2**n with s in 4..7 and n >= 2 (e.g. 16, 28, 32, 64)",
        fits=lambda size: paper_start_size(size) is not None,
        generator=_paper_generator, discriminator=_paper_discriminator),
    "tutorial": Architecture(
        "the TensorFlow DCGAN tutorial's networks, for comparison",
        adam=((1e-4, 1e-4), 0.9),
        sizes="a multiple of 4 (e.g. 28, 32, 64)",
        fits=lambda size: size % 4 == 0,
        generator=_tutorial_generator, discriminator=_tutorial_discriminator),
}
