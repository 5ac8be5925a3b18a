"""Time to quality, our default recipe against the TensorFlow tutorial's:
`python -m benchmarks quality`.

A benchmark, not a test. Both recipes train on the pipeline's processed data and are scored
after every epoch by the Fréchet distance that train's quality curve uses: the evaluate
stage's classifier features of 1,000 samples from fixed noise against the real test images.

- `tutorial`: the TensorFlow DCGAN tutorial as published: its architecture and train step
  (`bench.tutorial_gan`), Adam 1e-4, float32, batch 256, `shuffle(60000).batch(256)`.
- `ours`: params.yaml's train section through `fit()`, as the train stage runs it (without
  the per-epoch grids, checkpoints and MLflow logs, which are not part of the recipe).

The threshold, unless given, is the tutorial's own Fréchet distance after `threshold_epoch`
epochs. Each recipe's time is its training wall-clock (scoring excluded) up to the first epoch
at or below the threshold. Each recipe runs in a fresh process.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import tensorflow as tf

from benchmarks.records import in_fresh_process, machine
from benchmarks.step import tutorial_gan
from dcgan.core.config import TrainConfig, load_params
from dcgan.core.errors import UserError
from dcgan.core.seeding import seed_everything, set_precision
from dcgan.evaluation.classifier import feature_extractor
from dcgan.nets.model import build_gan
from dcgan.nets.serialisation import load_model
from dcgan.processed.batches import SeededBatches
from dcgan.processed.imagestore import Dataset, open_dataset, scale
from dcgan.training.selection import FixedSampleFD

TUTORIAL = {"arch": "tutorial", "batch_size": 256, "lr": 1e-4, "precision": "float32",
            "update": "simultaneous", "shuffle_buffer": 60000}


def curve(recipe: str, data_file: Path, classifier_file: Path, epochs: int,
          threshold: float | None = None, params_file: Path = Path("params.yaml"),
          latent_dim: int = 100) -> list[dict]:
    """Train `recipe` ("ours" or "tutorial") for up to `epochs` epochs in this process; one
    `{"epoch", "seconds", "frechet_distance"}` per epoch, `seconds` being the cumulative
    training time. Stops early at the first epoch at or below `threshold`, if given.
    `ours` is `params_file`'s train section; `latent_dim` is the tutorial's (tests shrink it).

    Stateful (seeds, dtype policy): call it in a fresh process, as `run` does.

    Raises:
        UserError: if the data or the classifier is missing or does not match.
    """
    data = open_dataset(data_file)
    classifier = load_model(classifier_file, remedy="run `dvc repro classifier` first")
    if tuple(classifier.input_shape[1:]) != data.image_shape:
        raise UserError(f"{classifier_file} does not take the data's images "
                        f"{data.image_shape}; rerun `dvc repro classifier`")
    features = feature_extractor(classifier)
    if recipe == "tutorial":
        return _tutorial_curve(data, features, epochs, threshold, latent_dim)
    return _our_curve(data, features, epochs, threshold, load_params(params_file).train)


class _Scorer:
    """Scores a generator after an epoch and keeps the points. One scorer for both recipes:
    the same noise and real images (seed 0), so the two curves differ only by the
    generators."""

    def __init__(self, features: keras.Model, data: Dataset, latent_dim: int,
                 threshold: float | None):
        self.quality = FixedSampleFD(features, data.test_x, latent_dim, seed=0)
        self.threshold, self.points = threshold, []

    def __call__(self, generator: keras.Model, epoch: int, seconds: float) -> bool:
        """Record the epoch; True when the threshold is reached."""
        fd = self.quality(generator)
        self.points.append({"epoch": epoch, "seconds": round(seconds, 2),
                            "frechet_distance": fd})
        return self.threshold is not None and fd <= self.threshold


def _tutorial_curve(data: Dataset, features: keras.Model, epochs: int,
                    threshold: float | None, latent_dim: int) -> list[dict]:
    """`curve` of the TF tutorial's recipe: its own loop over images held in memory."""
    keras.utils.set_random_seed(0)
    score = _Scorer(features, data, latent_dim, threshold)
    step, generator = tutorial_gan(TUTORIAL["batch_size"], latent_dim, data.image_shape)
    # The tutorial's pipeline holds the images in memory (a small-data benchmark).
    pixels = scale(data.train_x.pixels(slice(None)))  # (N, H, W, C) float32
    dataset = (tf.data.Dataset.from_tensor_slices(pixels)
               .shuffle(TUTORIAL["shuffle_buffer"]).batch(TUTORIAL["batch_size"]))
    seconds = 0.0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        for batch in dataset:
            loss = step(batch)
        float(loss)  # waits for the last step
        seconds += time.perf_counter() - start
        if score(generator, epoch, seconds):
            break
    return score.points


