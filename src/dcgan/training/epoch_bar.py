"""Training's progress on the console: one bar over all its steps, and a line per epoch.

`train._fit` runs `fit()` with `verbose=0` and this callback in place of Keras' progress
bar, which starts over at every epoch. On a terminal (dcgan.runtime.progress) the bar counts
every step of every epoch, so its time left is the whole training's, with the epoch in its
name and the last epoch's losses beside it; above it, one line per epoch stays. In a log
(DVC's, CI) only those lines are printed, and a line every minute within a long epoch:

    train: epoch 3/60 (14.2 s): d_loss 1.365, g_loss 0.7933, d_real 0.5143, d_fake 0.4902,
    frechet_distance 104.1   (one line)

The line comes after the epoch's commit (training.commit), so it has the epoch's Fréchet
distance where one was measured. Nothing here is written to any output file.
"""

from __future__ import annotations

import time

import keras

from dcgan.runtime.progress import ProgressBar
from dcgan.training.selection import Selection


class EpochBar(keras.callbacks.Callback):
    """The progress of `fit()` over `epochs` epochs of `steps` steps; `selection` (None: no
    quality score) has the latest Fréchet distance. Also a context manager that ends the bar
    however `fit()` ends."""

    def __init__(self, epochs: int, steps: int, selection: Selection | None = None):
        super().__init__()
        self.epochs, self.steps, self.selection = epochs, steps, selection
        self.bar: ProgressBar | None = None
        self.first = self.epoch = 0
        self.start = time.perf_counter()

    def __enter__(self) -> EpochBar:
        return self

    def __exit__(self, kind: type | None, *_: object) -> None:
        if self.bar is not None:
            self.bar.describe("train")
            self.bar.close(done=kind is None, summary=f"{self.epoch + 1 - self.first} epochs in "
                                                      f"{self.bar.elapsed()}")

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        what = f"train: epoch {epoch + 1}/{self.epochs}"
        if self.bar is None:  # the first epoch of this run: a resumed one starts further on
            self.bar = ProgressBar(what, self.epochs * self.steps, unit="step",
                                initial=epoch * self.steps)
            self.first = epoch
        self.bar.describe(what)
        self.epoch, self.start = epoch, time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        # `batch` counts from 0 in each epoch (with steps_per_execution, by its last step).
        self.bar.update_to(self.epoch * self.steps + batch + 1)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        seconds, done = time.perf_counter() - self.start, epoch + 1
        logs = logs or {}
        scores = {k: float(logs[k]) for k in sorted(logs, key=lambda k: (k[-4:] != "loss", k))}
        if self.selection is not None and self.selection.last_epoch == done:
            scores["frechet_distance"] = self.selection.last_score
        shown = ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
        self.bar.update_to(done * self.steps)
        self.bar.note(", ".join(f"{k} {scores[k]:.3g}" for k in scores if k.endswith("loss")))
        self.bar.say(f"train: epoch {done}/{self.epochs} ({seconds:.1f} s): {shown}")
