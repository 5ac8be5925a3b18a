"""Resumable training: where checkpoints live, what they hold, and how a run picks up.

`train()` keeps one checkpoint directory per training set-up (`checkpoint_dir`: a hash of
the train params and the data), so changed params never resume from a stale checkpoint.
`Checkpoint`, Keras' `BackupAndRestore` extended, writes it at the end of every epoch and
reads it back when `fit()` starts after a crash or a kill. It holds:
- Keras' checkpoint: the weights of G, D and G's moving average (nets.ema), both Adam
  states, and the RNG states of the noise and of Dropout (the DCGAN model tracks those, see
  `model.DCGAN`), with the epoch;
- the best epoch's generator so far and, if training decided to stop early, when
  (training.selection);
- the per-epoch files (history and quality CSVs, the epoch grids), which training writes
  here and copies to its DVC outputs only once it completes (`StagedOutputs`): a failed or killed
  run leaves no partial outputs and overwrites none of the last ones;
- the MLflow run id (`run.json`), so a resumed training continues its run.
The data order is a function of the epoch (`processed.batches.SeededBatches`), so with these the
resumed run computes exactly what the uninterrupted one would have. `train()` deletes the
directory once all its outputs are saved.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import keras

from dcgan.core.config import TrainConfig
from dcgan.core.errors import UserError
from dcgan.core.outputs import atomic_path, replace_dir
from dcgan.core.seeding import resolve_precision
from dcgan.training.distribution import agree

RUN_FILE = "run.json"


def checkpoint_dir(root: Path, cfg: TrainConfig, data_md5: str, worker: int = 0) -> Path:
    """A checkpoint directory keyed by what shapes training, so changed params never resume
    from a stale checkpoint.

    `train.distribution` is not part of the key: the weights are the same whatever the
    devices, so a run stopped on one GPU may resume on two. Worker N > 0 of a multi-worker
    cluster keeps its own copy in `<key>-worker<N>` (it may share the chief's disk).
    """
    train = {**cfg.model_dump(exclude={"distribution"}),
             "precision": resolve_precision(cfg.precision)}  # `auto` as this machine runs it
    key = json.dumps({"train": train, "data": data_md5}, sort_keys=True)
    name = hashlib.sha256(key.encode()).hexdigest()[:16]
    return root / (f"{name}-worker{worker}" if worker else name)


def saved_run_id(directory: Path) -> str | None:
    """The MLflow run id an earlier, interrupted training left in `directory`, if any."""
    try:
        return json.loads((directory / RUN_FILE).read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_run_id(directory: Path, run_id: str) -> None:
    """Record the training's MLflow run id in its checkpoint directory."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / RUN_FILE).write_text(json.dumps({"run_id": run_id}) + "\n")


@dataclass(frozen=True)
class StagedOutputs:
    """Training's files inside its checkpoint directory, named as the outputs they become."""

    history: Path
    quality: Path
    grids: Path
    gif: Path
    generator: Path
    generator_last: Path
    discriminator: Path
    selection: Path

    @classmethod
    def inside(cls, directory: Path, outputs: object) -> StagedOutputs:
        """For each field, `directory / <name of outputs.<field>>`."""
        return cls(**{f.name: directory / getattr(outputs, f.name).name for f in fields(cls)})

    def publish(self, outputs: object) -> None:
        """Copy every file to its output path, each atomically (grids: file by file into a
        fresh directory, swapped in for the old one)."""
        for f in fields(self):
            src, dst = getattr(self, f.name), Path(getattr(outputs, f.name))
            if src.is_dir():
                replace_dir(src, dst)
            else:
                with atomic_path(dst) as tmp:
                    shutil.copyfile(src, tmp)


class Checkpoint(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that resumes the per-epoch files too and fails cleanly on a full disk.

    The per-epoch commit (training.commit) calls it last: each epoch's files and MLflow
    logs are written before the epoch is committed here, so a kill in between repeats that
    epoch rather than losing it (the run log skips steps a reopened run already has). The
    directory stays after `fit()`: `train()` removes it once every output is saved.

    Args:
        directory: the checkpoint directory (`checkpoint_dir`).
        files: per-epoch CSVs in it whose first column is `epoch`; on resume, rows of
            epochs after the checkpoint's are dropped (they are computed again).
        steps_per_epoch: batches per epoch, to read the epoch from the optimiser's step count.
    """

    def __init__(self, directory: Path, files: list[Path], steps_per_epoch: int):
        # double_checkpoint: a kill while the weights are written falls back to the
        # previous epoch's copy instead of an unreadable file.
        super().__init__(str(directory), double_checkpoint=True, delete_checkpoint=False)
        self.directory, self.files = Path(directory), files
        self.steps_per_epoch = steps_per_epoch

    def on_train_begin(self, logs: dict | None = None) -> None:
        # Keras writes its epoch file in place (truncate, then write), so a kill in between
        # leaves it empty, and reading it would crash. The epoch comes from the weights
        # (below), so a broken epoch file is dropped rather than read.
        meta = Path(self._training_metadata_path)
        try:
            json.loads(meta.read_text())
        except FileNotFoundError:
            pass
        except ValueError:
            meta.unlink()
        super().on_train_begin(logs)
        # The epoch is read from the restored weights' own step count, not Keras' epoch
        # file: a kill between writing the two would pair epoch N's weights with N - 1.
        done = int(self.model.d_optimizer.iterations.numpy()) // self.steps_per_epoch
        if not agree(self.model.distribute_strategy, done):  # several workers: same epoch?
            raise UserError(f"this worker's checkpoint is of epoch {done}, another worker's of "
                            f"another epoch; delete {self.directory} on every worker and "
                            "rerun them all (training starts over)")
        self.model._initial_epoch = done  # what BackupAndRestore itself sets
        for path in self.files:
            if path.exists():
                _keep_epochs_up_to(path, done)
        if done:
            print(f"resuming from the checkpoint of epoch {done} in {self.directory}",
                  file=sys.stderr)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        try:
            self._check_space()
            super().on_epoch_end(epoch, logs)
        except OSError as err:
            fix = "free space there" if err.errno == errno.ENOSPC else "make it writable"
            then = f"resumes after epoch {epoch}" if epoch else "starts over"
            raise UserError(f"cannot write the checkpoint of epoch {epoch + 1} in "
                            f"{self.directory}: {err.strerror or err}; {fix} and rerun "
                            f"(training {then})") from None

    def _check_space(self) -> None:
        """Raise ENOSPC before writing when the disk cannot take the checkpoint.

        h5py does not raise on a full disk: it crashes the process (segfault) while closing
        the file. So the weights' size is estimated (their bytes, plus HDF5's ~1.2 kB of
        headers per variable, doubled for safety) and compared with the free space, less
        what the previous copies that get overwritten hold.
        """
        variables = [*self.model.variables, *self.model.g_optimizer.variables,
                     *self.model.d_optimizer.variables]
        size = sum(v.numpy().nbytes for v in variables) + 2048 * len(variables) + 65536
        old = sum(p.stat().st_size for p in (Path(self._weights_path),
                                             Path(self._prev_weights_path)) if p.exists())
        self.directory.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.directory).free
        if free < 2 * size - old:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (about "
                          f"{(2 * size - old) / 1e6:.1f} MB needed, {free / 1e6:.1f} MB free)")


def _keep_epochs_up_to(path: Path, done: int) -> None:
    """Drop the rows of a per-epoch CSV whose `epoch` exceeds `done`."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [r for r in rows[1:] if int(r[0]) <= done]
    if kept != rows:
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows(kept)
