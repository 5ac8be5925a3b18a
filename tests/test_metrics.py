"""Unit tests of dcgan.metrics: the metric maths against closed forms and independent code.

Run with `pytest tests/test_metrics.py`. The Fréchet distance is checked against
closed forms and an independent `scipy.linalg.sqrtm`.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import sqrtm

from dcgan.metrics import (
    frechet_distance,
    frechet_distance_of,
    gaussian_stats,
)


def _random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    """A well-conditioned, non-diagonal symmetric positive-definite matrix."""
    a = rng.normal(size=(dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def test_gaussian_stats_float64_and_matches_numpy():
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    mu, sigma = gaussian_stats(x)
    assert mu.dtype == sigma.dtype == np.float64
    assert mu.shape == (3,) and sigma.shape == (3, 3)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False))
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_stats(x[:1])


def test_set_with_itself_is_zero():
    x = np.random.default_rng(1).normal(size=(500, 16))
    assert frechet_distance_of(x, x) == pytest.approx(0.0, abs=1e-9)


def test_diagonal_gaussians_match_closed_form():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.1, 3.0, size=5), rng.uniform(0.1, 3.0, size=5)
    # Commuting covariances: Tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (sqrt(a) - sqrt(b))^2.
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)


def test_non_diagonal_matches_scipy_sqrtm():
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = _random_spd(rng, 6), _random_spd(rng, 6)
    assert not np.allclose(s1 @ s2, s2 @ s1)  # the case the symmetric route is for
    covmean = sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_large_samples_approach_closed_form():
    rng = np.random.default_rng(4)
    mu1, mu2 = np.zeros(4), np.array([1.0, -0.5, 0.0, 2.0])
    s1, s2 = _random_spd(rng, 4), _random_spd(rng, 4)
    exact = frechet_distance(mu1, s1, mu2, s2)
    x1 = rng.multivariate_normal(mu1, s1, size=200_000)
    x2 = rng.multivariate_normal(mu2, s2, size=200_000)
    assert frechet_distance_of(x1, x2) == pytest.approx(exact, rel=0.02)


def test_translation_adds_squared_norm():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 8))
    v = rng.normal(size=8)
    assert frechet_distance_of(x, x + v) == pytest.approx(v @ v, rel=1e-8)


def test_symmetric():
    rng = np.random.default_rng(6)
    x1, x2 = rng.normal(size=(200, 10)), 2.0 * rng.normal(size=(200, 10)) + 0.3
    d12, d21 = frechet_distance_of(x1, x2), frechet_distance_of(x2, x1)
    assert d12 > 1.0
    assert d12 == pytest.approx(d21, rel=1e-9)


def test_singular_covariance_is_finite_and_non_negative():
    # N < D makes both covariances singular: tiny negative eigenvalues must not leak.
    rng = np.random.default_rng(7)
    x1, x2 = rng.normal(size=(5, 32)), rng.normal(size=(5, 32))
    for a, b in [(x1, x1), (x1, x2), (x2, x1)]:
        d = frechet_distance_of(a, b)
        assert np.isfinite(d) and d >= 0.0
    assert frechet_distance_of(x1, x1) == pytest.approx(0.0, abs=1e-9)


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="shapes do not agree"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
