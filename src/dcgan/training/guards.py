"""Training health: stop on divergence, warn on collapse. Parts of the per-epoch commit
(training.commit).

- `DivergenceGuard` stops training at the first NaN or inf loss, or at non-finite weights at
  an epoch's end, with one clear error. It raises rather than setting `stop_training`:
  `fit()` then skips `on_train_end`, so `BackupAndRestore` keeps the last good epoch's
  checkpoint, and the MLflow run ends FAILED.
- `CollapseWatch` warns, and tags the MLflow run `collapse`, when D's loss stays below the
  loss's `collapse_d_loss` (nets.losses) for `train.collapse_patience` epochs in a row: D
  then rejects every sample with certainty and G gets no useful gradient, the failure DCGAN
  users report most.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import keras
import numpy as np

from dcgan.core.errors import UserError

LOSSES = ("d_loss", "g_loss")


class Diverged(UserError):
    """Training produced a non-finite loss or weight."""


class DivergenceGuard(keras.callbacks.Callback):
    """Raise `Diverged` at the first non-finite loss (checked every step) or weight (checked
    at every epoch's end).

    The commit checks it before anything records the epoch, so non-finite weights are
    never written, logged or checkpointed.
    """

    def __init__(self, rates: tuple[float, float], checkpoint: Path):
        super().__init__()
        self.rates, self.checkpoint = rates, checkpoint  # G's and D's learning rates
        self.epoch = 1

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        bad = {k: float(v) for k, v in (logs or {}).items()
               if k in LOSSES and not math.isfinite(float(v))}
        if bad:
            what = ", ".join(f"{k} = {v}" for k, v in bad.items())
            raise Diverged(self._message(f"step {batch + 1}: {what}"))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not all(np.isfinite(w).all() for w in self.model.get_weights()):
            raise Diverged(self._message("its end: the weights hold NaN or inf"))

    def _message(self, where: str) -> str:
        done = self.epoch - 1
        kept = (f"the checkpoint of epoch {done} is kept in {self.checkpoint}" if done
                else "no epoch had completed, so there is no checkpoint")
        return (f"training diverged at epoch {self.epoch}, {where}; {kept}; lower the learning "
                f"rates (now G {self.rates[0]:g}, D {self.rates[1]:g}: train.lr for both, or "
                "train.g_lr and train.d_lr) or change train.seed, then rerun")


class CollapseWatch:
    """Warn once on stderr when `d_loss` has stayed below `threshold` for `patience` epochs
    in a row (0 = never); `update` then returns the note the run is tagged `collapse` with.
    Training goes on."""

    def __init__(self, patience: int, threshold: float):
        self.patience, self.threshold = patience, threshold
        self.streak, self.warned = 0, False

    def update(self, epoch: int, logs: dict) -> str | None:
        """Count epoch `epoch` (0-based); the note, the first time the streak is long enough."""
        d_loss = float(logs.get("d_loss", math.inf))
        self.streak = self.streak + 1 if d_loss < self.threshold else 0
        if not self.patience or self.streak < self.patience or self.warned:
            return None
        self.warned = True
        epochs = f"{epoch + 2 - self.streak}-{epoch + 1}"
        note = (f"D's loss stayed below {self.threshold:g} in epochs {epochs}: D rejects "
                "every sample and G gets no useful gradient (collapse)")
        print(f"warning: {note}; lower train.lr or change train.seed", file=sys.stderr)
        return note
