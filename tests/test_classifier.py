"""Unit tests of dcgan.evaluation.classifier: shapes, training, seeding, fallback and `.keras` round
trip.

Run with `pytest tests/test_classifier.py`. Training uses 16x16 synthetic
bright-vs-dark images, a few epochs, so the file runs in seconds on CPU.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from dcgan.core.config import ClassifierConfig
from dcgan.core.errors import UserError
from dcgan.evaluation.classifier import (
    build_classifier,
    feature_extractor,
    train_classifier,
)

CFG = ClassifierConfig(epochs=3, batch_size=16, feature_dim=8, seed=0)


def _bright_vs_dark(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy 16x16x1 images in [-1, 1]; label 1 = bright (mean > 0), 0 = dark."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n).astype(np.int64)
    low = np.where(y == 1, 0.0, -1.0)[:, None, None, None]
    x = low + rng.uniform(0.0, 1.0, size=(n, 16, 16, 1))
    return x.astype(np.float32), y


def _same_weights(a: keras.Model, b: keras.Model) -> bool:
    """Whether two models' weights are bitwise equal."""
    return all(
        np.array_equal(wa, wb) for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True)
    )


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, ...]:
    return (*_bright_vs_dark(64, 0), *_bright_vs_dark(32, 1))


@pytest.fixture(scope="module")
def trained(data) -> tuple[keras.Model, float | None]:
    return train_classifier(*data, CFG)


@pytest.mark.parametrize("shape", [(16, 16, 1), (28, 28, 1), (32, 32, 3), (64, 64, 3)])
def test_output_and_feature_shapes(shape):
    model = build_classifier(shape, num_classes=10, feature_dim=24)
    x = np.zeros((2, *shape), np.float32)
    assert model.output_shape == (None, 10)
    assert model(x).shape == (2, 10)
    features = feature_extractor(model)
    assert features.output_shape == (None, 24)
    assert features(x).shape == (2, 24)


def test_too_small_images_are_rejected():
    with pytest.raises(UserError, match="at least 8x8"):
        build_classifier((4, 4, 1), num_classes=2, feature_dim=8)


def test_training_separates_classes_and_moves_weights(data, trained):
    model, accuracy = trained
    assert accuracy is not None and accuracy >= 0.9
    keras.utils.set_random_seed(CFG.seed)
    initial = build_classifier((16, 16, 1), 2, CFG.feature_dim)
    pairs = zip(initial.get_weights(), model.get_weights(), strict=True)
    assert all(not np.allclose(before, after) for before, after in pairs)


@pytest.mark.slow
def test_same_seed_gives_identical_weights(data, trained):
    again, _ = train_classifier(*data, CFG)
    other, _ = train_classifier(*data, CFG.model_copy(update={"seed": 1}))
    assert _same_weights(trained[0], again)
    assert not _same_weights(trained[0], other)


def test_unlabelled_data_gives_seeded_random_network(data):
    train_x, train_y, test_x, test_y = data
    unlabelled = np.full_like(train_y, -1)
    model, accuracy = train_classifier(train_x, unlabelled, test_x, test_y, CFG)
    again, _ = train_classifier(train_x, unlabelled, test_x, test_y, CFG)
    assert accuracy is None
    assert model.output_shape == (None, 1)
    assert feature_extractor(model).output_shape == (None, CFG.feature_dim)
    assert _same_weights(model, again)


def test_keras_round_trip_keeps_features(tmp_path, data, trained):
    model, _ = trained
    path = tmp_path / "classifier.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = data[2]
    before = feature_extractor(model).predict(x, verbose=0)
    after = feature_extractor(loaded).predict(x, verbose=0)
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)
    assert np.ptp(before) > 0  # features carry information, not a dead layer
