"""The evaluate stage: score generated samples against real images in classifier features.

`evaluate()` is called by stages/evaluate.py (run by DVC) and writes the metrics JSON that
dvc.yaml declares; the track stage shows it in the model's MLflow run. The maths lives in
`metrics` and `neighbours` beside it; this module picks the image sets.

Every set is scored against the same reference, N real test images, with N the smallest of
the sample, train and test counts (FD, KID and precision/recall depend on N):
- the top level: the generated samples;
- `floor`: N real training images, the best a generator can do;
- `ceiling_blur` and `ceiling_shuffle`: test images Gaussian-blurred, or with their
  pixels shuffled: crude fakes that give every number its scale from above.

Every metric lives in the classifier's features except the copy check,
`memorisation_ratio`, which compares pixels: copying is about pixels, and in features it
did not tell an untrained generator from a trained one on mnist-5k (docs/metrics.md).

Memory depends on N, not on the dataset: only the N picked train and test images are
read, and the copy check streams the whole training set from disk once, in blocks, for
all five image sets together (`neighbours.nearest_in_blocks`).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.special import softmax

from dcgan.core.config import EvaluateConfig
from dcgan.core.errors import UserError
from dcgan.core.outputs import write_json
from dcgan.evaluation import coverage, metrics, neighbours
from dcgan.evaluation.classifier import accuracy, feature_extractor
from dcgan.nets.serialisation import load_model
from dcgan.processed.batches import images_at
from dcgan.processed.imagestore import ImageArray, open_dataset
from dcgan.runtime.progress import ProgressBar

log = logging.getLogger(__name__)

# Kynkäänniemi et al. 2019 use k = 3 for improved precision and recall.
PR_NEIGHBOURS = 3
# The Inception score's customary 10 splits.
SCORE_SPLITS = 10
Images = ImageArray | np.ndarray  # on disk (read by row), or float32 NHWC in [-1, 1]


@dataclass(frozen=True)
class Embedded:
    """A set of images in the classifier's spaces: penultimate features and p(y | x)."""

    features: np.ndarray  # (N, D)
    probs: np.ndarray  # (N, K)


def embed(classifier: keras.Model, images: np.ndarray, batch_size: int,
          bar: ProgressBar | None = None) -> Embedded:
    """Features and class probabilities of `images` in one forward pass, counted on `bar`.

    Raises:
        UserError: if the classifier has no "features" layer.
    """
    counted = [bar.predicting(len(images), batch_size)] if bar else []
    feats, logits = _two_headed(classifier).predict(
        np.asarray(images, np.float32), batch_size=batch_size, verbose=0, callbacks=counted)
    return Embedded(feats.astype(np.float64), softmax(logits.astype(np.float64), axis=-1))


@functools.lru_cache(maxsize=1)  # one model for all five sets: else TensorFlow warns of retracing
def _two_headed(classifier: keras.Model) -> keras.Model:
    return keras.Model(classifier.input, [feature_extractor(classifier).output, classifier.output])


