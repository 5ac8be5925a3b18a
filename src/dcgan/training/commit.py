"""The end of every epoch, in one place and in one order: grid → guard → history →
quality → log → checkpoint.

`EpochCommit` is the one Keras callback of training besides the input pipeline's. Its
order is code, not the order of a callback list:
1. grid: G's samples from one fixed noise batch, a PNG in the checkpoint directory;
2. guard: non-finite weights stop training before anything records the epoch
   (`DivergenceGuard`; non-finite losses stop it at the step), and the collapse watch;
3. history: a row of history.csv (G and D loss, D(x), D(G(z))), floats rounded as every
   text output is;
4. quality: every `eval_every` epochs and after the last, the Fréchet distance of a fixed
   sample from the generator delivered (G's moving average where kept) and from G, a row of
   quality.csv; then keep-best and early stopping (training.selection);
5. log: the same numbers, the grid and the throughput to the MLflow run (`RunLog`);
6. checkpoint: the epoch is committed only now, so a kill before this point repeats the
   epoch (the run log skips steps it already holds) rather than losing it.

A non-chief worker's commit has only the guard and the checkpoint (`record=None`).
"""

from __future__ import annotations

import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from dcgan.core.outputs import rounded
from dcgan.nets.serialisation import save_model
from dcgan.sampling.images import image_grid, save_image
from dcgan.tracking.runlog import RunLog
from dcgan.training.checkpoints import Checkpoint, StagedOutputs
from dcgan.training.guards import CollapseWatch, DivergenceGuard
from dcgan.training.selection import BEST, FixedSampleFD, Selection, mark_stopped

GRID_ROWS = 8  # the per-epoch grid shows GRID_ROWS x GRID_ROWS samples
# quality.csv's columns: the epoch, the generator delivered's score and G's own.
QUALITY_COLUMNS = ("epoch", "frechet_distance", "frechet_distance_raw")


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


def history_row(epoch: int, logs: dict) -> dict:
    """History's row of 0-based `epoch`: its number (1-based) and the logs, sorted, rounded."""
    return {"epoch": epoch + 1, **rounded({k: float(v) for k, v in sorted(logs.items())})}


@dataclass
class EpochRecord:
    """What the chief records of each epoch, and where."""

    progress: StagedOutputs  # the per-epoch files, in the checkpoint directory
    run: RunLog
    noise: np.ndarray  # the grid's fixed noise (GRID_ROWS**2, latent_dim)
    collapse: CollapseWatch
    images_per_epoch: int
    selection: Selection
    quality: FixedSampleFD | None = None  # None: train.eval_every is 0
    eval_every: int = 0
    protocol: dict | None = None  # what the scores are measured against (selection.json)


class EpochCommit(keras.callbacks.Callback):
    """Grid, guard, history, quality, log and checkpoint of every epoch, in that order."""

    def __init__(self, checkpoint: Checkpoint, guard: DivergenceGuard,
                 record: EpochRecord | None = None):
        super().__init__()
        self.checkpoint, self.guard, self.record = checkpoint, guard, record
        self.start = time.perf_counter()

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        self.checkpoint.set_model(model)
        self.guard.set_model(model)

    def set_params(self, params: dict) -> None:
        super().set_params(params)
        self.checkpoint.set_params(params)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.checkpoint.on_train_begin(logs)  # restores the last committed epoch
        if self.record and self.record.progress.quality.exists():  # as of that epoch
            with open(self.record.progress.quality, newline="") as f:
                rows = list(csv.DictReader(f))
            self.record.selection.restore([(int(r["epoch"]), float(r["frechet_distance"]))
                                           for r in rows])

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.guard.on_epoch_begin(epoch, logs)
        self.checkpoint.on_epoch_begin(epoch, logs)
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.guard.on_train_batch_end(batch, logs)
        self.checkpoint.on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        seconds, logs = time.perf_counter() - self.start, logs or {}
        grid = self._grid(epoch) if self.record else None       # 1. grid
        self.guard.on_epoch_end(epoch, logs)                       # 2. guard
        if self.record:
            note = self.record.collapse.update(epoch, logs)
            row = history_row(epoch, logs)                         # 3. history
            write_row(self.record.progress.history, row, fresh=epoch == 0)
            quality = self._quality(epoch, note)                   # 4. quality
            self._log(row, quality, grid, seconds, note)           # 5. log
        self.checkpoint.on_epoch_end(epoch, logs)                  # 6. checkpoint

    def on_train_end(self, logs: dict | None = None) -> None:
        self.checkpoint.on_train_end(logs)

    def _grid(self, epoch: int) -> np.ndarray:
        images = self.model.sampler(self.record.noise, training=False)
        grid = image_grid(np.asarray(images), GRID_ROWS)
        save_image(grid, self.record.progress.grids / f"epoch_{epoch + 1:04d}.png")
        return np.asarray(grid)

    def _quality(self, epoch: int, collapse: str | None) -> dict | None:
        """Score the delivered generator and G (one score without an average), then keep
        the best and decide on an early stop. Every `eval_every` epochs, after the last,
        and at a collapse that stops training."""
        record, done = self.record, epoch + 1
        stops_now = collapse is not None and record.selection.patience > 0
        if record.quality is None or (done % record.eval_every and done != self.params["epochs"]
                                      and not stops_now):
            return None
        model = self.model
        fd = rounded(record.quality(model.sampler))
        raw = rounded(record.quality(model.generator)) if model.average is not None else fd
        row = dict(zip(QUALITY_COLUMNS, (done, fd, raw), strict=True))
        write_row(record.progress.quality, row, fresh=done <= record.eval_every)
        if record.selection.update(done, fd) and record.selection.keep_best:
            save_model(model.sampler, record.progress.quality.parent / BEST)
        reason = record.selection.stop(collapse)
        if reason and done < self.params["epochs"]:
            record.selection.stopped = reason
            mark_stopped(record.progress.quality.parent, done, reason)
            print(f"early stop after epoch {done}: {reason}", file=sys.stderr)
            model.stop_training = True
        return row

    def _log(self, row: dict, quality: dict | None, grid: np.ndarray, seconds: float,
             note: str | None) -> None:
        run, done = self.record.run, row["epoch"]
        run.metrics({k: v for k, v in row.items() if k != "epoch"}, step=done)
        # Not in history.csv: a DVC output, which timings would make differ between runs.
        run.metrics({"images_per_sec": self.record.images_per_epoch / seconds}, step=done)
        if quality is not None:
            scores = {"epoch_frechet_distance": quality["frechet_distance"]}
            if self.model.average is not None:
                scores["epoch_frechet_distance_raw"] = quality["frechet_distance_raw"]
            run.metrics(scores, step=done)
        run.image(grid, "epoch_grid", done)
        if note:
            run.tags({"collapse": note})
        if self.record.selection.stopped:
            run.tags({"stopped_early": f"after epoch {done}: {self.record.selection.stopped}"})
