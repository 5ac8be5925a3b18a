"""The discriminator-feature probe: a linear L2-SVM on D's pooled conv activations.

Radford et al. 2015 (arXiv 1511.06434), section 5.1, judge a DCGAN by how useful its
discriminator is as a feature extractor: every conv layer's activations are max-pooled
to a 4x4 grid, flattened and concatenated, and a regularised linear L2-SVM is fitted on
a few labelled images. Here the same probe is fitted on the trained D, on a freshly
initialised D of the same architecture and on raw pixels, so the number has baselines.

The `probe` DVC stage (stages/probe.py) calls `probe()`, which writes the metrics JSON
and logs the same numbers to the model's MLflow run. Memory does not grow with the test
set: the probes are fitted on the small training subsets, then the labelled test images
are read, turned into features and scored a block of `batches.READ_ROWS` at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import keras
import numpy as np
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from dcgan.core.config import ProbeConfig
from dcgan.core.errors import UserError
from dcgan.core.outputs import write_json
from dcgan.nets.serialisation import load_model
from dcgan.processed import batches
from dcgan.processed.batches import images_at
from dcgan.processed.imagestore import Dataset, ImageArray, open_dataset

log = logging.getLogger(__name__)

# The paper gives no C. On the default data (mnist-5k 28x28, d_filters 64: 3072 features),
# with 1000 of the training images held out for validation, C in 1e-4..1 scored within
# 2 points for D features and C = 1e-3 best; C = 1 on pixels took 6000 liblinear
# iterations (over the default 1000), C = 1e-3 at most about 50, and fits 3-5x faster.
SVM_C = 1e-3
MAX_ITER = 10_000


def adaptive_max_pool(maps: np.ndarray, grid: int = 4) -> np.ndarray:
    """Max-pool feature maps to a fixed grid x grid, whatever their side.

    Cell i spans rows floor(i*H/grid) to ceil((i+1)*H/grid) (PyTorch's adaptive pooling),
    so cells overlap when H is not a multiple of grid and repeat rows when H < grid.

    Args:
        maps: (N, H, W, C) activations.
        grid: cells per side.

    Returns:
        (N, grid, grid, C), same dtype.
    """
    _, height, width, _ = maps.shape
    rows = [((i * height) // grid, -(-((i + 1) * height) // grid)) for i in range(grid)]
    cols = [((j * width) // grid, -(-((j + 1) * width) // grid)) for j in range(grid)]
    return np.stack([
        np.stack([maps[:, r0:r1, c0:c1].max(axis=(1, 2)) for c0, c1 in cols], axis=1)
        for r0, r1 in rows
    ], axis=1)


def _conv_block_outputs(discriminator: keras.Model) -> keras.Model:
    """A model from D's input to the output of each LeakyReLU, i.e. each conv block."""
    taps = [layer.output for layer in discriminator.layers
            if isinstance(layer, keras.layers.LeakyReLU)]
    if not taps:
        raise UserError(f"model {discriminator.name!r} has no LeakyReLU layers to probe; "
                        "pass the discriminator saved by the train stage")
    # `inputs[0]`, not the list: a bare array then matches the input structure without a
    # warning; `.input` is unset on a Sequential loaded from .keras.
    return keras.Model(discriminator.inputs[0], taps, name="discriminator_features")


def discriminator_features(discriminator: keras.Model, images: np.ndarray,
                           batch_size: int = 256, grid: int = 4) -> np.ndarray:
    """D's conv-block activations, each max-pooled to grid x grid, flattened, concatenated.

    Paper, section 5.1: "use all layers' features, maxpooling each layer's representation
    to produce a 4 x 4 spatial grid". Batch norm runs in inference mode (moving statistics),
    so an image's features do not depend on the rest of its batch.

    Args:
        discriminator: the paper or tutorial D (a keras.Sequential, built or loaded).
        images: (N, H, W, C) in [-1, 1], H, W, C matching D's input.
        batch_size: images per forward pass; only one batch of full maps is held at a time.
        grid: cells per side of the pooling grid.

    Returns:
        (N, grid * grid * sum of the blocks' channels) float32.

    Raises:
        UserError: if D has no LeakyReLU layer.
    """
    extractor = _conv_block_outputs(discriminator)
    batches = []
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start:start + batch_size], np.float32)
        maps = extractor(batch, training=False)  # [(B, H/2, W/2, F), (B, H/4, W/4, 2F), ...]
        pooled = [adaptive_max_pool(keras.ops.convert_to_numpy(m).astype(np.float32), grid)
                  for m in maps]
        batches.append(np.concatenate([p.reshape(len(batch), -1) for p in pooled], axis=1))
    if not batches:  # no images: still the right width
        width = sum(grid * grid * t.shape[-1] for t in extractor.outputs)
        return np.zeros((0, width), np.float32)
    return np.concatenate(batches)


