"""An exponential moving average (EMA) of G's weights, the generator that is delivered.

As StyleGAN2-ADA's `G_ema` (Karras et al. 2020, training_loop.py): after every G update,
each weight of the average moves towards G's by

    ema = w + beta * (ema - w),   beta = 0.5 ** (batch / half_life),

so a weight's share halves every `half_life` images. Early on the half-life is capped at
`rampup` x the images seen before the step, so the average forgets the random start
quickly (at the first step beta is 0: the average is G). Batch norm's moving statistics
are copied, not averaged (StyleGAN copies its buffers). G itself trains as without it.

Why not Keras' own `Optimizer(use_ema=True)`: its momentum is one fixed number (no
warm-up), it averages the trainable variables only (batch norm's statistics would not
match the averaged weights), and its average can be used only by writing it over G's
weights (`finalize_variable_values`), while training needs both: G to go on training, the
average to sample from every epoch.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


def ema_beta(images_before: tf.Tensor | float, batch: int, half_life: float,
             rampup: float | None) -> tf.Tensor:
    """The weight of the old average at a step that follows `images_before` images."""
    half = ops.convert_to_tensor(float(half_life))
    if rampup is not None:
        half = ops.minimum(half, ops.cast(images_before, "float32") * rampup)
    return ops.power(0.5, batch / ops.maximum(half, 1e-8))


def average_of(generator: keras.Model) -> keras.Model:
    """A copy of `generator` (same architecture, name and weights) to hold the average."""
    average = keras.models.clone_model(generator)
    average.set_weights(generator.get_weights())
    return average


def update_average(average: keras.Model, generator: keras.Model, beta: tf.Tensor) -> None:
    """Move `average`'s weights towards `generator`'s by `beta` (see above); copy the rest.

    Inside a train step on several replicas, it runs once in cross-replica context, on the
    replicas' identical copies of G (tf.distribute's `merge_call`, as Keras' optimiser
    updates its own variables): every replica's average stays the same.
    """
    pairs = [(a.value, w.value, True) for a, w in zip(average.trainable_weights,
                                                      generator.trainable_weights, strict=True)]
    pairs += [(a.value, w.value, False) for a, w in zip(average.non_trainable_weights,
                                                        generator.non_trainable_weights,
                                                        strict=True)]

    def lerp(avg: tf.Variable, weight: tf.Tensor, b: tf.Tensor) -> tf.Operation:
        return avg.assign(weight + ops.cast(b, weight.dtype) * (avg - weight))

    def copy(avg: tf.Variable, weight: tf.Tensor) -> tf.Operation:
        return avg.assign(weight)

    def cross_replica(strategy: tf.distribute.Strategy, b: tf.Tensor) -> None:
        for avg, weight, averaged in pairs:
            if averaged:
                strategy.extended.update(avg, lerp, args=(weight, b), group=False)
            else:
                strategy.extended.update(avg, copy, args=(weight,), group=False)

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(beta,))
