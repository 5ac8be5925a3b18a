"""Tests of the choice registries: nets.losses' loss pairs (values, gradients, training),
and that params validation accepts exactly each registry's names.

Run with `pytest tests/test_losses.py -q` (about 10 s: one tiny training per loss).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from dcgan.core.config import TrainConfig, parse_params
from dcgan.core.errors import UserError
from dcgan.ingest.sources import SOURCES
from dcgan.nets.architectures import ARCHITECTURES
from dcgan.nets.losses import LOSSES
from dcgan.nets.model import build_gan
from dcgan.nets.updates import UPDATES


def _mean(per_example: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(per_example)


def _logits(*values: float) -> tf.Tensor:
    return tf.constant([[v] for v in values], tf.float32)  # (B, 1)


def test_non_saturating_is_cross_entropy() -> None:
    loss = LOSSES["non_saturating"]
    zero = _logits(0.0, 0.0)  # D undecided: ln 2 per term
    assert float(loss.discriminator(zero, zero, _mean)) == pytest.approx(2 * math.log(2))
    assert float(loss.generator(zero, _mean)) == pytest.approx(math.log(2))
    sure = _logits(20.0, 20.0)  # D certain: real right, so G's loss is large
    assert float(loss.discriminator(sure, -sure, _mean)) < 1e-6
    assert float(loss.generator(-sure, _mean)) == pytest.approx(20.0, rel=1e-4)


def test_hinge_has_margins_of_one() -> None:
    loss = LOSSES["hinge"]
    assert float(loss.discriminator(_logits(0.0), _logits(0.0), _mean)) == pytest.approx(2.0)
    assert float(loss.discriminator(_logits(1.5), _logits(-1.0), _mean)) == 0.0
    assert float(loss.discriminator(_logits(0.5), _logits(-3.0), _mean)) == pytest.approx(0.5)
    assert float(loss.generator(_logits(2.0, -4.0), _mean)) == pytest.approx(1.0)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_is_a_float32_scalar_with_gradients(name: str) -> None:
    loss = LOSSES[name]
    real, fake = tf.Variable(_logits(0.3, -1.0)), tf.Variable(tf.cast(_logits(-0.2, 2.0),
                                                                      tf.bfloat16))
    with tf.GradientTape(persistent=True) as tape:
        d_loss, g_loss = loss.discriminator(real, fake, _mean), loss.generator(fake, _mean)
    for value in (d_loss, g_loss):
        assert value.shape == () and value.dtype == tf.float32
    assert all(g is not None and np.isfinite(np.asarray(g, np.float32)).all()
               for g in tape.gradient(d_loss, [real, fake]) + [tape.gradient(g_loss, fake)])
    assert 0 < loss.collapse_d_loss < float(loss.discriminator(_logits(0.0), _logits(0.0),
                                                               _mean))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_trains_in_every_update_mode(name: str) -> None:
    images = np.random.default_rng(0).uniform(-1, 1, (32, 16, 16, 1)).astype(np.float32)
    for update in UPDATES:
        keras.utils.set_random_seed(0)
        cfg = TrainConfig(latent_dim=8, g_filters=8, d_filters=8, batch_size=16, loss=name,
                          update=update)
        gan = build_gan(cfg, (16, 16, 1))
        before = [w.copy() for w in gan.get_weights()]
        logs = gan.fit(images, batch_size=16, epochs=1, verbose=0).history
        assert all(np.isfinite(logs[k][-1]) for k in ("d_loss", "g_loss")), (name, update)
        moved = [not np.array_equal(a, b) for a, b in zip(before, gan.get_weights(), strict=True)]
        assert sum(moved) > len(moved) // 2, (name, update)


@pytest.mark.parametrize(("key", "registry"), [
    ("fetch.dataset", SOURCES), ("train.arch", ARCHITECTURES), ("train.update", UPDATES),
    ("train.loss", LOSSES)])
def test_params_accept_exactly_the_registry(key: str, registry: dict) -> None:
    section, name = key.split(".")
    for entry in registry:
        parse_params({section: {name: entry}})
    with pytest.raises(UserError) as err:
        parse_params({section: {name: "nope"}})
    message = str(err.value)
    assert f"{key} = 'nope' is invalid" in message
    assert all(f"'{entry}'" in message for entry in registry)


def test_lecam_penalty_is_the_reference_and_moves_its_averages() -> None:
    tiny = dict(batch_size=4, latent_dim=8, g_filters=8, d_filters=8, precision="float32")
    gan = build_gan(TrainConfig(**tiny, lecam=0.5), (16, 16, 1))
    gan.lecam_ema.assign([0.2, -0.3])  # (real, generated)
    real = np.array([[1.0], [-1.0], [0.5], [0.0]], np.float32)
    fake = np.array([[0.1], [-2.0], [0.3], [1.0]], np.float32)
    got = float(gan.d_penalty(tf.constant(real), tf.constant(fake)))
    # Tseng et al.'s code: relu(D(x) - ema_fake)^2 + relu(ema_real - D(G(z)))^2, each a mean.
    want = 0.5 * (np.mean(np.maximum(real + 0.3, 0) ** 2) + np.mean(np.maximum(0.2 - fake, 0) ** 2))
    assert got == pytest.approx(want, rel=1e-6)
    np.testing.assert_allclose(gan.lecam_ema.numpy(), [0.99 * 0.2 + 0.01 * real.mean(),
                                                       0.99 * -0.3 + 0.01 * fake.mean()],
                               rtol=1e-6)
    off = build_gan(TrainConfig(**tiny), (16, 16, 1))
    assert off.d_penalty(tf.constant(real), tf.constant(fake)) == 0.0
    assert not hasattr(off, "lecam_ema")  # off: the model and its checkpoints are unchanged


@pytest.mark.parametrize("update", list(UPDATES))
def test_every_update_mode_trains_with_lecam(update: str) -> None:
    def trained(lecam: float) -> tuple[list[np.ndarray], keras.Model]:
        cfg = TrainConfig(batch_size=16, latent_dim=8, g_filters=8, d_filters=8, seed=3,
                          update=update, ema_half_life=0, precision="float32", lecam=lecam)
        keras.utils.set_random_seed(cfg.seed)
        gan = build_gan(cfg, (16, 16, 1))
        images = np.random.default_rng(0).uniform(-1, 1, (16, 16, 16, 1)).astype(np.float32)
        gan.fit(tf.data.Dataset.from_tensors(images).repeat(3), epochs=1, shuffle=False,
                verbose=0)
        return [w.numpy() for w in gan.discriminator.weights], gan

    plain, _ = trained(0.0)
    once, gan = trained(1.0)
    again, _ = trained(1.0)
    for a, b in zip(once, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(once, plain, strict=True))
    assert np.all(gan.lecam_ema.numpy() != 0)  # three steps moved both averages
