"""Unit tests of dcgan.nets.model: shapes for both architectures, the paper's guidelines,
the adversarial train_step, determinism, mixed precision and saving the generator.

Run with `pytest tests/test_model.py -q`. Tiny networks (latent 8, 8 filters) on CPU.
"""

from __future__ import annotations

import subprocess
import sys
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from dcgan.core.config import TrainConfig
from dcgan.core.errors import UserError
from dcgan.nets.architectures import Discriminator, Generator
from dcgan.nets.model import DCGAN, build_gan
from dcgan.nets.serialisation import load_model, save_model

LATENT = 8


def tiny(**overrides: object) -> TrainConfig:
    values = {"latent_dim": LATENT, "g_filters": 8, "d_filters": 8, "batch_size": 16, "seed": 7}
    return TrainConfig(**{**values, **overrides})


def seed(value: int) -> None:
    """What seeding.seed_everything does, minus the dtype policy."""
    keras.utils.set_random_seed(value)
    tf.config.experimental.enable_op_determinism()


def real_images(n: int, shape: tuple[int, int, int], value_seed: int = 0) -> np.ndarray:
    return np.random.default_rng(value_seed).uniform(-1, 1, (n, *shape)).astype(np.float32)


def batches(images: np.ndarray, batch: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(images).batch(batch, drop_remainder=True)


def fit(gan: DCGAN, data: tf.data.Dataset | np.ndarray, epochs: int = 1) -> dict[str, float]:
    """fit() as training.train calls it; returns the last epoch's logs."""
    if isinstance(data, np.ndarray):
        data = batches(data, 16)
    history = gan.fit(data, epochs=epochs, verbose=0, shuffle=False)
    return {k: float(v[-1]) for k, v in history.history.items()}


def weights(model: keras.Model) -> list[np.ndarray]:
    return [np.array(v) for v in model.trainable_variables]


@pytest.fixture
def float32_after():
    """Leave the global dtype policy as float32 whatever the test set."""
    yield
    keras.mixed_precision.set_dtype_policy("float32")


# ---------------------------------------------------------------- shapes

SHAPES = [("paper", size, c) for size in (16, 28, 32, 64) for c in (1, 3)] + [
    ("tutorial", size, c) for size in (16, 28, 32) for c in (1, 3)
] + [("tutorial", 64, 3)]  # the tutorial's 64px G is large; one channel count is enough


@pytest.mark.parametrize(("arch", "size", "channels"), SHAPES)
def test_generator_and_discriminator_shapes(arch: str, size: int, channels: int) -> None:
    seed(0)
    cfg = tiny(arch=arch)
    shape = (size, size, channels)
    generator, discriminator = Generator(cfg, shape), Discriminator(cfg, shape)
    z = np.random.default_rng(1).standard_normal((2, LATENT)).astype(np.float32)
    images = np.asarray(generator(z, training=False))
    assert images.shape == (2, *shape)
    assert images.dtype == np.float32
    # Huge noise saturates the output: tanh keeps it within [-1, 1] and reaches the ends;
    # a linear output layer would exceed 1 here.
    big = np.asarray(generator(z * 1e6, training=False))
    assert np.all(np.abs(big) <= 1.0)
    assert np.abs(big).max() > 0.99
    logits = np.asarray(discriminator(images, training=False))
    assert logits.shape == (2, 1)
    assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("size", [30, 8, 50])
def test_paper_unreachable_size_raises_user_error(size: int) -> None:
    with pytest.raises(UserError, match=f"image size {size}"):
        Generator(tiny(), (size, size, 1))
    with pytest.raises(UserError, match=f"image size {size}"):
        Discriminator(tiny(), (size, size, 1))


def test_tutorial_unreachable_size_raises_user_error() -> None:
    with pytest.raises(UserError):
        Generator(tiny(arch="tutorial"), (30, 30, 1))


# ---------------------------------------------------------------- paper guidelines


@pytest.fixture(scope="module")
def paper64() -> tuple[keras.Model, keras.Model]:
    """The paper networks at 64x64x3, where all four stride-2 layers are present."""
    seed(3)
    cfg = tiny(g_filters=16, d_filters=16)
    return Generator(cfg, (64, 64, 3)), Discriminator(cfg, (64, 64, 3))


def test_paper_generator_has_no_dense_layer(paper64) -> None:
    generator, _ = paper64
    assert not any(isinstance(layer, layers.Dense) for layer in generator.layers)
    # strided transposed convolutions do the upsampling instead
    deconvs = [la for la in generator.layers if isinstance(la, layers.Conv2DTranspose)]
    assert len(deconvs) == 5  # project to 4x4, then 4 -> 8 -> 16 -> 32 -> 64
    assert deconvs[0].strides == (1, 1)
    assert [la.strides for la in deconvs[1:]] == [(2, 2)] * 4


def test_paper_generator_uses_relu_and_no_bn_on_output(paper64) -> None:
    generator, _ = paper64
    *hidden, last_conv, output = generator.layers
    assert isinstance(last_conv, layers.Conv2DTranspose)
    assert isinstance(output, layers.Activation)
    assert output.activation is keras.activations.tanh
    # every hidden block is conv -> BN -> ReLU; BN never follows the output conv
    activations = [la for la in hidden if isinstance(la, (layers.ReLU, layers.LeakyReLU))]
    assert activations and all(type(la) is layers.ReLU for la in activations)
    assert all(la.negative_slope == 0 for la in activations)
    norms = sum(isinstance(la, layers.BatchNormalization) for la in hidden)
    assert norms == len(activations) == 4


def test_paper_discriminator_layers(paper64) -> None:
    _, discriminator = paper64
    first, second, *rest = discriminator.layers
    # no batch norm on D's input layer
    assert isinstance(first, layers.Conv2D) and first.strides == (2, 2)
    assert isinstance(second, layers.LeakyReLU)
    leaky = [la for la in discriminator.layers if isinstance(la, layers.LeakyReLU)]
    assert len(leaky) == 4
    assert all(la.negative_slope == pytest.approx(0.2) for la in leaky)
    assert not any(isinstance(la, layers.ReLU) for la in discriminator.layers)
    assert sum(isinstance(la, layers.BatchNormalization) for la in rest) == 3
    assert isinstance(discriminator.layers[-1], layers.Dense)
    assert discriminator.layers[-1].units == 1


def test_paper_weights_start_from_normal_002(paper64) -> None:
    generator, discriminator = paper64
    for model in (generator, discriminator):
        kernels = [la.kernel for la in model.layers
                   if isinstance(la, (layers.Conv2D, layers.Conv2DTranspose))]
        biggest = np.array(max(kernels, key=lambda v: np.prod(v.shape)))
        assert biggest.size > 10_000
        assert abs(biggest.mean()) < 0.002
        assert biggest.std() == pytest.approx(0.02, rel=0.05)
        gammas = np.concatenate([np.array(la.gamma) for la in model.layers
                                 if isinstance(la, layers.BatchNormalization)])
        assert gammas.mean() == pytest.approx(1.0, abs=0.01)
        assert 0.005 < gammas.std() < 0.05


# ---------------------------------------------------------------- build_gan and train_step


@pytest.mark.parametrize(("overrides", "lrs", "betas"), [
    ({"arch": "paper"}, (4e-3, 1e-3), (0.5, 0.5)),
    ({"arch": "tutorial"}, (1e-4, 1e-4), (0.9, 0.9)),
    ({"arch": "paper", "lr": 0.003, "beta1": 0.1}, (0.003, 0.003), (0.1, 0.1)),
    ({"g_lr": 0.002, "d_lr": 0.0005, "g_beta1": 0.0}, (0.002, 0.0005), (0.0, 0.5)),
])
def test_build_gan_adam_settings(overrides: dict, lrs: tuple, betas: tuple) -> None:
    seed(0)
    gan = build_gan(tiny(**overrides), (16, 16, 1))
    assert isinstance(gan, DCGAN)
    for optimizer, lr, beta1 in zip((gan.g_optimizer, gan.d_optimizer), lrs, betas,
                                    strict=True):
        assert isinstance(optimizer, keras.optimizers.Adam)
        assert float(np.array(optimizer.learning_rate)) == pytest.approx(lr)
        assert optimizer.beta_1 == pytest.approx(beta1)
    assert gan.g_optimizer is not gan.d_optimizer
    assert [m.name for m in gan.metrics] == ["d_loss", "g_loss", "d_real", "d_fake"]


def test_one_epoch_trains_both_networks() -> None:
    seed(11)
    gan = build_gan(tiny(), (16, 16, 1))
    g_before, d_before = weights(gan.generator), weights(gan.discriminator)
    logs = fit(gan, real_images(64, (16, 16, 1)))
    assert set(logs) == {"d_loss", "g_loss", "d_real", "d_fake"}
    assert all(np.isfinite(v) for v in logs.values())
    assert logs["d_loss"] > 0 and logs["g_loss"] > 0
    assert 0.0 <= logs["d_real"] <= 1.0 and 0.0 <= logs["d_fake"] <= 1.0
    # every trainable tensor of both networks moved, and only by optimiser-sized steps
    for before, after in ((g_before, weights(gan.generator)),
                          (d_before, weights(gan.discriminator))):
        assert len(before) == len(after)
        for old, new in zip(before, after, strict=True):
            assert not np.array_equal(old, new)
            assert np.abs(new - old).max() < 0.05
    assert gan.d_optimizer.iterations.numpy() == 4 == gan.g_optimizer.iterations.numpy()


def test_noise_comes_from_the_model_seed() -> None:
    seed(0)
    a = build_gan(tiny(seed=5), (16, 16, 1))
    b = build_gan(tiny(seed=5), (16, 16, 1))
    c = build_gan(tiny(seed=6), (16, 16, 1))
    za, zb, zc = (np.array(g.sample_noise(4)) for g in (a, b, c))
    assert za.shape == (4, LATENT)
    np.testing.assert_array_equal(za, zb)
    assert not np.array_equal(za, zc)
    assert not np.array_equal(za, np.array(a.sample_noise(4)))  # the generator advances


def _short_fit(run_seed: int) -> list[np.ndarray]:
    seed(run_seed)
    gan = build_gan(tiny(seed=run_seed), (16, 16, 1))
    data = batches(real_images(32, (16, 16, 1)), 16).shuffle(2, seed=run_seed)
    fit(gan, data, epochs=2)
    return weights(gan.generator)


def test_same_seed_gives_identical_weights() -> None:
    first, second, other = _short_fit(21), _short_fit(21), _short_fit(22)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_mixed_bfloat16_trains_with_float32_outputs(float32_after) -> None:
    seed(0)
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    gan = build_gan(tiny(precision="mixed_bfloat16"), (16, 16, 1))
    conv = next(la for la in gan.generator.layers if isinstance(la, layers.Conv2DTranspose))
    assert conv.compute_dtype == "bfloat16" and conv.kernel.dtype == "float32"
    z = np.zeros((2, LATENT), np.float32)
    assert gan.generator(z).dtype == "float32"
    assert gan.discriminator(np.zeros((2, 16, 16, 1), np.float32)).dtype == "float32"
    g_before = weights(gan.generator)
    logs = fit(gan, real_images(16, (16, 16, 1)))
    assert set(logs) == {"d_loss", "g_loss", "d_real", "d_fake"}
    assert all(np.isfinite(v) for v in logs.values())
    assert any(not np.array_equal(a, b) for a, b in zip(g_before, weights(gan.generator),
                                                        strict=True))


def test_saved_generator_reloads_without_custom_objects(tmp_path: Path) -> None:
    seed(0)
    gan = build_gan(tiny(), (16, 16, 1))
    fit(gan, real_images(16, (16, 16, 1)))
    path = tmp_path / "generator.keras"
    gan.generator.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects: built-in layers only
    z = np.random.default_rng(0).standard_normal((4, LATENT)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(loaded(z, training=False)),
                                  np.asarray(gan.generator(z, training=False)))
    assert loaded.input_shape == (None, LATENT)
    assert loaded.output_shape == (None, 16, 16, 1)


_WEIGHTS_MD5 = """
import hashlib
from dcgan.core.config import TrainConfig
from dcgan.nets.model import build_gan
from dcgan.core.seeding import seed_everything
seed_everything({seed})
gan = build_gan(TrainConfig(latent_dim=8, g_filters=8, d_filters=8), (16, 16, 1))
print(hashlib.md5(b"".join(w.numpy().tobytes() for w in gan.weights)).hexdigest())
"""


def _initial_weights_md5s(*seeds: int) -> list[str]:
    """The md5 of a fresh process's initial GAN weights for each seed, one process per seed,
    all at once (each spends seconds importing TensorFlow, on one core)."""
    procs = [subprocess.Popen([sys.executable, "-c", _WEIGHTS_MD5.format(seed=seed)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in seeds]
    outs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    return [out.split()[-1] for out, _ in outs]


@pytest.mark.slow
def test_initial_weights_repeat_across_processes() -> None:
    # In-process repeats can hide seeds drawn at import time; fresh processes cannot.
    first, second, other = _initial_weights_md5s(42, 42, 7)
    assert first == second
    assert first != other


def test_layers_of_the_same_shape_start_with_different_weights() -> None:
    keras.utils.set_random_seed(0)
    gan = build_gan(TrainConfig(latent_dim=8, g_filters=8, d_filters=8), (32, 32, 1))
    gammas = [w.numpy() for w in gan.weights if w.path.endswith("gamma")]
    assert len(gammas) >= 2
    assert not np.array_equal(gammas[0][:4], gammas[1][:4])


def test_saved_model_bytes_depend_on_the_weights_only(tmp_path: Path) -> None:
    # Two builds of one model: other object addresses (Keras' shared_object_id), another
    # save time. The files must match byte for byte, or DVC sees a new model every run.
    paths = []
    for name in ("a", "b"):
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        paths.append(tmp_path / f"{name}.keras")
        save_model(build_gan(tiny(), (16, 16, 1)).generator, paths[-1])
        time.sleep(1.1)  # the zip's time stamps have a two-second grain; the metadata's one
    assert paths[0].read_bytes() == paths[1].read_bytes()
    with zipfile.ZipFile(paths[0]) as zf:
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    z = np.ones((2, tiny().latent_dim), np.float32)
    np.testing.assert_array_equal(load_model(paths[0], "-")(z), load_model(paths[1], "-")(z))


def test_reuse_fake_step_is_pytorchs_step() -> None:
    """update: reuse_fake takes D's step on real and on G(z), then G's step on that same
    G(z) through the updated D (pytorch/examples dcgan/main.py), with one G pass: the same
    weights as that step written out by hand, and not alternating's (fresh noise for G)."""
    real = real_images(16, (16, 16, 1))
    seed(3)
    gan = build_gan(tiny(update="reuse_fake"), (16, 16, 1))
    fit(gan, real)
    seed(3)
    ref = build_gan(tiny(), (16, 16, 1))  # same weights, same noise stream
    bce = keras.losses.BinaryCrossentropy(from_logits=True)
    ones, zeros = tf.ones((16, 1)), tf.zeros((16, 1))
    z = ref.sample_noise(16)
    fake = ref.generator(z, training=True)
    with tf.GradientTape() as tape:
        d_loss = (bce(ones, ref.discriminator(real, training=True))
                  + bce(zeros, ref.discriminator(fake, training=True)))
    d_vars = ref.discriminator.trainable_variables
    ref.d_optimizer.apply_gradients(zip(tape.gradient(d_loss, d_vars), d_vars, strict=True))
    with tf.GradientTape() as tape:
        again = ref.generator(z, training=True)  # the same fake (BN in training mode)
        g_loss = bce(ones, ref.discriminator(again, training=True))
    g_vars = ref.generator.trainable_variables
    ref.g_optimizer.apply_gradients(zip(tape.gradient(g_loss, g_vars), g_vars, strict=True))
    for ours, theirs in ((gan.generator, ref.generator), (gan.discriminator, ref.discriminator)):
        for a, b in zip(weights(ours), weights(theirs), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)
    seed(3)
    alternating = build_gan(tiny(), (16, 16, 1))
    fit(alternating, real)
    assert any(not np.allclose(a, b, atol=1e-6) for a, b in
               zip(weights(gan.generator), weights(alternating.generator), strict=True))
