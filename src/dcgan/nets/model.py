"""The DCGAN: a generator and a discriminator trained against each other by `fit()`.

`train_step` runs the update order `train.update` names (nets.updates), which computes the
loss pair `train.loss` names (nets.losses); then G's moving average follows and the
trackers record the step. The networks themselves are in nets.architectures.
Use: `gan = build_gan(params.train, image_shape)`, then `gan.fit(dataset)`.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, ops

from dcgan.core.config import TrainConfig
from dcgan.nets.architectures import Discriminator, Generator
from dcgan.nets.augment import FAKE, REAL, diff_augment, parse_policy, step_key
from dcgan.nets.ema import average_of, ema_beta, update_average
from dcgan.nets.losses import LOSSES
from dcgan.nets.replicas import across_replicas, replica_slice, step_logs
from dcgan.nets.updates import UPDATES

LECAM_DECAY = 0.99  # of LeCam's moving averages, as Tseng et al.'s code


class DCGAN(keras.Model):
    """A generator and a discriminator trained against each other by `fit()`.

    Tracks per step: `d_loss`, `g_loss`, and `d_real` / `d_fake`, the mean of
    D(x) and D(G(z)) as probabilities (0.5 both when D cannot tell).

    With `average` (a copy of G, `nets.ema.average_of`), every step after G's update also
    moves it towards G: `ema` is (half-life in images, rampup), `batch` the global batch.
    `sampler` is the generator to draw samples from: the average if kept, else G.
    `augment` names DiffAugment's augmentations (nets.augment) of every image D sees.
    `lecam` (> 0) adds LeCam's regulariser to D's loss with that weight (`d_penalty`).
    """

    def __init__(self, generator: keras.Model, discriminator: keras.Model, latent_dim: int,
                 seed: int, update: str = "alternating", loss: str = "non_saturating",
                 average: keras.Model | None = None,
                 ema: tuple[float, float | None] = (0, None), batch: int = 0,
                 augment: tuple[str, ...] = (), lecam: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.average, self.ema_schedule, self.batch = average, ema, batch
        self.latent_dim = latent_dim
        self.seed, self.augment = seed, augment
        self.update = update  # a key of nets.updates.UPDATES
        self.gan_loss = LOSSES[loss]  # D's and G's loss (nets.losses)
        self.d_has_batchnorm = any(isinstance(layer, layers.BatchNormalization)
                                   for layer in discriminator.layers)
        # All noise comes from here, so a seed fixes every z the model draws.
        self.noise_seed = keras.random.SeedGenerator(seed)
        # Keras saves weights but not the RNG states kept beside them (this noise seed,
        # Dropout's). Tracked as this model's own variables, they go into checkpoints,
        # so a resumed run continues the random streams instead of replaying epoch 1's.
        weights = {id(w) for w in self.weights}
        for state in [v for v in self.variables if id(v) not in weights]:
            self._track_variable(state)
        self.lecam = lecam
        if lecam:  # D's mean logit on real and on generated images, averaged over steps
            self.lecam_ema = self.add_weight(shape=(2,), initializer="zeros", trainable=False,
                                             name="lecam_ema", aggregation="only_first_replica")
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.d_real_tracker = keras.metrics.Mean(name="d_real")
        self.d_fake_tracker = keras.metrics.Mean(name="d_fake")

    def compile(self, g_optimizer: keras.optimizers.Optimizer,
                d_optimizer: keras.optimizers.Optimizer, **kwargs) -> None:
        # optimizer=None: Keras would otherwise add an unused RMSprop to every checkpoint.
        super().compile(optimizer=None, **kwargs)
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer
        # Build the slots now so a checkpoint restores them before the first step.
        g_optimizer.build(self.generator.trainable_variables)
        d_optimizer.build(self.discriminator.trainable_variables)

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        # Listed here so Keras resets them at the start of every epoch.
        return [self.d_loss_tracker, self.g_loss_tracker, self.d_real_tracker, self.d_fake_tracker]

    def call(self, z: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.generator(z, training=training)

    @property
    def sampler(self) -> keras.Model:
        """The generator samples come from: G's moving average where kept, else G."""
        return self.average if self.average is not None else self.generator

    def sample_noise(self, n: int | tf.Tensor) -> tf.Tensor:
        return keras.random.normal((n, self.latent_dim), seed=self.noise_seed)

    def replica_noise(self, batch: int | tf.Tensor) -> tf.Tensor:
        """This replica's `batch` rows of one noise draw for the global batch: together,
        the replicas use exactly the noise one device would draw (the seed state is the
        same on all of them, so each drawing its own would repeat one slice N times)."""
        replica, replicas = replica_slice()
        return self.sample_noise(batch * replicas)[replica * batch:(replica + 1) * batch]

    @staticmethod
    def global_mean(per_example: tf.Tensor) -> tf.Tensor:
        """Per-example values (B,) summed over this replica's examples, divided by the global
        batch, as tf.distribute expects: the replicas' gradients are summed, so their sum is
        the gradient of the mean over the global batch (on one device, the plain mean)."""
        replicas = replica_slice()[1]
        return ops.divide_no_nan(ops.sum(per_example),
                                 ops.cast(ops.shape(per_example)[0] * replicas, "float32"))

    def discriminate(self, real: tf.Tensor, fake: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """D's logits on real and on generated images, (B, 1) each.

        A D with batch norm sees each kind in its own batch (the paper's practice: mixed
        batches would let BN's statistics tell them apart). A D without it gets one call
        on both, concatenated: one larger batch runs faster than two.
        """
        real, fake = self.augmented(real, REAL), self.augmented(fake, FAKE)
        if self.d_has_batchnorm:
            return (self.discriminator(real, training=True),
                    self.discriminator(fake, training=True))
        logits = self.discriminator(ops.concatenate([real, ops.cast(fake, real.dtype)]),
                                    training=True)
        return logits[:ops.shape(real)[0]], logits[ops.shape(real)[0]:]

    def augmented(self, images: tf.Tensor, call: int) -> tf.Tensor:
        """`images` as D is to see them: through the `augment` policy, drawn for this step
        (G's step count, which only G's update moves, last in every step) and `call` (one of
        nets.augment's REAL, FAKE, G_STEP); unchanged without a policy."""
        if not self.augment:
            return images
        key = step_key(self.seed, self.g_optimizer.iterations, call)
        return diff_augment(images, self.augment, key, *replica_slice())

    def d_penalty(self, real_logits: tf.Tensor, fake_logits: tf.Tensor) -> tf.Tensor:
        """LeCam's regulariser (Tseng et al., 2021), times `lecam`, for D's loss; 0 when off.

        mean(relu(D(x) - a_fake)^2) + mean(relu(a_real - D(G(z)))^2), where a_real and a_fake
        are moving averages (decay LECAM_DECAY) of D's mean logits on real and generated
        images: D's outputs are held near where they have been, which on small data keeps D
        from drifting to ever more confident logits. Each call moves the averages once.
        """
        if not self.lecam:
            return 0.0
        real, fake = ops.cast(real_logits, "float32"), ops.cast(fake_logits, "float32")
        ema_real, ema_fake = self.lecam_ema[0], self.lecam_ema[1]
        penalty = (self.global_mean(ops.mean(ops.square(ops.relu(real - ema_fake)), axis=-1))
                   + self.global_mean(ops.mean(ops.square(ops.relu(ema_real - fake)), axis=-1)))
        means = ops.stop_gradient(ops.stack([across_replicas(ops.mean(real), "mean"),
                                             across_replicas(ops.mean(fake), "mean")]))
        self.lecam_ema.assign(LECAM_DECAY * self.lecam_ema + (1 - LECAM_DECAY) * means)
        return self.lecam * penalty

    def train_step(self, real: tf.Tensor) -> dict[str, tf.Tensor]:
        # On several replicas (tf.distribute) `real` is this replica's slice of the batch.
        # D's and G's updates, in the order `update` names (nets.updates).
        d_loss, g_loss, real_logits, fake_logits = UPDATES[self.update].step(self, real)
        if self.average is not None:  # G has taken its step: the average follows
            images_before = (self.g_optimizer.iterations - 1) * self.batch
            update_average(self.average, self.generator, ema_beta(images_before, self.batch,
                                                                  *self.ema_schedule))
        # Each replica's losses are its share of the global mean; the trackers get the
        # whole, identical on every replica (one device: the values themselves).
        self.d_loss_tracker.update_state(across_replicas(d_loss, "sum"))
        self.g_loss_tracker.update_state(across_replicas(g_loss, "sum"))
        self.d_real_tracker.update_state(across_replicas(ops.mean(ops.sigmoid(real_logits)),
                                                         "mean"))
        self.d_fake_tracker.update_state(across_replicas(ops.mean(ops.sigmoid(fake_logits)),
                                                         "mean"))
        return step_logs({m.name: m.result() for m in self.metrics})

    @staticmethod
    def update_weights(optimizer: keras.optimizers.Optimizer, grads: list[tf.Tensor],
                       net: keras.Model) -> None:
        """One optimizer step of `net` (G or D) with `grads`, its trainable variables'."""
        optimizer.apply_gradients(zip(grads, net.trainable_variables, strict=True))


def build_gan(cfg: TrainConfig, image_shape: tuple[int, int, int],
              strategy: tf.distribute.Strategy | None = None) -> DCGAN:
    """Build and compile the DCGAN for `image_shape` with the config's Adam settings.

    Call `keras.utils.set_random_seed` first: the initial weights draw from it.
    With a `strategy` (distribution.make_strategy) the variables are made in its scope,
    so `fit()` runs each step on all its replicas; with several, batch norm syncs.

    Raises:
        UserError: if the architecture cannot produce `image_shape`.
    """
    strategy = strategy or tf.distribute.get_strategy()
    sync_bn = strategy.num_replicas_in_sync > 1
    with strategy.scope():
        generator = Generator(cfg, image_shape, sync_bn)
        discriminator = Discriminator(cfg, image_shape, sync_bn)
        # Made after both nets, so G and D start from the same weights with or without it.
        average = average_of(generator) if cfg.ema else None
        gan = DCGAN(generator, discriminator, cfg.latent_dim, seed=cfg.seed, update=cfg.update,
                    loss=cfg.loss, average=average, ema=(cfg.ema_half_life, cfg.ema_rampup),
                    batch=cfg.batch_size, augment=parse_policy(cfg.augment), lecam=cfg.lecam,
                    name="dcgan")
        gan(ops.zeros((1, cfg.latent_dim)))  # build, so checkpoints can be restored into it
        (g_lr, g_beta1), (d_lr, d_beta1) = cfg.optimiser("g"), cfg.optimiser("d")
        gan.compile(
            g_optimizer=keras.optimizers.Adam(g_lr, beta_1=g_beta1, name="g_adam"),
            d_optimizer=keras.optimizers.Adam(d_lr, beta_1=d_beta1, name="d_adam"),
            steps_per_execution=cfg.steps_per_execution,
        )
    return gan
