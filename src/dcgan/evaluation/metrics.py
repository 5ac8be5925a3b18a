"""Sample-quality metrics: the maths, on feature vectors and class probabilities.

Plain NumPy/SciPy in float64, with no Keras and no I/O: `dcgan.evaluation.evaluate`
extracts the features (the evaluation classifier's penultimate layer) and calls
these. The Fréchet distance here is TF-GAN's "Fréchet classifier distance", the
Fréchet distance between Gaussians fitted to features of a classifier trained
here (`dcgan.evaluation.classifier`), not to Inception features. It is NOT FID and must
never be compared with published FIDs.

Also here: KID, the classifier score (the Inception score idea) and mode
coverage. The nearest-neighbour metrics (improved precision/recall, the copy
check) are in `dcgan.evaluation.neighbours`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import rel_entr

from dcgan.core.outputs import file_md5

# Floor for real class shares in mode_kl: a class the real images never get is finite but huge.
_MIN_SHARE = 1e-12


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


def as_rows(min_rows: int = 1, **arrays: np.ndarray) -> list[np.ndarray]:
    """The named arrays as float64 (N >= min_rows, D) arrays of one width, or a ValueError."""
    out = [np.asarray(array, dtype=np.float64) for array in arrays.values()]
    for name, array in zip(arrays, out, strict=True):
        if array.ndim != 2 or len(array) < min_rows:
            raise ValueError(f"{name}: need an (N >= {min_rows}, D) array, got {array.shape}")
    if len({array.shape[1] for array in out}) > 1:
        widths = ", ".join(f"{name} {a.shape[1]}" for name, a in zip(arrays, out, strict=True))
        raise ValueError(f"widths differ: {widths}")
    return out


def _cubic_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KID's kernel (a.b / d + 1)^3 for all pairs of rows of a and b."""
    base = a @ b.T / a.shape[1] + 1.0
    return base * base * base  # 4x faster than ** 3


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size sets (Gretton et al. 2012, eq. 3)."""
    m = len(x)
    k_xx, k_yy, k_xy = _cubic_kernel(x, x), _cubic_kernel(y, y), _cubic_kernel(x, y)
    # Drop the i == j terms: k(x_i, x_i) would bias the within-set means upward.
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.mean())


def kid(
    features1: np.ndarray,
    features2: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance, in whatever feature space the rows come from.

    The unbiased MMD^2 with kernel (x.y / d + 1)^3, averaged over `subsets` subsets of
    min(subset_size, N1, N2) rows drawn without replacement from each set independently
    by `np.random.default_rng(seed)`. Small negative values are legitimate: it is unbiased.

    Args:
        features1, features2: (N1, D) and (N2, D) features.
        subsets, subset_size: how many subsets, and rows per subset.
        seed: seed of the subset draws.

    Returns:
        (mean, std) over subsets; std is the population std (ddof=0).

    Raises:
        ValueError: if a set is not (N >= 2, D), the widths differ, subsets < 1 or
            subset_size < 2.
    """
    x_all, y_all = as_rows(2, features1=features1, features2=features2)
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"need subsets >= 1 and subset_size >= 2, got {subsets}, {subset_size}")
    m = min(subset_size, len(x_all), len(y_all))
    rng = np.random.default_rng(seed)
    values = [
        _mmd2_unbiased(
            x_all[rng.choice(len(x_all), m, replace=False)],
            y_all[rng.choice(len(y_all), m, replace=False)],
        )
        for _ in range(subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def classifier_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """The Inception-score idea on any classifier: exp(E_x KL(p(y|x) || p(y))).

    Scored on min(splits, N) consecutive splits of the rows (`np.array_split`), p(y)
    each split's mean, 0 log 0 = 0. From 1 (the same prediction for every image) to K
    (confident predictions spread evenly over K classes).

    Args:
        probs: (N, K) class probabilities.
        splits: how many splits to score separately.

    Returns:
        (mean, std) over splits; std is the population std (ddof=0).

    Raises:
        ValueError: if `probs` is not a non-empty 2-D array or splits < 1.
    """
    (probs,) = as_rows(probs=probs)
    if splits < 1:
        raise ValueError(f"need splits >= 1, got {splits}")
    parts = np.array_split(probs, min(splits, len(probs)))
    scores = [np.exp(rel_entr(p, p.mean(axis=0)).sum(axis=1).mean()) for p in parts]
    return float(np.mean(scores)), float(np.std(scores))


def mode_coverage(
    sample_probs: np.ndarray, real_probs: np.ndarray, min_share: float
) -> tuple[int, float]:
    """How many of the real images' classes the samples reach, and how evenly.

    With s and r the shares of samples and of real images predicted (argmax) as each
    class, class c is covered if r_c > 0 and s_c >= min_share * r_c.

    Args:
        sample_probs, real_probs: (N, K) and (M, K) class probabilities.
        min_share: the fraction of its real share a class needs among the samples.

    Returns:
        (modes_covered, mode_kl), mode_kl = KL(s || r) = sum s_c log(s_c / r_c), with
        0 log 0 = 0 and r clipped below at 1e-12 (a class no real image gets is huge).

    Raises:
        ValueError: if an array is not a non-empty 2-D array or the class counts differ.
    """
    arrays = as_rows(sample_probs=sample_probs, real_probs=real_probs)
    n_classes = arrays[0].shape[1]
    s, r = (np.bincount(a.argmax(axis=1), minlength=n_classes) / len(a) for a in arrays)
    covered = int(np.count_nonzero((r > 0) & (s >= min_share * r)))
    return covered, float(rel_entr(s, np.maximum(r, _MIN_SHARE)).sum())


def protocol(classifier_path: Path, n: int, seed: int, reference: str = "test") -> dict:
    """What a metric set was measured against (the classifier file, N, the reference split,
    the seed): scores compare only under one. The evaluate stage stamps metrics.json with
    it (reference "test"), train its in-training scores (selection.json: "validation")."""
    return {"classifier_md5": file_md5(classifier_path), "n": n, "reference": reference,
            "seed": seed}