def train_blocks(images: Images) -> Iterator[tuple[int, np.ndarray]]:
    """(start, float32 (rows, pixels)) over all of `images`, read from disk a block of
    `neighbours.DATABASE_ELEMENTS` at a time: the copy check's database."""
    size = max(1, neighbours.DATABASE_ELEMENTS // int(np.prod(images.shape[1:])))
    for start in range(0, len(images), size):
        block = images_at(images, slice(start, start + size))
        yield start, block.reshape(len(block), -1)


def blurred(images: np.ndarray) -> np.ndarray:
    """The blur ceiling: each image Gaussian-blurred with sigma = side / 16 pixels
    (1.75 px at 28 px), which keeps the layout and kills the strokes' detail."""
    sigma = images.shape[1] / 16
    return gaussian_filter(images, sigma=(0, sigma, sigma, 0), mode="nearest").astype(np.float32)


def pixel_shuffled(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The shuffle ceiling: each image's pixel positions permuted (its own permutation),
    keeping its intensity histogram and destroying all structure."""
    n, h, w, c = images.shape
    order = rng.permuted(np.tile(np.arange(h * w), (n, 1)), axis=1)  # (N, H*W)
    flat = images.reshape(n, h * w, c)
    return np.take_along_axis(flat, order[:, :, None], axis=1).reshape(images.shape)


def score(candidate: Embedded, reference: Embedded, cfg: EvaluateConfig, labelled: bool,
          copy_distances: np.ndarray, test_distances: np.ndarray) -> dict:
    """Every metric of one candidate set against the real reference set.

    Args:
        candidate: the set being judged (N images).
        reference: N real test images.
        cfg: KID subsets, mode threshold and seed.
        labelled: False for data without labels: class metrics are then None.
        copy_distances: the candidate's pixel nn distances to the training set (for a
            set drawn from it, to another image than itself).
        test_distances: the reference's pixel nn distances to the training set.
    """
    kid, kid_std = metrics.kid(candidate.features, reference.features, cfg.kid_subsets,
                               cfg.kid_subset_size, cfg.seed)
    precision, recall = coverage.precision_recall(reference.features, candidate.features,
                                                 PR_NEIGHBOURS)
    result = {
        "frechet_distance": metrics.frechet_distance_of(candidate.features, reference.features),
        "kid": kid,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
        "memorisation_ratio": coverage.copy_ratio(copy_distances, test_distances),
        "classifier_score": None,
        "modes_covered": None,
        "mode_kl": None,
    }
    if labelled:
        result["classifier_score"] = metrics.classifier_score(candidate.probs, SCORE_SPLITS)[0]
        result["modes_covered"], result["mode_kl"] = metrics.mode_coverage(
            candidate.probs, reference.probs, cfg.mode_min_share
        )
    return result


def _check_shapes(classifier: keras.Model, samples: np.ndarray, real_train: Images,
                  real_test: Images) -> None:
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
    expected = tuple(classifier.input_shape[1:])
    if expected != data_shape:
        raise UserError(
            f"evaluation classifier expects images of shape {expected}, data has "
            f"{data_shape}; retrain the classifier"
        )


def evaluate_generator(classifier: keras.Model, samples: np.ndarray, real_train: Images,
                       real_test: Images, cfg: EvaluateConfig, labelled: bool = True) -> dict:
    """Score generated samples, with the floor and ceiling rows, at one common N.

    Args:
        classifier: the evaluation classifier (logits output, a "features" layer).
        samples: generated images, float32 NHWC in [-1, 1].
        real_train: real training images of the same shape: the dataset's `ImageArray`
            (only N picked rows are held, the rest streamed for the copy check) or floats.
        real_test: real held-out images of the same shape (the reference), likewise.
        cfg: the evaluate params.
        labelled: whether the classifier was trained on labels (class metrics need it).

    Returns:
        The generated set's metrics at the top level, `frechet_samples` = N, and the
        same metrics under "floor", "ceiling_blur" and "ceiling_shuffle".

    Raises:
        UserError: if sample, data and classifier image shapes disagree, or N < 4.
    """
    _check_shapes(classifier, samples, real_train, real_test)
    n = min(len(samples), len(real_train), len(real_test))
    if n <= PR_NEIGHBOURS:
        raise UserError(f"need at least {PR_NEIGHBOURS + 1} images in each set to evaluate, "
                        f"got {n}; raise generate.num_samples or use more data")
    # 1. The N-image sets, in pixels.
    sets, exclude = _image_sets(samples, real_train, real_test, n, cfg.seed)
    if cfg.kid_subset_size >= n:
        log.warning("evaluate.kid_subset_size %d >= N = %d: every KID subset is the whole set, "
                    "so kid_std is 0; lower it", cfg.kid_subset_size, n)
    # 2. The copy check's pixel distances to the whole training set: one pass over it.
    with ProgressBar("evaluate: copy check", total=len(real_train)) as bar:
        blocks = bar.over(train_blocks(real_train), size=lambda block: len(block[1]))
        found = neighbours.nearest_in_blocks([x.reshape(n, -1) for x in sets.values()], blocks,
                                             [exclude.get(name) for name in sets], fast=True)
    distances = {name: f.distance for name, f in zip(sets, found, strict=True)}
    # 3. Every metric in the classifier's spaces, against the reference.
    with ProgressBar("evaluate: features", total=n * len(sets)) as bar:
        embedded = {name: embed(classifier, x, cfg.batch_size, bar) for name, x in sets.items()}
    reference = embedded["reference"]
    if n <= reference.features.shape[1]:
        # Covariances from N <= D points are singular, so FD is dominated by bias.
        log.warning("only %d images for %d-d features: Fréchet distance is unreliable",
                    n, reference.features.shape[1])
    result = {name: score(embedded[name], reference, cfg, labelled, distances[name],
                          distances["reference"])
              for name in ("samples", "floor", "ceiling_blur", "ceiling_shuffle")}
    return {**result.pop("samples"), "frechet_samples": n, **result}


def _image_sets(samples: np.ndarray, real_train: Images, real_test: Images, n: int,
                seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The N-image sets in pixels, by name, and the training rows each set must not count
    as its own nearest neighbours (the floor's: they are training images)."""
    rng = np.random.default_rng(seed)
    pick = {name: np.sort(rng.choice(len(x), size=n, replace=False))
            for name, x in (("samples", samples), ("train", real_train), ("test", real_test))}
    test = images_at(real_test, pick["test"])
    sets = {"reference": test, "samples": np.asarray(samples[pick["samples"]], np.float32),
            "floor": images_at(real_train, pick["train"]), "ceiling_blur": blurred(test),
            "ceiling_shuffle": pixel_shuffled(test, rng)}
    return sets, {"floor": pick["train"]}


def load_samples(path: Path) -> np.ndarray:
    """Read the generate stage's sample array.

    Raises:
        UserError: if the file is missing or not a .npy array.
    """
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read samples ({err}); run the generate stage") from None


def _inception(cfg: EvaluateConfig, samples: np.ndarray, real_test: Images) -> dict:
    """True FID and IS when `evaluate.inception` names weights (see `evaluation.inception`)."""
    from dcgan.evaluation import inception  # InceptionV3 is only built when asked for

    model, verified = inception.load_inception(cfg.inception)
    n = min(len(samples), len(real_test))
    return inception.inception_metrics(model, verified, samples[:n],
                                       images_at(real_test, slice(0, n)),
                                       cfg.batch_size)


def kept(selection_file: Path) -> dict:
    """Which of training's generators was evaluated: train's selection.json, in short."""
    try:
        selection = json.loads(Path(selection_file).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{selection_file}: cannot read it ({err}); run the train stage "
                        "(`dvc repro train`)") from None
    return {k: selection.get(k) for k in ("generator", "kept", "epoch", "frechet_distance",
                                         "stopped_early")}


def evaluate(cfg: EvaluateConfig, data_file: Path, samples_file: Path, classifier_path: Path,
             metrics_file: Path, selection_file: Path | None = None) -> dict:
    """The evaluate stage: score samples and write the DVC metrics JSON (which the sync step
    shows in the generator's MLflow run).

    Args:
        cfg: the evaluate params.
        data_file: preprocess's dataset directory (`imagestore.open_dataset`).
        samples_file, classifier_path: the generate stage's samples and the classifier.
        metrics_file: the metrics JSON to write.
        selection_file: train's selection.json, to say which epoch's generator this is.

    Returns:
        The metrics of `evaluate_generator`, plus classifier_accuracy (None for
        unlabelled data), when `cfg.inception` is set the Inception metrics, the
        `protocol` they were measured under and, with a selection file, the `kept` generator.

    Raises:
        UserError: if an input is missing or shapes disagree.
    """
    delivered = kept(selection_file) if selection_file is not None else None
    data = open_dataset(data_file)
    samples = load_samples(samples_file)
    if samples.shape[1:] != data.image_shape:
        raise UserError(f"{samples_file}: samples of shape {samples.shape[1:]} do not match the "
                        f"data's {data.image_shape} in {data_file}; regenerate them "
                        "(`dvc repro generate`), retraining the generator on this data")
    classifier = load_model(classifier_path, remedy="run the classifier stage first")
    result = evaluate_generator(classifier, samples, data.train_x, data.test_x, cfg,
                                labelled=data.labelled)
    result["classifier_accuracy"] = accuracy(classifier, data.test_x, data.test_y,
                                             cfg.batch_size)
    if cfg.inception is not None:
        result["inception"] = _inception(cfg, samples, data.test_x)
    result["protocol"] = metrics.protocol(classifier_path, result["frechet_samples"], cfg.seed)
    if delivered is not None:
        result["kept"] = delivered
    write_json(result, metrics_file)
    return result
