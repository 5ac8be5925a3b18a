"""Sample-quality metrics: the Fréchet distance in the evaluation classifier's features.

This is TF-GAN's "Fréchet classifier distance": the Fréchet distance between
Gaussians fitted to features of a classifier trained here (`dcgan.classifier`),
not to Inception features. It is NOT FID and must never be compared with
published FIDs. The `evaluate` DVC stage calls `evaluate()`, which measures
through the loaded classifier's `feature_extractor` and reports to the model's
MLflow run; the distance itself is plain NumPy/float64.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import keras
import numpy as np

from dcgan import tracking
from dcgan.classifier import accuracy, feature_extractor
from dcgan.config import EvaluateConfig
from dcgan.data import load_processed
from dcgan.errors import UserError
from dcgan.model import load_model

log = logging.getLogger(__name__)


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


def _subsample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` rows of `x` drawn without replacement (all of them, reordered, if n == len)."""
    return x[np.sort(rng.choice(len(x), size=n, replace=False))]


def evaluate_generator(
    feature_model: keras.Model,
    samples: np.ndarray,
    real_train: np.ndarray,
    real_test: np.ndarray,
    batch_size: int,
    seed: int = 0,
) -> dict:
    """Fréchet classifier distance of generated samples, with the real-vs-real floor.

    FD is biased upwards at small N, so both numbers use the same N, the smallest of
    the three set sizes, and each set is subsampled to N with a seeded generator.
    The floor, real train vs real test, gives the sample number its scale.

    Args:
        feature_model: images -> (B, D) features, from `classifier.feature_extractor`.
        samples: generated images, float32 NHWC in [-1, 1].
        real_train: real training images of the same shape.
        real_test: real held-out images of the same shape.
        batch_size: images per forward pass of `feature_model`.
        seed: seed of the subsampling.

    Returns:
        {"frechet_distance": FD(samples, real_test),
         "frechet_distance_real": FD(real_train, real_test),
         "frechet_samples": N}.

    Raises:
        UserError: if sample, data and classifier image shapes disagree, or N < 2.
    """
    data_shape = tuple(real_test.shape[1:])
    if tuple(samples.shape[1:]) != data_shape:
        raise UserError(
            f"generator output shape {tuple(samples.shape[1:])} does not match data shape "
            f"{data_shape}; regenerate samples or retrain the generator on this data"
        )
    if tuple(real_train.shape[1:]) != data_shape:
        raise UserError(
            f"train images {tuple(real_train.shape[1:])} and test images {data_shape} "
            "differ in shape; re-run preprocess"
        )
    expected = tuple(feature_model.input_shape[1:])
    if expected != data_shape:
        raise UserError(
            f"evaluation classifier expects images of shape {expected}, data has "
            f"{data_shape}; retrain the classifier"
        )
    n = min(len(samples), len(real_train), len(real_test))
    if n < 2:
        raise UserError(f"need at least 2 images in each set for a Fréchet distance, got {n}")
    rng = np.random.default_rng(seed)
    feats = [
        feature_model.predict(
            _subsample(np.asarray(x, np.float32), n, rng), batch_size=batch_size, verbose=0
        )
        for x in (samples, real_train, real_test)
    ]
    if n <= feats[0].shape[1]:
        # Covariances from N <= D points are singular, so the distance is dominated by bias.
        log.warning(
            "only %d images for %d-d features: Fréchet distance is unreliable", n, feats[0].shape[1]
        )
    return {
        "frechet_distance": frechet_distance_of(feats[0], feats[2]),
        "frechet_distance_real": frechet_distance_of(feats[1], feats[2]),
        "frechet_samples": n,
    }


def load_samples(path: Path) -> np.ndarray:
    """Read the generate stage's sample array.

    Raises:
        UserError: if the file is missing or not a .npy array.
    """
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read samples ({err}); run the generate stage") from None


def evaluate(cfg: EvaluateConfig, data_file: Path, samples_file: Path, classifier_path: Path,
             metrics_file: Path, run_file: Path) -> dict:
    """The evaluate stage: score samples, write the DVC metrics JSON, log to the MLflow run.

    Returns:
        The metrics: frechet_distance, frechet_distance_real (the real-vs-real floor),
        frechet_samples (N of both) and classifier_accuracy (None for unlabelled data).

    Raises:
        UserError: if an input is missing or shapes disagree.
    """
    data = load_processed(data_file)
    samples = load_samples(samples_file)
    classifier = load_model(classifier_path, remedy="run the classifier stage first")
    with tracking.resume_run(run_file):
        tracking.tag_params({f"evaluate.{k}": v for k, v in cfg.model_dump().items()})
        result = evaluate_generator(feature_extractor(classifier), samples, data.train_x,
                                    data.test_x, cfg.batch_size)
        result["classifier_accuracy"] = accuracy(classifier, data.test_x, data.test_y,
                                                 cfg.batch_size)
        metrics_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = metrics_file.with_name(f".{metrics_file.name}.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, metrics_file)
        tracking.log_metrics(result)
    return result
