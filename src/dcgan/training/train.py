"""Training: the train stage's loop, and the phases around `fit()`.

One epoch, whole (each part's module on the right):

    for epoch in range(epochs):                 # Keras fit(), in `_fit` below
        for real in batches:                    # seeded, from disk: processed.batches
            DCGAN.train_step(real)              # nets.model
                UPDATES[train.update].step      # D's and G's updates: nets.updates
                    LOSSES[train.loss]          # their loss pair: nets.losses
                update_average                  # G's moving average: nets.ema
            DivergenceGuard                     # a non-finite loss stops: training.guards
        EpochCommit.on_epoch_end                # in this order: training.commit
            grid, guard, collapse, history      # samples of fixed noise; health; losses
            FixedSampleFD, Selection            # score, keep-best, early stop: training.selection
            RunLog                              # the same numbers to MLflow: tracking.runlog
            Checkpoint                          # the epoch commits last: training.checkpoints

`train()` runs it in phases: `_prepare` (strategy, data, seeds, model, checkpoint
directory), `_record` (what the chief records each epoch), `_fit` (with the epoch bar,
training.epoch_bar, inside the MLflow run) and `_publish` (the GIF, G and D, every output
copied from the checkpoint directory, the run file last). The per-epoch files live in the
checkpoint directory until training succeeds, so a failed or killed run changes no output;
a resumed run's weights are bitwise those of an uninterrupted one. Throughput and wall time
go to MLflow only, so the DVC outputs depend on params and data alone. The devices and
workers it trains on are in training.distribution.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from dcgan.core.config import Params, TrainConfig, flatten
from dcgan.core.errors import UserError
from dcgan.core.outputs import file_md5, rounded, write_json
from dcgan.core.seeding import seed_everything, set_precision
from dcgan.evaluation.classifier import feature_extractor
from dcgan.evaluation.metrics import protocol
from dcgan.nets.losses import LOSSES
from dcgan.nets.model import build_gan
from dcgan.nets.serialisation import load_model, save_model
from dcgan.processed.batches import SeededBatches
from dcgan.processed.imagestore import Dataset, dataset_md5, open_dataset
from dcgan.sampling.images import make_gif
from dcgan.tracking.runfile import RunRecord, default_run_name, kept_tag, write_run_file
from dcgan.tracking.runlog import RunLog
from dcgan.tracking.store import check_store
from dcgan.training.checkpoints import (
    Checkpoint,
    StagedOutputs,
    checkpoint_dir,
    save_run_id,
    saved_run_id,
)
from dcgan.training.commit import GRID_ROWS, QUALITY_COLUMNS, EpochCommit, EpochRecord
from dcgan.training.distribution import Role, agree, lost_contact, make_strategy
from dcgan.training.epoch_bar import EpochBar
from dcgan.training.guards import CollapseWatch, DivergenceGuard
from dcgan.training.selection import BEST, FixedSampleFD, Selection, stopped_at


def _path(help: str) -> Path:  # noqa: A002 (the argparse word)
    return field(metadata={"help": help})


@dataclass(frozen=True)
class TrainOutputs:
    """Where train writes. Each field is an option of the train stage (`--run-file`), which
    dvc.yaml passes from its `paths`: every path is written once."""

    generator: Path = _path("the generator delivered (.keras): G's moving average where kept, "
                            "of the best epoch with train.keep_best, else of the last")
    generator_last: Path = _path("the same generator of the last epoch (.keras)")
    discriminator: Path = _path("D as .keras")
    history: Path = _path("per-epoch losses and D outputs (CSV)")
    quality: Path = _path("Fréchet distance over training (CSV)")
    grids: Path = _path("directory of the per-epoch sample grids")
    gif: Path = _path("the grids as an animation")
    selection: Path = _path("which epoch's generator was delivered, its score, and why "
                            "training stopped early (JSON)")
    run_file: Path = _path("the generator's md5, params and tags, for the sync step")
    checkpoints: Path = _path("directory of the checkpoints to resume from")


@dataclass
class Setup:
    """What the phases share."""

    cfg: TrainConfig
    role: Role
    data: Dataset
    data_md5: str
    policy: str  # the precision, `auto` resolved for this machine
    batches: SeededBatches
    gan: keras.Model
    ckpt: Path  # the checkpoint directory
    steps: int  # per epoch


def _prepare(params: Params, data_file: Path, out: TrainOutputs) -> Setup:
    """Phase 1: the strategy, the data, the seeds, the model and the checkpoint directory."""
    cfg = params.train
    role = make_strategy(cfg.distribution)  # before any TF work (multi-worker needs it)
    if role.chief:
        check_store()  # an unreachable tracking server fails now, not after training
    data = open_dataset(data_file, splits=("train", "val"))  # never the test images
    data_md5 = dataset_md5(data_file)
    _replica_batch(cfg.batch_size, role)
    if cfg.early_stop_patience and role.kind == "multi_worker":
        raise UserError("train.early_stop_patience works on one machine only (the workers "
                        "would have to agree on each stop); set it to 0 under multi_worker")
    # Seeds first: the initial weights and the noise draw from them.
    seed_everything(cfg.seed)
    policy = set_precision(cfg.precision)
    batches = SeededBatches(data.train_x, cfg.batch_size, cfg.seed)
    gan = build_gan(cfg, data.image_shape, role.strategy)
    ckpt = checkpoint_dir(out.checkpoints, cfg, data_md5, role.worker)
    setup = Setup(cfg, role, data, data_md5, policy, batches, gan, ckpt, batches.steps)
    _same_everywhere(role, ckpt)
    return setup


def _record(setup: Setup, classifier_path: Path, progress: StagedOutputs,
            run: RunLog) -> EpochRecord:
    """Phase 2: what the chief records of each epoch. With `train.eval_every` 0 there is no
    quality score, and quality.csv is a header alone."""
    cfg = setup.cfg
    noise = np.random.default_rng(cfg.seed).standard_normal((GRID_ROWS**2, cfg.latent_dim))
    record = EpochRecord(progress, run, noise.astype(np.float32),
                         CollapseWatch(cfg.collapse_patience, LOSSES[cfg.loss].collapse_d_loss),
                         setup.steps * cfg.batch_size,
                         Selection(cfg.keep_best, cfg.early_stop_patience),
                         eval_every=cfg.eval_every)
    if cfg.eval_every == 0:
        progress.quality.parent.mkdir(parents=True, exist_ok=True)
        with open(progress.quality, "w", newline="") as f:
            csv.writer(f).writerow(QUALITY_COLUMNS)
        return record
    classifier = load_model(classifier_path, remedy="run `dvc repro classifier` first")
    val_x = setup.data.val_x
    if tuple(classifier.input_shape[1:]) != val_x.shape[1:]:
        raise UserError(
            f"{classifier_path} expects images of shape {tuple(classifier.input_shape[1:])}, "
            f"the data has {val_x.shape[1:]}; rerun the classifier stage"
        )
    record.quality = FixedSampleFD(feature_extractor(classifier), val_x, cfg.latent_dim,
                                   cfg.seed)
    record.protocol = protocol(classifier_path, record.quality.n, cfg.seed, "validation")
    return record


def _callbacks(setup: Setup,
               record: EpochRecord | None = None) -> list[keras.callbacks.Callback]:
    """The input pipeline's epoch seeding and the per-epoch commit (training.commit)."""
    files = [record.progress.history, record.progress.quality] if record else []
    checkpoint = Checkpoint(setup.ckpt, files, setup.steps)
    rates = (setup.cfg.optimiser("g")[0], setup.cfg.optimiser("d")[0])
    guard = DivergenceGuard(rates, setup.ckpt)
    return [setup.batches, EpochCommit(checkpoint, guard, record)]


