"""Which generator train delivers, and when it stops early: the quality score, keep-best and
early stopping.

The per-epoch commit (training.commit) scores the generator every `train.eval_every`
epochs with `FixedSampleFD` (the Fréchet distance of a fixed sample, in the evaluation
classifier's features) and hands each score to `Selection`:
- with `train.keep_best`, a better score than every earlier one saves that epoch's
  generator in the checkpoint directory (`BEST`), and train delivers it instead of the last;
- with `train.early_stop_patience` N > 0, training stops after N scores in a row without
  a better one, or at collapse (training.guards.CollapseWatch).

Resuming: the state is a function of quality.csv's rows, which the checkpoint keeps up to
its epoch, so `restore` rebuilds it. An early stop is written down (`STOPPED`) before its
epoch is committed; a resumed training ends at that epoch (`stopped_at`). Epochs after the
checkpoint are recomputed bitwise, so a `BEST` file saved by one of them is saved again.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from dcgan.core.outputs import write_json
from dcgan.evaluation.metrics import frechet_distance, gaussian_stats
from dcgan.processed.imagestore import ImageArray

BEST = "best_generator.keras"  # in the checkpoint directory
STOPPED = "stopped.json"

# Generated images in the quality-over-training Fréchet distance (and real validation images,
# at most): the evaluate stage's default N.
QUALITY_SAMPLES = 1000


class FixedSampleFD:
    """The Fréchet distance between QUALITY_SAMPLES images a generator makes from one fixed
    noise batch and real validation images, in the evaluation classifier's features.

    Of `real` (the dataset's validation `ImageArray`, or float32 images), at most
    QUALITY_SAMPLES rows, picked once, are read, once. Its scores choose the epoch train
    delivers, so they never use the test images that the evaluate stage scores it on.
    """

    def __init__(self, features: keras.Model, real: ImageArray | np.ndarray,
                 latent_dim: int, seed: int, batch_size: int = 256):
        self.features, self.batch_size = features, batch_size
        rng = np.random.default_rng([seed, 1])  # a stream apart from the grid's noise
        self.n = QUALITY_SAMPLES
        picked = np.sort(rng.choice(len(real), size=min(self.n, len(real)), replace=False))
        self.real_stats = gaussian_stats(self._forward(self.features, real[picked]))
        self.noise = rng.standard_normal((self.n, latent_dim)).astype(np.float32)

    def _forward(self, model: keras.Model, x: np.ndarray) -> np.ndarray:
        # Direct calls, not predict(): inside fit(), predict's tf.data graph makes TF log a
        # spurious "E0000 ... node_def_util" line at every evaluation.
        return np.concatenate([np.asarray(model(x[i:i + self.batch_size], training=False))
                               for i in range(0, len(x), self.batch_size)])

    def __call__(self, generator: keras.Model) -> float:
        images = self._forward(generator, self.noise)
        return frechet_distance(*gaussian_stats(self._forward(self.features, images)),
                                *self.real_stats)


@dataclass
class Selection:
    """The running best score and the early-stop count of one training."""

    keep_best: bool
    patience: int  # evaluations without improvement before stopping; 0 = never stop
    best_epoch: int = 0
    best_score: float = math.inf
    stale: int = 0  # scores since the best
    last_epoch: int = 0
    last_score: float | None = None
    stopped: str | None = None  # why training stopped early

    def restore(self, scores: list[tuple[int, float]]) -> None:
        """Rebuild the state from the (epoch, score) rows kept after a resume."""
        self.best_epoch, self.best_score, self.stale = 0, math.inf, 0
        self.last_epoch, self.last_score, self.stopped = 0, None, None
        for epoch, score in scores:
            self.update(epoch, score)

    def update(self, epoch: int, score: float) -> bool:
        """Record `epoch`'s score; True when it is the best so far (ties keep the earlier)."""
        self.last_epoch, self.last_score = epoch, score
        if score < self.best_score:
            self.best_epoch, self.best_score, self.stale = epoch, score, 0
            return True
        self.stale += 1
        return False

    def stop(self, collapse: str | None) -> str | None:
        """Why training should stop after the latest score, or None to go on."""
        if not self.patience:
            return None
        if collapse:
            return f"collapse: {collapse}"
        if self.stale >= self.patience:
            return (f"no better Fréchet distance in {self.stale} evaluations "
                    f"(best {self.best_score:g} at epoch {self.best_epoch})")
        return None

    def summary(self, sampler: str, epochs_done: int) -> dict:
        """What selection.json holds: which generator was delivered, of which epoch, its
        score, the last epoch's, and why training stopped early (null: it did not)."""
        scored = self.last_score is not None
        kept_best = self.keep_best and scored
        return {
            "generator": sampler,  # "ema" (G's moving average) or "raw" (G)
            "kept": "best" if kept_best else "last",
            "epoch": self.best_epoch if kept_best else epochs_done,
            "frechet_distance": (self.best_score if kept_best
                                 else self.last_score if self.last_epoch == epochs_done
                                 else None),
            "best_epoch": self.best_epoch if scored else None,
            "best_frechet_distance": self.best_score if scored else None,
            "last_epoch": epochs_done,
            "last_frechet_distance": self.last_score if self.last_epoch == epochs_done else None,
            "stopped_early": self.stopped,
        }


def mark_stopped(directory: Path, epoch: int, reason: str) -> None:
    """Write down that training stops after `epoch` (before that epoch is committed)."""
    write_json({"epoch": epoch, "reason": reason}, directory / STOPPED)


def stopped_at(directory: Path) -> tuple[int, str] | None:
    """The epoch an earlier, interrupted run of this training decided to stop after, and why."""
    try:
        stop = json.loads((directory / STOPPED).read_text())
        return int(stop["epoch"]), str(stop["reason"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
