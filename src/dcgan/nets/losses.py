"""The adversarial losses, one registry: `train.loss` names an entry of `LOSSES`, a pair of
D's loss and G's loss that every update mode (nets.updates) calls once each.

Each function takes logits of shape (B, 1) and `mean`, the model's reduction of per-example
values (B,) to the mean over the global batch (across replicas under tf.distribute).
`collapse_d_loss` is the D loss, in this loss's own units, under which D rejects every
sample with near certainty; the collapse warning (training.guards) reads it.

To add a loss, add its two functions and an entry here, and a test in tests/test_losses.py;
the params validator, the CLI and the docs read the names from `LOSSES`.

Keras is imported inside the functions, not at the top: params validation reads this
registry in every stage, fetch included, and importing Keras costs seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow as tf

    Mean = Callable[[tf.Tensor], tf.Tensor]


@dataclass(frozen=True)
class Loss:
    """A named pair of losses, and where D's counts as collapse."""

    description: str
    discriminator: Callable[[tf.Tensor, tf.Tensor, Mean], tf.Tensor]  # (real, fake, mean)
    generator: Callable[[tf.Tensor, Mean], tf.Tensor]  # (fake, mean)
    collapse_d_loss: float


def _cross_entropy(target: float, logits: tf.Tensor, mean: Mean) -> tf.Tensor:
    """Sigmoid cross-entropy of `logits` against the label `target` (0 or 1), in float32."""
    import keras

    labels = keras.ops.full_like(logits, target, dtype="float32")  # (B, 1)
    per_example = keras.losses.BinaryCrossentropy(from_logits=True, reduction="none")(
        labels, logits)  # (B,)
    return mean(per_example)


def _non_saturating_d(real: tf.Tensor, fake: tf.Tensor, mean: Mean) -> tf.Tensor:
    # Real images towards 1, generated ones towards 0.
    return _cross_entropy(1.0, real, mean) + _cross_entropy(0.0, fake, mean)


def _non_saturating_g(fake: tf.Tensor, mean: Mean) -> tf.Tensor:
    # -log D(G(z)) (Goodfellow et al. 2014, section 3): strong gradients while D wins.
    return _cross_entropy(1.0, fake, mean)


def _hinge_d(real: tf.Tensor, fake: tf.Tensor, mean: Mean) -> tf.Tensor:
    from keras import ops

    real, fake = ops.cast(real, "float32"), ops.cast(fake, "float32")
    return (mean(ops.mean(ops.relu(1.0 - real), axis=-1))
            + mean(ops.mean(ops.relu(1.0 + fake), axis=-1)))


def _hinge_g(fake: tf.Tensor, mean: Mean) -> tf.Tensor:
    from keras import ops

    return -mean(ops.mean(ops.cast(fake, "float32"), axis=-1))


LOSSES = {
    "non_saturating": Loss(
        "D: cross-entropy, real towards 1 and generated towards 0; G: -log D(G(z)), the "
        "paper's (Goodfellow et al. 2014)",
        _non_saturating_d, _non_saturating_g,
        # 0.05 nats over the two terms: D gives real and generated images the right
        # label with probability ~0.975 on average.
        collapse_d_loss=0.05),
    "hinge": Loss(
        "D: max(0, 1 - D(x)) + max(0, 1 + D(G(z))); G: -D(G(z)) (Lim & Ye 2017, as SNGAN "
        "and BigGAN use it)",
        _hinge_d, _hinge_g,
        # 0 once every logit clears its margin of 1: D separates the two with room to spare.
        collapse_d_loss=0.05),
}
