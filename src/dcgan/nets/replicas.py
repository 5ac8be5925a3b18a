"""Inside a train step: which replica this is, and sums or means over the replicas.

The DCGAN's `train_step` (nets.model) calls these; on one device they are the identity.
The strategies themselves are made in training.distribution.
"""

from __future__ import annotations

import tensorflow as tf


def across_replicas(value: tf.Tensor, op: str) -> tf.Tensor:
    """Inside a train step: the `op` ("sum" or "mean") of `value` over the replicas; the
    value itself on one replica."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return value
    reduce = tf.distribute.ReduceOp.SUM if op == "sum" else tf.distribute.ReduceOp.MEAN
    return ctx.all_reduce(reduce, value)


def replica_slice() -> tuple[int | tf.Tensor, int]:
    """Inside a train step: (this replica's index, the number of replicas)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
        return 0, 1
    return ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync


def step_logs(logs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """A train step's scalar logs in the shape Keras can reduce over workers.

    Keras 3 reduces a multi-worker step's logs with `strategy.reduce("MEAN", v, axis=0)`,
    which fails on scalars ("Invalid reduction dimension 0 for input with 0 dimensions",
    tensorflow/tensorflow#72388); as vectors of one they reduce to the scalar mean.
    """
    if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return {name: tf.reshape(value, (1,)) for name, value in logs.items()}
    return logs
