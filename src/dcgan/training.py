"""Training: seeds, the input pipeline, the strategy, callbacks and `fit()`, tracked in MLflow.

The train stage calls `train()`. Per epoch it writes a fixed-noise sample grid, a row
of history.csv (G and D loss, D(x), D(G(z))) and a checkpoint from which an interrupted
run resumes at the next epoch (see checkpoints.py); the resumed run's weights are bitwise
those of an uninterrupted one. These files live in the checkpoint directory until
training succeeds, then become the stage's outputs. Throughput and wall time go to
MLflow only, so the DVC outputs depend on params and data alone.
Every `train.eval_every` epochs it adds the Fréchet distance of a fixed sample
to quality.csv and the MLflow run, so users see when training peaks or collapses.
At the end it writes a GIF of the grids and saves G and D as `.keras` files.
The callbacks are in callbacks.py; the devices and workers it trains on in distribution.py.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from dcgan import tracking
from dcgan.batches import SeededBatches
from dcgan.callbacks import (
    GRID_ROWS,
    EpochGrid,
    EpochLogger,
    FixedSampleFD,
    HistoryCSV,
    QualityMonitor,
    Throughput,
)
from dcgan.checkpoints import Checkpoint, Progress, checkpoint_dir, save_run_id, saved_run_id
from dcgan.classifier import feature_extractor
from dcgan.config import Params, TrainConfig, flatten
from dcgan.data import file_md5
from dcgan.distribution import Role, agree, lost_contact, make_strategy
from dcgan.errors import UserError
from dcgan.guards import CollapseWatch, DivergenceGuard
from dcgan.imagestore import ImageArray, dataset_md5, open_dataset
from dcgan.model import build_gan, load_model, save_model
from dcgan.sampling import make_gif
from dcgan.seeding import seed_everything


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


def _callbacks(cfg: TrainConfig, ckpt: Path, progress: Progress, batches: SeededBatches,
               steps: int, quality: QualityMonitor | None) -> list[keras.callbacks.Callback]:
    noise = np.random.default_rng(cfg.seed).standard_normal((GRID_ROWS**2, cfg.latent_dim))
    # Order matters: EpochGrid saves the picture EpochLogger uploads, the divergence
    # guard vets the weights before anything records the epoch, and Checkpoint comes
    # last, committing an epoch only once all its files and logs are written.
    return [
        batches,
        Throughput(steps * cfg.batch_size),
        EpochGrid(noise.astype(np.float32), progress.grids),
        DivergenceGuard(cfg.adam[0], ckpt),
        CollapseWatch(cfg.collapse_patience, cfg.collapse_d_loss),
        HistoryCSV(progress.history),
        *([quality] if quality else []),
        EpochLogger(progress.grids),
        Checkpoint(ckpt, [progress.history, progress.quality], steps),
    ]


def _quality_monitor(cfg: TrainConfig, classifier_path: Path, real_test: ImageArray,
                     path: Path) -> QualityMonitor | None:
    """The quality-over-training callback, or None (and a header-only CSV) when off."""
    if cfg.eval_every == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            csv.writer(f).writerow(["epoch", "frechet_distance"])
        return None
    classifier = load_model(classifier_path, remedy="run `dvc repro classifier` first")
    if tuple(classifier.input_shape[1:]) != real_test.shape[1:]:
        raise UserError(
            f"{classifier_path} expects images of shape {tuple(classifier.input_shape[1:])}, "
            f"the data has {real_test.shape[1:]}; rerun the classifier stage"
        )
    score = FixedSampleFD(feature_extractor(classifier), real_test, cfg.latent_dim, cfg.seed)
    return QualityMonitor(score, cfg.eval_every, path)


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


def _fit(gan: keras.Model, role: Role, dataset: tf.data.Dataset, epochs: int,
         callbacks: list[keras.callbacks.Callback]) -> None:
    """`fit()`, with Keras' progress bar on a terminal and one line per epoch in logs; with
    several workers, a collective that fails because one is gone becomes one error line."""
    verbose = 1 if sys.stdout.isatty() else 2
    try:
        gan.fit(dataset, epochs=epochs, callbacks=callbacks, shuffle=False, verbose=verbose)
    except tf.errors.OpError as err:
        if role.kind != "multi_worker":
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


def _train_worker(gan: keras.Model, cfg: TrainConfig, batches: SeededBatches, ckpt: Path,
                  steps: int, role: Role) -> dict:
    """A non-chief worker's part: the same steps in lockstep with the chief, checkpointed
    to resume, and nothing else (no outputs, no MLflow)."""
    _fit(gan, role, batches.dataset, cfg.epochs,
         [batches, DivergenceGuard(cfg.adam[0], ckpt), Checkpoint(ckpt, [], steps)])
    _finish_together(role)
    shutil.rmtree(ckpt, ignore_errors=True)
    return {"worker": role.worker, "weights_sha256": weights_sha256(gan)}


def train(params: Params, data_file: Path, classifier_path: Path, out: TrainOutputs) -> dict:
    """Train the DCGAN on the processed data and write every train output.

    The per-epoch files are written in the checkpoint directory and copied to `out` only
    when everything has succeeded: a failed or killed run changes no output.

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
    cfg = params.train
    role = make_strategy(cfg.distribution)  # before any TF work (multi-worker needs it)
    if role.chief:
        tracking.check_store()  # an unreachable tracking server fails now, not after training
    data = open_dataset(data_file)
    data_md5 = dataset_md5(data_file)
    _replica_batch(cfg.batch_size, role)
    # 1. Seeds first: the initial weights and the noise draw from them.
    policy = seed_everything(cfg.seed, cfg.precision)  # `auto` resolved for this machine
    batches = SeededBatches(data.train_x, cfg.batch_size, cfg.seed)
    gan = build_gan(cfg, data.image_shape, role.strategy)
    ckpt = checkpoint_dir(out.checkpoints, cfg, data_md5, role.worker)
    steps = len(data.train_x) // cfg.batch_size
    _same_everywhere(role, ckpt)
    if not role.chief:
        return _train_worker(gan, cfg, batches, ckpt, steps, role)
    progress = Progress.inside(ckpt, out)
    quality = _quality_monitor(cfg, classifier_path, data.test_x, progress.quality)
    callbacks = _callbacks(cfg, ckpt, progress, batches, steps, quality)
    tags = {"dataset": params.fetch.dataset, "data_md5": data_md5, "arch": cfg.arch,
            "precision": policy}
    default_name = f"{cfg.arch}-{params.fetch.dataset}-{params.preprocess.image_size}px"
    # 2. Train inside the MLflow run; it is marked FAILED if anything raises. A training
    # resumed from a checkpoint continues the run it started. The run's params are those
    # that shape the model; generate and evaluate, which may rerun on the same model with
    # new params, record theirs as tags.
    logged = flatten(params, ("fetch", "preprocess", "train"))
    with tracking.start_run(logged, {**tags, **role.tags()}, default_name,
                            resume=saved_run_id(ckpt)) as run_id:
        save_run_id(ckpt, run_id)
        start = time.perf_counter()
        _fit(gan, role, batches.dataset, cfg.epochs, callbacks)
        tracking.log_metrics({"train_seconds": time.perf_counter() - start})
        # 3. The GIF of the epoch grids and the two networks, beside the rest; logged.
        make_gif(sorted(progress.grids.glob("epoch_*.png")), progress.gif)
        save_model(gan.generator, progress.generator)
        save_model(gan.discriminator, progress.discriminator)
        tags["generator_md5"] = file_md5(progress.generator)
        tracking.log_artifacts([progress.history, progress.quality, progress.gif,
                                progress.discriminator], "train")
        tracking.log_generator(gan.generator, tags)
        # 4. Publish: the outputs, then the file by which generate and evaluate find this
        # run, the generator's hash. Then the checkpoint has served.
        progress.publish(out)
        tracking.write_run_file(out.run_file, tags["generator_md5"])
    shutil.rmtree(ckpt)
    _finish_together(role)
    with open(out.history, newline="") as f:  # the last epoch, also if fit() resumed there
        last = list(csv.DictReader(f))[-1]
    return {"run_id": run_id, **{k: float(v) for k, v in last.items() if k != "epoch"},
            "weights_sha256": weights_sha256(gan)}
