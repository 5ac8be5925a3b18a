"""Training: seeds, the input pipeline, callbacks and `fit()`, tracked in MLflow.

The train stage calls `train()`. Per epoch it writes a fixed-noise sample
grid, a row of history.csv (G and D loss, D(x), D(G(z)), images per second)
and a checkpoint from which an interrupted run resumes at the next epoch.
Every `train.eval_every` epochs it adds the Fréchet distance of a fixed sample
to quality.csv and the MLflow run, so users see when training peaks or collapses.
At the end it writes a GIF of the grids and saves G and D as `.keras` files.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from dcgan import tracking
from dcgan.classifier import feature_extractor
from dcgan.config import Params, TrainConfig, flatten
from dcgan.data import file_md5, load_processed
from dcgan.errors import UserError
from dcgan.guards import CollapseWatch, DivergenceGuard
from dcgan.metrics import frechet_distance, gaussian_stats
from dcgan.model import build_gan, load_model, save_model
from dcgan.sampling import image_grid, make_gif, save_image

GRID_ROWS = 8  # the per-epoch grid shows GRID_ROWS x GRID_ROWS samples
# Images in the quality-over-training Fréchet distance: the evaluate stage's default N,
# so the last point compares with the evaluate stage's number (FD depends on N).
QUALITY_SAMPLES = 1000


@dataclass(frozen=True)
class TrainOutputs:
    """Where train writes; dvc.yaml passes each path once."""

    generator: Path
    discriminator: Path
    history: Path
    quality: Path
    grids: Path
    gif: Path
    run_file: Path
    checkpoints: Path


class Throughput(keras.callbacks.Callback):
    """Add `images_per_sec` (training images over the epoch's wall time) to the logs."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = images_per_epoch

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs["images_per_sec"] = self.images_per_epoch / (time.perf_counter() - self.start)


class HistoryCSV(keras.callbacks.Callback):
    """Append one row per epoch (1-based) of the logged metrics to a CSV file.

    Keras' CSVLogger would add empty `val_*` columns for every metric here,
    since a GAN has no validation data.
    """

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in sorted((logs or {}).items())}}
        write_row(self.path, row, fresh=epoch == 0)


