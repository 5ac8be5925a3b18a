"""DiffAugment (nets.augment): the reference's semantics, seeded draws, and the train step."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from dcgan.core.config import TrainConfig
from dcgan.core.seeding import seed_everything
from dcgan.nets import augment
from dcgan.nets.model import build_gan

ALL = ("color", "translation", "cutout")


def images(shape: tuple[int, ...], seed: int = 0) -> tf.Tensor:
    return tf.constant(np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32))


def reference_translate(x: tf.Tensor, rows: np.ndarray, cols: np.ndarray) -> tf.Tensor:
    """DiffAugment_tf.py's translation for given shifts: pad one zero row (column) on each
    side, then gather index i + shift + 1, clipped to the padding."""
    h, w = x.shape[1:3]
    grid_rows = np.clip(np.arange(h)[None, :] + rows[:, None] + 1, 0, h + 1)
    grid_cols = np.clip(np.arange(w)[None, :] + cols[:, None] + 1, 0, w + 1)
    x = tf.gather_nd(tf.pad(x, [[0, 0], [1, 1], [0, 0], [0, 0]]), grid_rows[..., None],
                     batch_dims=1)
    x = tf.transpose(x, [0, 2, 1, 3])
    x = tf.gather_nd(tf.pad(x, [[0, 0], [1, 1], [0, 0], [0, 0]]), grid_cols[..., None],
                     batch_dims=1)
    return tf.transpose(x, [0, 2, 1, 3])


def reference_cutout(x: tf.Tensor, rows: np.ndarray, cols: np.ndarray,
                     size: tuple[int, int]) -> tf.Tensor:
    """DiffAugment_tf.py's cutout for given offsets: scatter ones over the square's grid,
    each coordinate clipped into the image, and multiply by one minus that mask."""
    b, h, w = x.shape[:3]
    grid_b, grid_r, grid_c = np.meshgrid(np.arange(b), np.arange(size[0]), np.arange(size[1]),
                                         indexing="ij")
    grid = np.stack([grid_b, grid_r + rows[:, None, None] - size[0] // 2,
                     grid_c + cols[:, None, None] - size[1] // 2], axis=-1)
    grid = np.minimum(np.maximum(grid, 0), np.array([b - 1, h - 1, w - 1]))
    mask = tf.maximum(1 - tf.scatter_nd(grid, tf.ones((b, *size)), (b, h, w)), 0)
    return x * mask[..., None]


def test_translation_is_the_reference_bitwise() -> None:
    x = images((18, 9, 12, 2))
    s = 3  # beyond int(side / 8 + 0.5), to check the fill past the image too
    rows = np.resize(np.arange(-s, s + 1), 18)
    cols = np.resize(np.arange(-s, s + 1)[::-1], 18) + np.repeat([0, 1, -1], 7)[:18]
    ours = augment.translate(x, tf.constant(rows, tf.int32), tf.constant(cols, tf.int32))
    ref = reference_translate(x, rows, cols)
    assert np.array_equal(ours.numpy().view(np.uint32), ref.numpy().view(np.uint32))
    assert np.array_equal(ours[3].numpy(), x[3].numpy())  # shift (0, 0): unchanged
    assert not np.array_equal(ours[0].numpy(), x[0].numpy())


@pytest.mark.parametrize("side", [28, 9])  # an even and an odd square
def test_cutout_is_the_reference_bitwise(side: int) -> None:
    size = (int(side / 2 + 0.5),) * 2
    centres = np.arange(0, side + (1 - size[0] % 2))  # every centre the draw can give
    x = images((len(centres), side, side, 3), seed=1)
    rows, cols = centres, centres[::-1].copy()
    ours = augment.cutout(x, tf.constant(rows, tf.int32), tf.constant(cols, tf.int32), size)
    ref = reference_cutout(x, rows, cols, size)
    assert np.array_equal(ours.numpy().view(np.uint32), ref.numpy().view(np.uint32))
    zeroed = (ours.numpy() == 0).all(axis=3).sum(axis=(1, 2))
    assert zeroed.max() == size[0] * size[1]  # a whole square inside the image
    assert zeroed.min() > 0  # clipped at a corner, yet never outside


def test_color_shifts_and_scales_per_image() -> None:
    x = images((4, 6, 6, 3))
    factor = tf.constant([0.0, 0.5, 1.0, 2.0])
    np.testing.assert_allclose(augment.brightness(x, factor) - x,
                               np.broadcast_to(factor.numpy()[:, None, None, None], x.shape),
                               atol=1e-6)
    grey = images((4, 6, 6, 1))
    np.testing.assert_allclose(augment.saturation(grey, factor), grey)  # no colour to scale
    grey_of_x = np.broadcast_to(x[0].numpy().mean(axis=2, keepdims=True), x[0].shape)
    np.testing.assert_allclose(augment.saturation(x, factor)[0], grey_of_x, atol=1e-6)
    contrasted = augment.contrast(x, factor)
    np.testing.assert_allclose(tf.reduce_mean(contrasted, [1, 2, 3]), tf.reduce_mean(x, [1, 2, 3]),
                               atol=1e-6)
    np.testing.assert_allclose(contrasted[2], x[2], atol=1e-6)  # factor 1: unchanged


def test_draws_cover_the_reference_ranges() -> None:
    x = tf.zeros((4000, 28, 28, 1))
    draws = augment._draw(augment.step_key(42, tf.constant(0), augment.REAL), x, 0, 1)
    shift = int(28 / 8 + 0.5)
    for name in ("shift_rows", "shift_cols"):
        assert sorted(set(draws[name].numpy())) == list(range(-shift, shift + 1)), name
    for name in ("centre_rows", "centre_cols"):  # an even square: one position more
        assert sorted(set(draws[name].numpy())) == list(range(0, 29)), name
    for name, (low, high) in (("brightness", (-0.5, 0.5)), ("saturation", (0, 2)),
                              ("contrast", (0.5, 1.5))):
        values = draws[name].numpy()
        assert low <= values.min() < low + 0.01 and high - 0.01 < values.max() < high, name


def test_draws_are_keyed_by_seed_step_and_call() -> None:
    x = images((8, 16, 16, 3))

    def out(seed: int, step: int, call: int) -> np.ndarray:
        return augment.diff_augment(x, ALL, augment.step_key(seed, tf.constant(step), call))

    np.testing.assert_array_equal(out(42, 5, 0), out(42, 5, 0))
    for other in (out(1, 5, 0), out(42, 6, 0), out(42, 5, 1)):
        assert not np.array_equal(out(42, 5, 0), other)


def test_unknown_or_repeated_augmentations_are_refused() -> None:
    assert augment.parse_policy("") == ()
    assert augment.parse_policy("translation, cutout") == ("translation", "cutout")
    for policy, words in (("flip", "'flip' is not an augmentation"),
                          ("cutout,cutout", "names an augmentation twice")):
        with pytest.raises(ValueError, match=words):
            TrainConfig(augment=policy)


def _trace(cfg: TrainConfig) -> tuple[list[np.ndarray], set[str]]:
    """G's weights after two steps of `cfg` on fixed images, and the step graph's op types."""
    seed_everything(cfg.seed)
    gan = build_gan(cfg, (16, 16, 1))
    data = tf.data.Dataset.from_tensors(images((16, 16, 16, 1))).repeat(2)
    gan.fit(data, epochs=1, shuffle=False, verbose=0)
    spec = tf.TensorSpec((16, 16, 16, 1), tf.float32)
    graph = tf.function(gan.train_step).get_concrete_function(spec).graph
    return [w.numpy() for w in gan.generator.weights], {op.type for op in graph.get_operations()}


@pytest.mark.parametrize("update", ["alternating", "simultaneous", "reuse_fake"])
def test_every_update_mode_trains_through_the_augmentation(update: str) -> None:
    cfg = dict(batch_size=16, latent_dim=8, g_filters=8, d_filters=8, seed=3, update=update,
               ema_half_life=0, precision="float32")
    plain, plain_ops = _trace(TrainConfig(**cfg))
    once, ops = _trace(TrainConfig(**cfg, augment="color,translation,cutout"))
    again, _ = _trace(TrainConfig(**cfg, augment="color,translation,cutout"))
    assert "StatelessRandomUniformV2" in ops and "GatherV2" in ops
    assert "GatherV2" not in plain_ops  # off: the step is the plain one
    for a, b in zip(once, again, strict=True):  # seeded: the same bytes
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(once, plain, strict=True))
    assert all(np.isfinite(w).all() for w in once)
