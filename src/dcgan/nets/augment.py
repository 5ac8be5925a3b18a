"""Differentiable augmentation (DiffAugment; Zhao et al., 2020), one registry: `train.augment`
names entries of `AUGMENTATIONS`, comma-separated (DiffAugment's policy string), applied in
that order to every image D sees, real and generated alike, in D's step and in G's. On
small data D then cannot memorise the training images; the gradient reaches G through the
augmentation, so G still learns the un-augmented distribution.

The semantics are those of the reference DiffAugment_tf.py (mit-han-lab/data-efficient-gans):
- color: per image, brightness + U[-0.5, 0.5), saturation x U[0, 2) about the pixel's
  channel mean (no change on one channel), contrast x U[0.5, 1.5) about the image mean;
- translation: per image, a shift of an integer in [-s, s] along each axis,
  s = int(side / 8 + 0.5), the uncovered border filled with zeros;
- cutout: per image, a square of int(side / 2 + 0.5) zeroed, its centre uniform over the
  image (one more position for an even square), the square clipped at the edges. The mask
  is built by broadcast comparisons, not the reference's `scatter_nd`.

Every random draw is a stateless op keyed by (train.seed, step, call), `call` telling the
batches of one step apart (`REAL`, `FAKE`, `G_STEP`): runs are bitwise repeatable, and a
resumed run draws what an uninterrupted one would. Under tf.distribute each replica takes
its rows of the global batch's draw, as one device would have them.

TensorFlow is imported inside the functions: params validation reads the registry in every
stage, and importing TensorFlow costs seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow as tf

# `call` of each augmented batch within one step.
REAL, FAKE, G_STEP = 0, 1, 2
# Draws per augmentation: their order fixes which key each parameter gets.
_DRAWS = ("brightness", "saturation", "contrast", "shift_rows", "shift_cols",
          "centre_rows", "centre_cols")


@dataclass(frozen=True)
class Augmentation:
    """One named augmentation of a DiffAugment policy: what it does, and the function that
    applies it to a batch, given the batch's draws (`_draw`)."""

    description: str
    apply: Callable[[tf.Tensor, dict[str, tf.Tensor]], tf.Tensor]


def _color(x: tf.Tensor, draws: dict[str, tf.Tensor]) -> tf.Tensor:
    x = brightness(x, draws["brightness"])
    x = saturation(x, draws["saturation"])
    return contrast(x, draws["contrast"])


def _translation(x: tf.Tensor, draws: dict[str, tf.Tensor]) -> tf.Tensor:
    return translate(x, draws["shift_rows"], draws["shift_cols"])


def _cutout(x: tf.Tensor, draws: dict[str, tf.Tensor]) -> tf.Tensor:
    return cutout(x, draws["centre_rows"], draws["centre_cols"], _cutout_size(x.shape))


AUGMENTATIONS = {
    "color": Augmentation("brightness, saturation and contrast, each scaled at random", _color),
    "translation": Augmentation("a random shift of up to 1/8 of the side, zero fill",
                                _translation),
    "cutout": Augmentation("a random square of half the side set to zero", _cutout),
}


def parse_policy(policy: str) -> tuple[str, ...]:
    """The augmentations a policy string names, in order ('' names none).

    Raises:
        ValueError: on an unknown or repeated name (params validation shows it as one line).
    """
    names = tuple(name.strip() for name in policy.split(",")) if policy.strip() else ()
    for name in names:
        if name not in AUGMENTATIONS:
            raise ValueError(f"'{name}' is not an augmentation; use a comma-separated list of "
                             f"{', '.join(AUGMENTATIONS)}, or '' for none")
    if len(set(names)) < len(names):
        raise ValueError(f"'{policy}' names an augmentation twice; name each once")
    return names


