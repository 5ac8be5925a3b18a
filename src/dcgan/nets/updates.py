"""The update modes, one registry: `train.update` names an entry of `UPDATES`, the order in
which one training step updates D and G. `DCGAN.train_step` (nets.model) calls the entry's
`step(gan, real)`, which returns (d_loss, g_loss, real_logits, fake_logits).

Every mode computes the losses with the pair `train.loss` names (nets.losses), once each;
D's gradient is of its loss plus the model's `d_penalty` (LeCam, when `train.lecam` > 0).
To add a mode, add its function and an entry here, and a test in tests/test_model.py.

TensorFlow is imported inside the functions, not at the top: params validation reads this
registry in every stage, fetch included, and importing TensorFlow costs seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dcgan.nets.augment import G_STEP

if TYPE_CHECKING:
    import tensorflow as tf

    from dcgan.nets.model import DCGAN

    Step = Callable[[DCGAN, tf.Tensor], tuple[tf.Tensor, ...]]


@dataclass(frozen=True)
class Update:
    """A named order of D's and G's updates within one step."""

    description: str
    step: Step


def _alternating(gan: DCGAN, real: tf.Tensor) -> tuple[tf.Tensor, ...]:
    import tensorflow as tf
    from keras import ops

    # 1. Update D: its loss on real images and on G's samples.
    z = gan.replica_noise(ops.shape(real)[0])  # (B, latent_dim)
    with tf.GradientTape() as tape:
        fake = gan.generator(z, training=True)  # (B, H, W, C)
        real_logits, fake_logits = gan.discriminate(real, fake)  # (B, 1) each
        d_loss = gan.gan_loss.discriminator(real_logits, fake_logits, gan.global_mean)
        d_objective = d_loss + gan.d_penalty(real_logits, fake_logits)
    gan.update_weights(gan.d_optimizer,
                       tape.gradient(d_objective, gan.discriminator.trainable_variables),
                       gan.discriminator)

    # 2. Update G with fresh noise against the updated D.
    z = gan.replica_noise(ops.shape(real)[0])
    with tf.GradientTape() as tape:
        fake = gan.augmented(gan.generator(z, training=True), G_STEP)
        g_logits = gan.discriminator(fake, training=True)
        g_loss = gan.gan_loss.generator(g_logits, gan.global_mean)
    gan.update_weights(gan.g_optimizer,
                       tape.gradient(g_loss, gan.generator.trainable_variables), gan.generator)
    return d_loss, g_loss, real_logits, fake_logits


def _simultaneous(gan: DCGAN, real: tf.Tensor) -> tuple[tf.Tensor, ...]:
    import tensorflow as tf
    from keras import ops

    # One G forward pass serves both updates, each taken at the current weights
    # (the tutorial's step): G's costs about as much as the rest of the step together.
    z = gan.replica_noise(ops.shape(real)[0])
    with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
        fake = gan.generator(z, training=True)
        real_logits, fake_logits = gan.discriminate(real, fake)
        d_loss = gan.gan_loss.discriminator(real_logits, fake_logits, gan.global_mean)
        d_objective = d_loss + gan.d_penalty(real_logits, fake_logits)
        g_loss = gan.gan_loss.generator(fake_logits, gan.global_mean)
    d_grads = d_tape.gradient(d_objective, gan.discriminator.trainable_variables)
    g_grads = g_tape.gradient(g_loss, gan.generator.trainable_variables)
    gan.update_weights(gan.d_optimizer, d_grads, gan.discriminator)
    gan.update_weights(gan.g_optimizer, g_grads, gan.generator)
    return d_loss, g_loss, real_logits, fake_logits


def _reuse_fake(gan: DCGAN, real: tf.Tensor) -> tuple[tf.Tensor, ...]:
    import tensorflow as tf
    from keras import ops

    # PyTorch's DCGAN step (pytorch/examples dcgan/main.py): one G forward pass. D steps
    # on real images and on the fake as a constant (`fake.detach()`); then G's loss on
    # that same fake through the updated D, back through the recorded G pass.
    z = gan.replica_noise(ops.shape(real)[0])
    with tf.GradientTape() as g_tape:
        fake = gan.generator(z, training=True)
        with g_tape.stop_recording():
            with tf.GradientTape() as d_tape:
                real_logits, fake_logits = gan.discriminate(real, tf.stop_gradient(fake))
                d_loss = gan.gan_loss.discriminator(real_logits, fake_logits, gan.global_mean)
                d_objective = d_loss + gan.d_penalty(real_logits, fake_logits)
            gan.update_weights(gan.d_optimizer,
                               d_tape.gradient(d_objective,
                                               gan.discriminator.trainable_variables),
                               gan.discriminator)
        g_logits = gan.discriminator(gan.augmented(fake, G_STEP), training=True)
        g_loss = gan.gan_loss.generator(g_logits, gan.global_mean)
    gan.update_weights(gan.g_optimizer,
                       g_tape.gradient(g_loss, gan.generator.trainable_variables), gan.generator)
    return d_loss, g_loss, real_logits, fake_logits


UPDATES = {
    "alternating": Update(
        "D's step, then G's on fresh noise (two G forward passes)", _alternating),
    "simultaneous": Update(
        "both from one G forward pass, as the TF tutorial", _simultaneous),
    "reuse_fake": Update(
        "D's step, then G's on the same fake through the updated D (one G forward pass, as "
        "PyTorch's DCGAN example)", _reuse_fake),
}