def random_like(discriminator: keras.Model, seed: int) -> keras.Model:
    """A freshly initialised network of D's architecture: the random-features baseline.

    Reseeds Keras's global random state (`keras.utils.set_random_seed`), so the same seed
    gives the same weights.
    """
    keras.utils.set_random_seed(seed)
    return keras.models.clone_model(discriminator)


def labelled_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of `size` labelled images, as class-balanced as the data allows.

    Each class gets size // K images and a seeded choice of classes one more; a class with
    too few images gives its share to the others. With one seed and labels, a smaller
    subset is contained in a larger one, so the probe's learning curve is nested.

    Args:
        labels: (N,) int labels, -1 meaning unlabelled (never chosen).
        size: how many indices.
        seed: seed of the class order and of the choice within each class.

    Returns:
        (size,) sorted int64 indices into `labels`.

    Raises:
        ValueError: if fewer than `size` images are labelled.
    """
    labels = np.asarray(labels).reshape(-1)
    labelled = np.flatnonzero(labels >= 0)
    if size > len(labelled):
        raise ValueError(f"asked for {size} labelled images, only {len(labelled)} exist")
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(labels[labelled]))  # who gets the remainder
    picked, rank, position = [], [], []
    for pos, cls in enumerate(classes):
        members = rng.permutation(labelled[labels[labelled] == cls])
        picked.append(members)
        rank.append(np.arange(len(members)))
        position.append(np.full(len(members), pos))
    # Round robin: every class's first image, then every class's second, and so on.
    order = np.lexsort((np.concatenate(position), np.concatenate(rank)))
    return np.sort(np.concatenate(picked)[order[:size]]).astype(np.int64)


def fit_linear_probe(train_features: np.ndarray, train_labels: np.ndarray) -> Pipeline:
    """A regularised linear L2-SVM (paper, section 5.1), fitted.

    Squared hinge loss with an L2 penalty is LinearSVC's default: the paper's "L2-SVM".
    Features are standardised first, since D's layers differ in scale.

    Args:
        train_features: (n, F) features of the labelled training subset.
        train_labels: (n,) their labels, at least two classes.

    Returns:
        The fitted scaler + SVM pipeline; its `predict` takes (m, F) features.
    """
    svm = LinearSVC(C=SVM_C, loss="squared_hinge", penalty="l2", max_iter=MAX_ITER,
                    random_state=0)
    return make_pipeline(StandardScaler(), svm).fit(train_features, train_labels)


def linear_probe(train_features: np.ndarray, train_labels: np.ndarray,
                 test_features: np.ndarray, test_labels: np.ndarray) -> float:
    """Test accuracy of `fit_linear_probe` on (train_features, train_labels).

    Args:
        train_features, train_labels: as `fit_linear_probe`.
        test_features: (m, F) features of the labelled test images.
        test_labels: (m,) their labels.

    Returns:
        The share of test images classified correctly.
    """
    model = fit_linear_probe(train_features, train_labels)
    return float(np.mean(model.predict(test_features) == test_labels))


def _probe_sizes(sizes: Iterable[int], available: int) -> list[int]:
    """The requested sizes that fit; all labelled images if none does."""
    fitting = sorted({int(n) for n in sizes if n <= available})
    return fitting or [available]


def _feature_sets(discriminator: keras.Model, seed: int,
                  batch_size: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """name -> images-to-features function, for the trained D and its two baselines."""
    random_d = random_like(discriminator, seed)
    return {
        "discriminator": lambda x: discriminator_features(discriminator, x, batch_size),
        "random_discriminator": lambda x: discriminator_features(random_d, x, batch_size),
        "pixels": lambda x: x.reshape(len(x), -1).astype(np.float32),
    }


def run_probe(discriminator: keras.Model, data: Dataset, sizes: Iterable[int], seed: int,
              batch_size: int = 256) -> dict:
    """Fit the probe on D features, random-D features and pixels for each training size.

    Each size draws a class-balanced labelled subset of the training split (the same for
    all three feature sets); every labelled test image scores it.

    Args:
        discriminator: the trained D.
        data: the processed dataset (images on disk, or in memory as float arrays).
        sizes: training-subset sizes; those above the labelled count are skipped, and if
            none remains all labelled training images form the single size.
        seed: seed of the subsets and of the random D.
        batch_size: images per forward pass of D (a divisor of `batches.READ_ROWS` batches
            the test images as one pass over them would).

    Returns:
        {"probe_accuracy": D's accuracy at the largest size, "probe_train_size": that size,
         "probe": {"<size>": {"discriminator": a, "random_discriminator": b, "pixels": c}}};
        None, None and {} when the data has fewer than two labelled classes or no labelled
        test image.
    """
    train_y, test_y = np.asarray(data.train_y), np.asarray(data.test_y)
    test_idx = np.flatnonzero(test_y >= 0)
    if len(np.unique(train_y[train_y >= 0])) < 2 or len(test_idx) == 0:
        log.warning("probe skipped: it needs labelled training images of at least two "
                    "classes and labelled test images")
        return {"probe_accuracy": None, "probe_train_size": None, "probe": {}}
    subsets = {n: labelled_subset(train_y, n, seed)
               for n in _probe_sizes(sizes, int(np.sum(train_y >= 0)))}
    union = np.unique(np.concatenate(list(subsets.values())))  # features once per image
    feature_sets = _feature_sets(discriminator, seed, batch_size)
    # 1. Fit every probe on its training subset's features.
    models: dict[tuple[str, int], Pipeline] = {}
    for name, features in feature_sets.items():
        train_f = features(images_at(data.train_x, union))
        for n, idx in subsets.items():
            models[name, n] = fit_linear_probe(train_f[np.searchsorted(union, idx)],
                                               train_y[idx])
    # 2. Score them all on the labelled test images, read once, a block at a time.
    correct = _correct(models, feature_sets, data.test_x, test_y, test_idx)
    scores = {str(n): {name: correct[name, n] / len(test_idx) for name in feature_sets}
              for n in subsets}
    largest = max(subsets)
    return {"probe_accuracy": scores[str(largest)]["discriminator"],
            "probe_train_size": largest, "probe": scores}


def _correct(models: dict[tuple[str, int], Pipeline], feature_sets: dict, test_x: ImageArray,
             test_y: np.ndarray, test_idx: np.ndarray) -> dict[tuple[str, int], int]:
    """Each probe's count of correct answers on the labelled test images `test_idx`, which
    are read once, a block at a time."""
    correct = dict.fromkeys(models, 0)
    for start in range(0, len(test_idx), batches.READ_ROWS):
        rows = test_idx[start:start + batches.READ_ROWS]
        images, labels = images_at(test_x, rows), test_y[rows]
        for name, features in feature_sets.items():
            test_f = features(images)  # (block, F)
            for n in {n for _, n in models}:
                correct[name, n] += int(np.sum(models[name, n].predict(test_f) == labels))
    return correct


def probe(cfg: ProbeConfig, data_file: Path, discriminator_path: Path, metrics_file: Path) -> dict:
    """The probe stage: run the probe and write the DVC metrics JSON (which the sync step
    shows in the generator's MLflow run).

    `data_file` is preprocess's dataset directory (`imagestore.open_dataset`).

    Returns:
        The metrics of `run_probe`.

    Raises:
        UserError: if an input is missing, or D was trained on images of another shape.
    """
    data = open_dataset(data_file)
    discriminator = load_model(discriminator_path, remedy="run the train stage first")
    expected = tuple(discriminator.input_shape[1:])
    if expected != data.image_shape:
        raise UserError(
            f"{discriminator_path}: discriminator expects images of shape {expected}, data has "
            f"{data.image_shape}; retrain on this data (dvc repro train)"
        )
    result = run_probe(discriminator, data, cfg.train_sizes, cfg.seed)
    write_json(result, metrics_file)
    return result