def write_row(path: Path, row: dict, fresh: bool) -> None:
    """Add a row to a per-epoch CSV: with `fresh` (the run's first row) or when the file
    is missing, start it afresh with a header; otherwise (later rows, also after a
    resume) append."""
    fresh = fresh or not path.exists()
    with open(path, "w" if fresh else "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if fresh:
            writer.writeheader()
        writer.writerow(row)


class EpochGrid(keras.callbacks.Callback):
    """Save a grid of G's samples from one fixed noise batch after every epoch."""

    def __init__(self, noise: np.ndarray, grid_dir: Path):
        super().__init__()
        self.noise, self.grid_dir = noise, grid_dir

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        images = self.model.generator(self.noise, training=False)
        path = self.grid_dir / f"epoch_{epoch + 1:04d}.png"
        save_image(image_grid(np.asarray(images), GRID_ROWS), path)


class QualityMonitor(keras.callbacks.Callback):
    """Every `every` epochs (and after the last), the Fréchet distance between G's
    samples from one fixed noise batch and real test images, in the evaluation
    classifier's features: a row of the quality CSV and the MLflow step metric
    `epoch_frechet_distance` (the evaluate stage's `frechet_distance` stays the final one).
    """

    def __init__(self, features: keras.Model, real_test: np.ndarray, latent_dim: int,
                 every: int, path: Path, seed: int, batch_size: int = 256):
        super().__init__()
        self.features, self.every, self.path, self.batch_size = features, every, path, batch_size
        rng = np.random.default_rng([seed, 1])  # a stream apart from the grid's noise
        n = min(QUALITY_SAMPLES, len(real_test))
        real = real_test[np.sort(rng.choice(len(real_test), size=n, replace=False))]
        self.real_stats = gaussian_stats(self._forward(self.features, real))
        self.noise = rng.standard_normal((n, latent_dim)).astype(np.float32)

    def _forward(self, model: keras.Model, x: np.ndarray) -> np.ndarray:
        # Direct calls, not predict(): inside fit(), predict's tf.data graph makes TF log a
        # spurious "E0000 ... node_def_util" line at every evaluation.
        return np.concatenate([np.asarray(model(x[i:i + self.batch_size], training=False))
                               for i in range(0, len(x), self.batch_size)])

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        done = epoch + 1
        if done % self.every and done != self.params["epochs"]:
            return
        images = self._forward(self.model.generator, self.noise)
        fake_stats = gaussian_stats(self._forward(self.features, images))
        fd = frechet_distance(*fake_stats, *self.real_stats)
        write_row(self.path, {"epoch": done, "frechet_distance": fd}, fresh=done <= self.every)
        tracking.log_metrics({"epoch_frechet_distance": fd}, step=done)


class EpochLogger(keras.callbacks.Callback):
    """Log every epoch's metrics, and the fixed-noise grid when there is one, to the run.

    Place it after the callbacks that add to `logs` (throughput, sample grid).
    """

    def __init__(self, grid_dir: Path | None = None):
        super().__init__()
        self.grid_dir = grid_dir

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        tracking.log_metrics(logs or {}, step=epoch + 1)
        grid = self.grid_dir / f"epoch_{epoch + 1:04d}.png" if self.grid_dir else None
        if grid is not None and grid.exists():
            with Image.open(grid) as image:
                tracking.log_image(np.asarray(image), key="epoch_grid", step=epoch + 1)


def seed_everything(seed: int, precision: str) -> None:
    """Seed Python, NumPy and TF, make TF ops deterministic, and set the dtype policy."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_dtype_policy(precision)


def input_pipeline(images: np.ndarray, cfg: TrainConfig) -> tf.data.Dataset:
    """Shuffled full batches; the shuffle is seeded so the data order is fixed by `cfg.seed`.

    Raises:
        UserError: if there are fewer images than one batch.
    """
    if len(images) < cfg.batch_size:
        raise UserError(
            f"train.batch_size = {cfg.batch_size} exceeds the {len(images)} training images; "
            "lower train.batch_size or use more data"
        )
    return (
        tf.data.Dataset.from_tensor_slices(images)
        .shuffle(len(images), seed=cfg.seed, reshuffle_each_iteration=True)
        # Full batches only: a tiny last batch would skew batch-norm statistics.
        .batch(cfg.batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def checkpoint_dir(root: Path, cfg: TrainConfig, data_md5: str) -> Path:
    """A checkpoint directory keyed by what shapes training, so changed params never resume
    from a stale checkpoint."""
    key = json.dumps({"train": cfg.model_dump(), "data": data_md5}, sort_keys=True)
    return root / hashlib.sha256(key.encode()).hexdigest()[:16]


def _callbacks(cfg: TrainConfig, out: TrainOutputs, ckpt: Path, images_per_epoch: int,
               quality: QualityMonitor | None) -> list[keras.callbacks.Callback]:
    noise = np.random.default_rng(cfg.seed).standard_normal((GRID_ROWS**2, cfg.latent_dim))
    out.history.parent.mkdir(parents=True, exist_ok=True)
    # Order matters: Throughput adds `images_per_sec` to the logs that HistoryCSV and
    # EpochLogger write, EpochGrid saves the picture EpochLogger uploads, and the
    # divergence guard vets the weights before BackupAndRestore checkpoints them.
    return [
        Throughput(images_per_epoch),
        EpochGrid(noise.astype(np.float32), out.grids),
        DivergenceGuard(cfg.adam[0], ckpt),
        CollapseWatch(cfg.collapse_patience, cfg.collapse_d_loss),
        keras.callbacks.BackupAndRestore(str(ckpt)),
        HistoryCSV(out.history),
        *([quality] if quality else []),
        EpochLogger(out.grids),
    ]


def _quality_monitor(cfg: TrainConfig, classifier_path: Path, real_test: np.ndarray,
                     path: Path) -> QualityMonitor | None:
    """The quality-over-training callback, or None (and a header-only CSV) when off."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if cfg.eval_every == 0:
        with open(path, "w", newline="") as f:
            csv.writer(f).writerow(["epoch", "frechet_distance"])
        return None
    classifier = load_model(classifier_path, remedy="run `dvc repro classifier` first")
    if tuple(classifier.input_shape[1:]) != real_test.shape[1:]:
        raise UserError(
            f"{classifier_path} expects images of shape {tuple(classifier.input_shape[1:])}, "
            f"the data has {real_test.shape[1:]}; rerun the classifier stage"
        )
    return QualityMonitor(feature_extractor(classifier), real_test, cfg.latent_dim,
                          cfg.eval_every, path, cfg.seed)


def train(params: Params, data_file: Path, classifier_path: Path, out: TrainOutputs) -> dict:
    """Train the DCGAN on the processed data and write every train output.

    Args:
        params: the whole validated params; fetch, preprocess and train are logged.
        data_file: the preprocess stage's npz.
        classifier_path: the classifier stage's model, whose features the
            quality-over-training Fréchet distance uses (unread if train.eval_every is 0).
        out: output paths.

    Returns:
        The last epoch's logs and the MLflow run id.

    Raises:
        UserError: on data that the config cannot train on.
    """
    cfg = params.train
    tracking.check_store()  # an unreachable tracking server fails now, not after training
    data = load_processed(data_file)
    data_md5 = file_md5(data_file)
    # 1. Seeds first: the initial weights and the noise draw from them.
    seed_everything(cfg.seed, cfg.precision)
    dataset = input_pipeline(data.train_x, cfg)
    gan = build_gan(cfg, data.image_shape)
    images_per_epoch = (len(data.train_x) // cfg.batch_size) * cfg.batch_size
    quality = _quality_monitor(cfg, classifier_path, data.test_x, out.quality)
    callbacks = _callbacks(cfg, out, checkpoint_dir(out.checkpoints, cfg, data_md5),
                           images_per_epoch, quality)
    tags = {"dataset": params.fetch.dataset, "data_md5": data_md5, "arch": cfg.arch}
    default_name = f"{cfg.arch}-{params.fetch.dataset}-{params.preprocess.image_size}px"
    # 2. Train inside the MLflow run; it is marked FAILED if anything raises.
    # The run's params are those that shape the model; generate and evaluate, which
    # may rerun on the same model with new params, record theirs as tags.
    logged = flatten(params, ("fetch", "preprocess", "train"))
    with tracking.start_run(out.run_file, logged, tags, default_name) as run_id:
        # Keras' live progress bar on a terminal, one line per epoch in logs.
        verbose = 1 if sys.stdout.isatty() else 2
        start = time.perf_counter()
        history = gan.fit(dataset, epochs=cfg.epochs, callbacks=callbacks, shuffle=False,
                          verbose=verbose)
        tracking.log_metrics({"train_seconds": time.perf_counter() - start})
        # 3. Outputs: GIF of the epoch grids, then the two networks.
        make_gif(sorted(out.grids.glob("epoch_*.png")), out.gif)
        save_model(gan.generator, out.generator)
        save_model(gan.discriminator, out.discriminator)
        tracking.log_artifacts([out.history, out.quality, out.gif, out.discriminator], "train")
        tracking.log_generator(gan.generator, tags)
    last = {k: float(v[-1]) for k, v in history.history.items()}
    return {"run_id": run_id, **last}