def _publish(setup: Setup, record: EpochRecord, out: TrainOutputs, run: RunLog,
             params: dict, tags: dict[str, str]) -> None:
    """Phase 4: the GIF, the generators (delivered and last), D and selection.json beside
    the per-epoch files, all copied to the outputs, then the run file, by which the sync
    step finds this run."""
    progress, gan = record.progress, setup.gan
    make_gif(sorted(progress.grids.glob("epoch_*.png")), progress.gif)
    best = setup.ckpt / BEST
    save_model(gan.sampler, progress.generator_last)
    if setup.cfg.keep_best and best.exists():
        shutil.copyfile(best, progress.generator)
    else:
        shutil.copyfile(progress.generator_last, progress.generator)
    save_model(gan.discriminator, progress.discriminator)
    done = int(gan.g_optimizer.iterations.numpy()) // setup.steps
    kind = "ema" if gan.average is not None else "raw"
    selection = {**rounded(record.selection.summary(kind, done)), "protocol": record.protocol}
    write_json(selection, progress.selection)
    run.metrics({f"kept.{k}": selection[k] for k in ("epoch", "frechet_distance")
                 if selection[k] is not None})
    run.tags(kept_tag(selection))
    md5 = file_md5(progress.generator)
    progress.publish(out)
    run.tags({"generator_md5": md5})
    write_run_file(out.run_file, RunRecord(md5, params, tags))