def brightness(x: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
    """`x` (B, H, W, C) plus `shift` (B,) per image."""
    return x + _per_image(shift, x)


def saturation(x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Each pixel's channels scaled by `factor` (B,) about their mean."""
    import tensorflow as tf

    mean = tf.reduce_mean(x, axis=3, keepdims=True)
    return (x - mean) * _per_image(factor, x) + mean


def contrast(x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Each image scaled by `factor` (B,) about its mean over pixels and channels."""
    import tensorflow as tf

    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    return (x - mean) * _per_image(factor, x) + mean


def translate(x: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor) -> tf.Tensor:
    """`x` (B, H, W, C) with out[b, i, j] = x[b, i + rows[b], j + cols[b]], zero outside."""
    for axis, shift in ((1, rows), (2, cols)):
        x = _shift(x, shift, axis)
    return x


def cutout(x: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """`x` (B, H, W, C) with a `size` square zeroed in each image, centred on
    (rows[b], cols[b]) as the reference places it (its first row at rows - size // 2),
    clipped at the edges."""
    import tensorflow as tf

    inside = []
    for axis, (centre, side) in enumerate(((rows, size[0]), (cols, size[1])), start=1):
        first = tf.cast(centre, tf.int32)[:, None] - side // 2  # (B, 1)
        index = tf.range(tf.shape(x)[axis])[None, :]  # (1, H) or (1, W)
        inside.append((index >= first) & (index < first + side))  # (B, H) or (B, W)
    cut = inside[0][:, :, None] & inside[1][:, None, :]  # (B, H, W)
    return x * tf.cast(~cut, x.dtype)[..., None]


def diff_augment(x: tf.Tensor, names: tuple[str, ...], key: tf.Tensor,
                 replica: int | tf.Tensor = 0, replicas: int = 1) -> tf.Tensor:
    """`x` (B, H, W, C) through the augmentations `names`, in order, their parameters drawn
    from `key` (a stateless seed, shape (2,)).

    Under tf.distribute pass `nets.replicas.replica_slice()`: the parameters are drawn for
    the global batch and this replica takes its rows, so together the replicas augment
    exactly as one device would.
    """
    return _apply(x, names, _draw(key, x, replica, replicas))


def step_key(seed: int, step: tf.Tensor, call: int) -> tf.Tensor:
    """The stateless key of augmented batch `call` of train step `step`."""
    import tensorflow as tf

    fold = tf.random.experimental.stateless_fold_in
    base = tf.constant([seed, 0x0D1FFA06], tf.int64)  # this stream's own, apart from the noise
    return fold(fold(base, tf.cast(step, tf.int64)), call)


def _apply(x: tf.Tensor, names: tuple[str, ...], draws: dict[str, tf.Tensor]) -> tf.Tensor:
    for name in names:
        x = AUGMENTATIONS[name].apply(x, draws)
    return x


def _draw(key: tf.Tensor, x: tf.Tensor, replica: int | tf.Tensor,
          replicas: int) -> dict[str, tf.Tensor]:
    """Every parameter for a global batch of `replicas` times `x`'s, drawn from `key`, then
    this replica's rows."""
    import tensorflow as tf

    shape = x.shape
    batch = shape[0] if shape[0] is not None else tf.shape(x)[0]
    n = batch * replicas
    keys = tf.random.experimental.stateless_split(key, num=len(_DRAWS))
    uniform = tf.random.stateless_uniform
    side = shape[1:3]
    shift = [int(s / 8 + 0.5) for s in side]
    cut = _cutout_size(shape)
    draws = {
        "brightness": uniform([n], keys[0]) - 0.5,
        "saturation": uniform([n], keys[1]) * 2,
        "contrast": uniform([n], keys[2]) + 0.5,
        "shift_rows": uniform([n], keys[3], -shift[0], shift[0] + 1, tf.int32),
        "shift_cols": uniform([n], keys[4], -shift[1], shift[1] + 1, tf.int32),
        "centre_rows": uniform([n], keys[5], 0, side[0] + (1 - cut[0] % 2), tf.int32),
        "centre_cols": uniform([n], keys[6], 0, side[1] + (1 - cut[1] % 2), tf.int32),
    }
    return {k: v[replica * batch:(replica + 1) * batch] for k, v in draws.items()}


def _cutout_size(shape: tf.TensorShape) -> tuple[int, int]:
    return int(shape[1] / 2 + 0.5), int(shape[2] / 2 + 0.5)


def _per_image(values: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    import tensorflow as tf

    return tf.reshape(tf.cast(values, x.dtype), (-1, 1, 1, 1))


def _shift(x: tf.Tensor, shift: tf.Tensor, axis: int) -> tf.Tensor:
    """`x` moved by `shift` (B,) along `axis` (1 rows, 2 columns): out[i] = x[i + shift],
    zero where i + shift falls outside."""
    import tensorflow as tf

    size = tf.shape(x)[axis]
    source = tf.range(size)[None, :] + tf.cast(shift, tf.int32)[:, None]  # (B, size)
    valid = (source >= 0) & (source < size)
    moved = tf.gather(x, tf.clip_by_value(source, 0, size - 1), axis=axis, batch_dims=1)
    # tf.where, not a product: the reference's fill is +0 also beside negative pixels.
    valid = valid[:, :, None, None] if axis == 1 else valid[:, None, :, None]
    return tf.where(valid, moved, tf.zeros_like(moved))
