"""Tests of dcgan.evaluation: the evaluate stage's orchestration on a tiny real Keras model.

Run with `pytest tests/test_evaluation.py`.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from dcgan.errors import UserError
from dcgan.evaluation import evaluate_generator


@pytest.fixture(scope="module")
def feature_model() -> keras.Model:
    """A tiny fixed random map from 8x8x1 images to 4 features."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(8, 8, 1))
    outputs = keras.layers.Dense(4)(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, outputs)


def _images(n: int, seed: int, shape: tuple[int, ...] = (8, 8, 1)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, *shape)).astype(np.float32)


def test_evaluate_rejects_shape_mismatch(feature_model):
    real = _images(20, 0)
    with pytest.raises(UserError, match=r"generator output shape \(8, 8, 3\) does not match"):
        evaluate_generator(feature_model, _images(20, 1, (8, 8, 3)), real, real, batch_size=8)


def test_evaluate_rejects_classifier_for_other_images(feature_model):
    real = _images(20, 0, (16, 16, 1))
    with pytest.raises(UserError, match="retrain the classifier"):
        evaluate_generator(feature_model, real, real, real, batch_size=8)


def test_evaluate_samples_equal_to_test_set_give_zero(feature_model):
    real_train, real_test = _images(60, 0), _images(40, 1)
    result = evaluate_generator(feature_model, real_test.copy(), real_train, real_test, 16)
    assert set(result) == {"frechet_distance", "frechet_distance_real", "frechet_samples"}
    assert result["frechet_samples"] == 40
    assert result["frechet_distance"] == pytest.approx(0.0, abs=1e-6)
    assert result["frechet_distance_real"] > 1e-3


def test_evaluate_uses_smallest_set_size_and_is_seeded(feature_model):
    samples, real_train, real_test = _images(30, 2) * 0.5, _images(50, 0), _images(40, 1)
    first = evaluate_generator(feature_model, samples, real_train, real_test, 16, seed=3)
    again = evaluate_generator(feature_model, samples, real_train, real_test, 16, seed=3)
    assert first["frechet_samples"] == 30
    assert first == again
    assert first["frechet_distance"] > first["frechet_distance_real"]
