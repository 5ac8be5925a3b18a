"""Training on several devices or machines, with TensorFlow's own `tf.distribute`.

`train.distribution` picks the strategy (`make_strategy`):
- `auto`: all local GPUs when there are two or more (mirrored), else one device;
- `none`: one device, no strategy;
- `mirrored`: `tf.distribute.MirroredStrategy` over the local GPUs (over the logical CPUs
  when there is no GPU: one, unless `DCGAN_VIRTUAL_CPUS` splits the CPU, see below);
- `multi_worker`: `tf.distribute.MultiWorkerMirroredStrategy`; the cluster and this
  process's place in it come from the `TF_CONFIG` environment variable.

Every replica gets an equal slice of the global batch (`train.batch_size`); the model
averages per-example losses over the global batch and the optimisers sum the replicas'
gradients, so a step on N replicas is the single-device step (see `model.DCGAN`).

Only the chief (TF_CONFIG's `chief`, else worker 0) logs to MLflow and writes outputs;
every other worker trains in step with it and keeps its own checkpoint to resume from.

`DCGAN_VIRTUAL_CPUS=N` splits the CPU into N logical devices before TensorFlow starts, so
the mirrored path (sync batch norm, all-reduce) can be tried and tested without GPUs; it
makes nothing faster.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

import tensorflow as tf

from dcgan.core.errors import UserError
from dcgan.training.cluster import task_rank, tf_config

VIRTUAL_CPUS = "DCGAN_VIRTUAL_CPUS"


@dataclass(frozen=True)
class Role:
    """This process's part in training: `kind` is the strategy in force (none, mirrored or
    multi_worker: what `auto` resolved to); `chief` writes outputs and logs; `worker` is
    its index among the cluster's tasks (0 without a cluster), for its own checkpoint."""

    kind: str
    strategy: tf.distribute.Strategy
    chief: bool
    worker: int
    workers: int

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    def tags(self) -> dict[str, str]:
        """What the MLflow run records about the set-up."""
        return {"distribution": self.kind, "replicas": str(self.replicas),
                "workers": str(self.workers)}


def configure_virtual_cpus() -> None:
    """Split the CPU into `DCGAN_VIRTUAL_CPUS` logical devices, if set.

    Raises:
        UserError: if the value is not a whole number from 1 to 64, or TensorFlow has
            already started (its devices can then no longer change).
    """
    raw = os.environ.get(VIRTUAL_CPUS, "").strip()
    if not raw:
        return
    if not raw.isdigit() or not 1 <= int(raw) <= 64:
        raise UserError(f"{VIRTUAL_CPUS}={raw!r} is invalid: give a whole number from 1 to "
                        "64, or unset it")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(int(raw))])
    except RuntimeError:  # already initialised: allowed only if it is already so
        if len(tf.config.list_logical_devices("CPU")) != int(raw):
            raise UserError(f"{VIRTUAL_CPUS} was set after TensorFlow started; set it in the "
                            "environment of the command instead") from None


def make_strategy(kind: str) -> Role:
    """The strategy for `train.distribution` and this process's role in it.

    Call it before any other TensorFlow work in the process: a multi-worker strategy
    must be created first, and logical devices can only be set up before TF starts.

    Raises:
        UserError: if TF_CONFIG is invalid, missing for `multi_worker`, or names a cluster
            of several tasks when the distribution is not `multi_worker` (each process would
            train on its own and all of them would write the same outputs); if this task
            cannot listen on its TF_CONFIG address.
    """
    configure_virtual_cpus()
    config = tf_config()
    tasks = task_rank(config)[1] if config else 1
    if kind != "multi_worker":
        if tasks > 1:
            raise UserError(
                f"TF_CONFIG names a cluster of {tasks} tasks but train.distribution is "
                f"{kind}; set train.distribution: multi_worker, or unset TF_CONFIG")
        gpus = tf.config.list_logical_devices("GPU")
        if kind == "mirrored" or (kind == "auto" and len(gpus) > 1):
            devices = gpus or tf.config.list_logical_devices("CPU")
            strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
            return Role("mirrored", strategy, chief=True, worker=0, workers=1)
        return Role("none", tf.distribute.get_strategy(), chief=True, worker=0, workers=1)
    if config is None:
        raise UserError(
            "train.distribution is multi_worker but TF_CONFIG is not set; set it on every "
            "machine (docs/scaling.md), or use train.distribution: auto")
    rank, count = task_rank(config)
    print(f"multi_worker: task {rank} of {count} (0 is the chief); waiting until every task in "
          "TF_CONFIG has joined", file=sys.stderr, flush=True)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except tf.errors.UnknownError as err:  # TF logs the detail; the cause is the address
        if "gRPC server" not in str(err):
            raise
        address = config["cluster"][config["task"]["type"]][int(config["task"]["index"])]
        raise UserError(
            f"cannot listen on port {address.rsplit(':', 1)[1]} ({address}, this task's "
            "address in TF_CONFIG): the port is taken or the host is not this machine; free "
            "it, or give every task a TF_CONFIG with another port") from None
    return Role("multi_worker", strategy, chief=rank == 0, worker=rank, workers=count)


def agree(strategy: tf.distribute.Strategy, value: int) -> bool:
    """Whether every worker passed the same `value` (an int below 2**20); True on one.

    Raises:
        UserError: if another worker is gone (`lost_contact`).

    One all-reduce of (v, v**2): all values are equal exactly when the mean of the
    squares is the square of the mean, which float64 holds exactly at this size.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    # In a graph: eagerly, the reduce runs in a thread pool that Python may find broken at exit.
    @tf.function
    def mean(local: tf.Tensor) -> tf.Tensor:
        per_replica = strategy.run(lambda: tf.identity(local))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

    try:
        mean_value, mean_square = mean(tf.constant([value, value**2], tf.float64)).numpy()
    except tf.errors.OpError as err:
        raise lost_contact(err) from None
    return mean_value == value and mean_square == value**2


def lost_contact(err: tf.errors.OpError) -> UserError:
    """The one-line error for a collective that failed because another worker went away."""
    # TF prefixes the node, e.g. "{{function_node __wrapped__CollectiveReduceV2...}}".
    message = re.sub(r"\{\{[^}]*\}\}\s*", "", err.message or str(err))
    # Graph errors open with "Graph execution error:" and a Python stack; the cause follows.
    lines = [line.strip() for line in message.splitlines()
             if line.strip() and not line.startswith((" ", "\t", "Graph execution error",
                                                      "Detected at node", "File "))]
    first = lines[0][:300] if lines else "no detail"
    return UserError(f"training lost contact with another worker ({type(err).__name__}: "
                     f"{first}); restart the training on every worker: each resumes from "
                     "its last checkpoint")
