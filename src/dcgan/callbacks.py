"""The per-epoch callbacks of training: throughput, the history CSV, the fixed-noise grid,
quality over training (the Fréchet distance of a fixed sample) and MLflow logging.

`training.train()` puts them in order around `fit()`; each writes into the checkpoint
directory (see checkpoints.py) or to the MLflow run, never to a stage output directly.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from dcgan import tracking
from dcgan.imagestore import ImageArray
from dcgan.metrics import frechet_distance, gaussian_stats
from dcgan.sampling import image_grid, save_image

GRID_ROWS = 8  # the per-epoch grid shows GRID_ROWS x GRID_ROWS samples
# Images in the quality-over-training Fréchet distance: the evaluate stage's default N,
# so the last point compares with the evaluate stage's number (FD depends on N).
QUALITY_SAMPLES = 1000



class Throughput(keras.callbacks.Callback):
    """Log `images_per_sec` (training images over the epoch's wall time) to MLflow.

    Not to the epoch logs: history.csv is a DVC output, and timings would make two
    identical runs' outputs differ."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = images_per_epoch

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        seconds = time.perf_counter() - self.start
        tracking.log_metrics({"images_per_sec": self.images_per_epoch / seconds}, step=epoch + 1)


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


class FixedSampleFD:
    """The Fréchet distance between a generator's samples from one fixed noise batch and
    real test images, in the evaluation classifier's features.

    Of `real_test` (the dataset's `ImageArray`, or float32 images), only the
    QUALITY_SAMPLES rows picked are read, once.
    """

    def __init__(self, features: keras.Model, real_test: ImageArray | np.ndarray,
                 latent_dim: int, seed: int, batch_size: int = 256):
        self.features, self.batch_size = features, batch_size
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

    def __call__(self, generator: keras.Model) -> float:
        images = self._forward(generator, self.noise)
        return frechet_distance(*gaussian_stats(self._forward(self.features, images)),
                                *self.real_stats)


class QualityMonitor(keras.callbacks.Callback):
    """Every `every` epochs (and after the last), the `FixedSampleFD` of G: a row of the
    quality CSV and the MLflow step metric `epoch_frechet_distance` (the evaluate stage's
    `frechet_distance` stays the final one).
    """

    def __init__(self, score: FixedSampleFD, every: int, path: Path):
        super().__init__()
        self.score, self.every, self.path = score, every, path

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        done = epoch + 1
        if done % self.every and done != self.params["epochs"]:
            return
        fd = self.score(self.model.generator)
        write_row(self.path, {"epoch": done, "frechet_distance": fd}, fresh=done <= self.every)
        tracking.log_metrics({"epoch_frechet_distance": fd}, step=done)


class EpochLogger(keras.callbacks.Callback):
    """Log every epoch's metrics, and the fixed-noise grid when there is one, to the run.

    Place it after EpochGrid, which draws the picture it uploads.
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
