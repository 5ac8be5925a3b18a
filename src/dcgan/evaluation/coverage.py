"""Nearest-neighbour sample metrics: improved precision and recall (Kynkäänniemi et al.
2019: how much of each set lies in the other's k-NN manifold), and the copy check (how
much closer samples are to their nearest training image than real test images are).

The searches are evaluation.neighbours'.
"""

from __future__ import annotations

import numpy as np

from dcgan.evaluation.metrics import as_rows
from dcgan.evaluation.neighbours import knn_radii, nn_distances, ranking_blocks


def _covered(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """(N,) bools: whether each point lies within radii[j] of at least one centre j."""
    # |p - c_j|^2 <= r_j^2  <=>  |c_j|^2 - 2 p.c_j - r_j^2 <= -|p|^2: a row min, no sqrt.
    covered = np.empty(len(points), dtype=bool)
    for rows, row_sq, block in ranking_blocks(points, centres, offsets=-(radii**2)):
        covered[rows] = block.min(axis=1) <= -row_sq
    return covered


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, sec. 2).

    A set's manifold is the union of balls around its rows, each with its k-NN radius.
    Precision is the share of fake rows inside the real manifold (distance <= radius),
    recall the share of real rows inside the fake manifold.

    Args:
        real, fake: (N, D) and (M, D) features.
        k: the neighbour whose distance is a ball's radius (the paper uses 3).

    Returns:
        (precision, recall), each in [0, 1].

    Raises:
        ValueError: if the arrays are not 2-D, the widths differ, or k >= N or M.
    """
    real, fake = as_rows(real=real, fake=fake)
    precision = _covered(fake, real, knn_radii(real, k)).mean()
    recall = _covered(real, fake, knn_radii(fake, k)).mean()
    return float(precision), float(recall)


def memorisation_ratio(
    samples: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    exclude: np.ndarray | None = None,
    test_distances: np.ndarray | None = None,
    fast: bool = False,
) -> float:
    """A copy check: median nn distance samples -> train over that of test -> train.

    About 1 when samples lie as far from the training images as unseen real images do;
    well below 1 when they copy training images; 0 for exact copies.

    Args:
        samples, train, test: (N, D), (M, D) and (L, D) features; test is real images
            not trained on.
        exclude: optional (N,) train index per sample to skip, as in `nn_distances`.
        test_distances: nn_distances(test, train), when several sample sets share one
            test set and it is worth computing once; `test` is then unused.
        fast: as in `nn_distances`.

    Returns:
        The ratio of medians, >= 0.

    Raises:
        ValueError: as `nn_distances`, or if the test median is 0 (test copies train).
    """
    if test_distances is None:
        test_distances = nn_distances(test, train, fast=fast)
    return copy_ratio(nn_distances(samples, train, exclude, fast), test_distances)


def copy_ratio(sample_distances: np.ndarray, test_distances: np.ndarray) -> float:
    """`memorisation_ratio` from the nn distances to the training set, found already:
    median of the samples' over median of the test images'.

    Raises:
        ValueError: if the test median is 0 (test copies train).
    """
    test_median = float(np.median(test_distances))
    if test_median == 0.0:
        raise ValueError("median test-to-train distance is 0: the test set copies the train set")
    return float(np.median(sample_distances)) / test_median
