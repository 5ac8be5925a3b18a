"""The evaluate stage: score generated samples against real images in classifier features.

`evaluate()` is called by stages/evaluate.py (run by DVC). It writes the metrics
JSON that dvc.yaml declares and logs the same numbers to the model's MLflow run.
The maths lives in `dcgan.metrics`.
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
from dcgan.metrics import frechet_distance_of
from dcgan.model import load_model

log = logging.getLogger(__name__)


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
