"""Sample-quality metrics: the maths, on feature vectors and class probabilities.

Plain NumPy/SciPy in float64, with no Keras and no I/O: `dcgan.evaluation`
extracts the features (the evaluation classifier's penultimate layer) and calls
these. The Fréchet distance here is TF-GAN's "Fréchet classifier distance", the
Fréchet distance between Gaussians fitted to features of a classifier trained
here (`dcgan.classifier`), not to Inception features. It is NOT FID and must
never be compared with published FIDs.
"""

from __future__ import annotations

import numpy as np


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a set of feature vectors, in float64.

    Args:
        features: (N, D) array, one row per image.

    Returns:
        (mu, sigma): the (D,) mean and the (D, D) covariance (N - 1 denominator).

    Raises:
        ValueError: if `features` is not 2-D or has fewer than 2 rows.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need an (N >= 2, D) feature array, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix via `eigh`."""
    # Symmetrise first: round-off leaves covariances a few ulps from symmetric.
    eigvals, eigvecs = np.linalg.eigh((matrix + matrix.T) / 2)
    # Eigenvalues of a PSD matrix can come out as -1e-17; they are zeros.
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2). S1 S2 is not symmetric, so
    its square root is taken by the symmetric route,
    Tr((S1 S2)^1/2) = Tr((sqrt(S1) S2 sqrt(S1))^1/2), whose inner matrix is PSD and
    has the same eigenvalues; this avoids the complex parts of a general `sqrtm`.

    Args:
        mu1, mu2: (D,) means.
        sigma1, sigma2: (D, D) covariances (positive semi-definite; singular is fine).

    Returns:
        d^2 as a float64 Python float, clipped at 0 against round-off.

    Raises:
        ValueError: if the shapes do not agree.
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
    dim = mu1.shape[0]
    shapes = (mu1.shape, mu2.shape, sigma1.shape, sigma2.shape)
    if shapes != ((dim,), (dim,), (dim, dim), (dim, dim)):
        raise ValueError(
            f"shapes do not agree: mu1 {mu1.shape}, sigma1 {sigma1.shape}, "
            f"mu2 {mu2.shape}, sigma2 {sigma2.shape}"
        )
    root1 = _sqrt_psd(sigma1)
    inner = root1 @ sigma2 @ root1
    # Tr(sqrt(M)) of a PSD matrix is the sum of the square roots of its eigenvalues.
    eigvals = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = np.sqrt(np.clip(eigvals, 0.0, None)).sum()
    diff = mu1 - mu2
    d2 = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean
    return max(float(d2), 0.0)


def frechet_distance_of(features1: np.ndarray, features2: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets.

    Raises:
        ValueError: if either set is not (N >= 2, D) or the widths differ.
    """
    return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2))