def weights_sha256(gan: keras.Model) -> str:
    """A digest of G's and D's weights, to check that workers hold the same model."""
    digest = hashlib.sha256()
    for weight in [*gan.generator.weights, *gan.discriminator.weights]:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def _replica_batch(batch_size: int, role: Role) -> None:
    """Raise a UserError unless the global batch splits evenly over the replicas."""
    if batch_size % role.replicas:
        raise UserError(f"train.batch_size = {batch_size} does not split evenly over "
                        f"{role.replicas} replicas; use a multiple of {role.replicas}")


def _fit(setup: Setup, epochs: int, callbacks: list[keras.callbacks.Callback],
         selection: Selection | None = None) -> None:
    """`fit()`, with one progress bar over all its steps on a terminal and a line per epoch
    in logs (training.epoch_bar); with several workers, a collective that fails because one
    is gone becomes one error line."""
    try:
        with EpochBar(epochs, setup.steps, selection) as progress:
            setup.gan.fit(setup.batches.dataset, epochs=epochs, steps_per_epoch=setup.steps,
                          callbacks=[*callbacks, progress], shuffle=False, verbose=0)
    except tf.errors.OpError as err:
        if setup.role.kind != "multi_worker":
            raise
        raise lost_contact(err) from None


def _same_everywhere(role: Role, ckpt: Path) -> None:
    """Raise a UserError unless every worker trains the same params on the same data (the
    checkpoint directory's name is a hash of both); otherwise they would wait on each other
    for ever or train apart."""
    if not agree(role.strategy, int(ckpt.name[:5], 16)):
        raise UserError("the workers' train params or data differ; give every worker the "
                        "same params.yaml and data (git pull, dvc pull) and restart them all")


def _finish_together(role: Role) -> None:
    """With several workers, wait until all have finished: the chief has then written its
    outputs, and no worker leaves while another still needs it (TF would log it as a
    crash)."""
    agree(role.strategy, 1)


def _train_worker(setup: Setup) -> dict:
    """A non-chief worker's part: the same steps in lockstep with the chief, checkpointed
    to resume, and nothing else (no outputs, no MLflow)."""
    _fit(setup, setup.cfg.epochs, _callbacks(setup))
    _finish_together(setup.role)
    shutil.rmtree(setup.ckpt, ignore_errors=True)
    return {"worker": setup.role.worker, "weights_sha256": weights_sha256(setup.gan)}


def train(params: Params, data_file: Path, classifier_path: Path, out: TrainOutputs) -> dict:
    """Train the DCGAN on the processed data and write every train output.

    Args:
        params: the whole validated params; fetch, preprocess and train are logged.
        data_file: the preprocess stage's dataset directory.
        classifier_path: the classifier stage's model, whose features the
            quality-over-training Fréchet distance uses (unread if train.eval_every is 0).
        out: output paths.

    Under `train.distribution: multi_worker` every worker of the cluster calls this; only
    the chief writes `out` and logs, the others return once training is done.

    Returns:
        The last epoch's logs, the MLflow run id and a digest of the weights (a non-chief
        worker: its index and the digest).

    Raises:
        UserError: on data that the config cannot train on, on divergence, on a full disk,
            on a distribution that cannot run here (see distribution.make_strategy).
    """
    setup = _prepare(params, data_file, out)
    if not setup.role.chief:
        return _train_worker(setup)
    cfg, progress = setup.cfg, StagedOutputs.inside(setup.ckpt, out)
    stop = stopped_at(setup.ckpt)  # an interrupted run that had decided to stop early
    tags = {"dataset": params.fetch.dataset, "data_md5": setup.data_md5, "arch": cfg.arch,
            "precision": setup.policy, **setup.role.tags()}
    # The run's params are those that shape the model; the sync step records the later
    # stages' params, which may change on the same model, as tags.
    logged = flatten(params, ("fetch", "preprocess", "train"))
    with RunLog.open(logged, tags, default_run_name(logged),
                     resume=saved_run_id(setup.ckpt)) as run:
        save_run_id(setup.ckpt, run.run_id)
        record = _record(setup, classifier_path, progress, run)
        start = time.perf_counter()
        _fit(setup, stop[0] if stop else cfg.epochs, _callbacks(setup, record), record.selection)
        run.metrics({"train_seconds": time.perf_counter() - start})
        if stop:
            record.selection.stopped = stop[1]
        _publish(setup, record, out, run, logged, tags)
    shutil.rmtree(setup.ckpt)
    _finish_together(setup.role)
    with open(out.history, newline="") as f:  # the last epoch, also if fit() resumed there
        last = list(csv.DictReader(f))[-1]
    return {"run_id": run.run_id, **{k: float(v) for k, v in last.items() if k != "epoch"},
            "weights_sha256": weights_sha256(setup.gan)}