def _our_curve(data: Dataset, features: keras.Model, epochs: int, threshold: float | None,
               cfg: TrainConfig) -> list[dict]:
    """`curve` of our recipe (`cfg`): the train stage's model and batches under `fit()`."""
    seed_everything(cfg.seed)
    set_precision(cfg.precision)
    score = _Scorer(features, data, cfg.latent_dim, threshold)
    batches = SeededBatches(data.train_x, cfg.batch_size, cfg.seed)
    gan = build_gan(cfg, data.image_shape)

    class Score(keras.callbacks.Callback):
        seconds = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.seconds += time.perf_counter() - self.start
            self.model.stop_training = score(self.model.sampler, epoch + 1, self.seconds)

    gan.fit(batches.dataset, epochs=epochs, steps_per_epoch=batches.steps,
            callbacks=[batches, Score()], shuffle=False, verbose=0)
    return score.points


def run(data_file: Path, classifier_file: Path, threshold: float | None, threshold_epoch: int,
        max_epochs: int, params_file: Path = Path("params.yaml"), latent_dim: int = 100) -> dict:
    """The tutorial recipe, then ours, each in a fresh process; the record.

    Raises:
        UserError: if a file is missing, or a recipe fails.
    """
    if not Path(data_file).is_dir():
        raise UserError(f"{data_file}: not found; run `dvc repro preprocess` first")
    if not Path(classifier_file).is_file():
        raise UserError(f"{classifier_file}: not found; run `dvc repro classifier` first")
    cfg = load_params(params_file).train  # bad params fail now, not after the tutorial
    given = threshold is not None
    common = dict(data_file=str(data_file), classifier_file=str(classifier_file),
                  params_file=str(params_file), latent_dim=latent_dim)
    epochs = max_epochs if given else threshold_epoch
    tutorial = in_fresh_process("benchmarks.quality", "curve",
                                dict(recipe="tutorial", epochs=epochs, threshold=threshold,
                                     **common))
    if not given:
        threshold = tutorial[threshold_epoch - 1]["frechet_distance"]
    ours = in_fresh_process("benchmarks.quality", "curve",
                            dict(recipe="ours", epochs=max_epochs, threshold=threshold, **common))
    reached = {name: next((p for p in points if p["frechet_distance"] <= threshold), None)
               for name, points in (("tutorial", tutorial), ("ours", ours))}
    record = {
        "benchmark": "time_to_quality",
        "threshold": threshold,
        "threshold_from": "given" if given else f"tutorial recipe, epoch {threshold_epoch}",
        "recipes": {"tutorial": TUTORIAL,
                    "ours": {k: v for k, v in cfg.model_dump().items()
                             if k not in ("eval_every", "collapse_patience", "collapse_d_loss")}},
        "reached": reached,
        "curves": {"tutorial": tutorial, "ours": ours},
    }
    ratio = (round(reached["ours"]["seconds"] / reached["tutorial"]["seconds"], 3)
             if reached["tutorial"] and reached["ours"] else None)  # None: not reached
    return {**record, "ours_over_tutorial_seconds": ratio,
            "target": "ours <= 0.5 x tutorial seconds", "met": ratio is not None and ratio <= 0.5,
            **machine()}
