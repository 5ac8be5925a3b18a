"""Tests of the EMA of G (dcgan.nets.ema and its use in the DCGAN's train step): the maths
against a hand-computed two-step example, G training exactly as without it (two replicas
keeping one device's average: tests/test_distribution.py).

Tiny networks (latent 8, 8 filters) on CPU; a few seconds.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_model import batches, real_images, seed, tiny

from dcgan.nets.ema import ema_beta
from dcgan.nets.model import build_gan


def test_beta_halves_an_old_weight_every_half_life() -> None:
    # 1280 images of half-life at batch 128: ten steps halve a weight, one step 0.5**0.1.
    assert float(ema_beta(10**6, 128, 1280, None)) == pytest.approx(0.5**0.1, rel=1e-6)
    assert float(ema_beta(10**6, 128, 1280, 0.05)) == pytest.approx(0.5**0.1, rel=1e-6)
    # Ramp-up: after 2560 images the half-life is capped at 0.05 x 2560 = 128 images.
    assert float(ema_beta(2560, 128, 1280, 0.05)) == pytest.approx(0.5, rel=1e-6)
    assert float(ema_beta(0, 128, 1280, 0.05)) == 0.0  # the first step copies G


def _steps(cfg_overrides: dict, n_steps: int) -> tuple[list, list]:
    """Train n_steps one by one; after each, G's weights and the average's, each as
    (trainable, non-trainable) lists."""
    seed(3)
    gan = build_gan(tiny(**cfg_overrides), (16, 16, 1))
    data = batches(real_images(16 * n_steps, (16, 16, 1)), 16)

    def arrays(model: keras.Model) -> tuple[list, list]:
        return ([np.array(w) for w in model.trainable_weights],
                [np.array(w) for w in model.non_trainable_weights])

    raw, avg = [], []
    for step in data.take(n_steps):
        gan.fit(tf.data.Dataset.from_tensors(step), epochs=1, verbose=0, shuffle=False)
        raw.append(arrays(gan.generator))
        avg.append(arrays(gan.sampler))
    return raw, avg


def test_average_matches_the_hand_computed_two_steps() -> None:
    raw, avg = _steps({"ema_half_life": 40, "ema_rampup": 0.5}, 2)
    # Step 1 follows 0 images: beta 0, the average is G after its first update.
    for a, w in zip(avg[0][0] + avg[0][1], raw[0][0] + raw[0][1], strict=True):
        np.testing.assert_array_equal(a, w)
    # Step 2 follows 16 images: half-life min(40, 0.5 x 16) = 8, beta = 0.5 ** (16 / 8).
    beta = 0.25
    for a, w1, w2 in zip(avg[1][0], raw[0][0], raw[1][0], strict=True):
        np.testing.assert_allclose(a, w2 + beta * (w1 - w2), rtol=1e-6, atol=1e-7)
    assert avg[1][1], "the tiny G has batch norm statistics"
    for a, w2 in zip(avg[1][1], raw[1][1], strict=True):  # batch norm's: copied
        np.testing.assert_array_equal(a, w2)


def test_g_and_d_train_exactly_as_without_the_average() -> None:
    with_average, _ = _steps({"ema_half_life": 1000}, 3)
    without, _ = _steps({"ema_half_life": 0}, 3)
    for a, b in zip(with_average[-1][0] + with_average[-1][1],
                    without[-1][0] + without[-1][1], strict=True):
        np.testing.assert_array_equal(a, b)


def test_without_ema_the_sampler_is_g() -> None:
    seed(3)
    gan = build_gan(tiny(ema_half_life=0), (16, 16, 1))
    assert gan.sampler is gan.generator and gan.average is None


def test_average_lags_g_after_several_steps() -> None:
    raw, avg = _steps({"ema_half_life": 1000, "ema_rampup": None}, 3)
    assert not np.array_equal(avg[-1][0][0], raw[-1][0][0])
