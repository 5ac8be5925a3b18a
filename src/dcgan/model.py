"""The DCGAN: generator, discriminator and the adversarial `train_step`, top to bottom.

Two architectures share one training loop:
- `paper`: Radford, Metz & Chintala 2015 (arXiv 1511.06434), section 3 guidelines.
- `tutorial`: the TensorFlow DCGAN tutorial's networks, for comparison.

Use: `gan = build_gan(params.train, image_shape)`, then `gan.fit(dataset)`.
The generator is a plain `keras.Sequential` of built-in layers, so a saved
`generator.keras` loads anywhere with `keras.saving.load_model`.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import keras
import tensorflow as tf
from keras import layers, ops

from dcgan.config import TrainConfig, paper_start_size
from dcgan.distribution import across_replicas, replica_slice, step_logs
from dcgan.errors import UserError
from dcgan.outputs import atomic_path


# Paper, section 4: "All weights were initialized from a zero-centered Normal
# distribution with standard deviation 0.02." BN's scale is centred on 1 instead.
# One initializer per layer, made when the layer is: an instance draws its seed when
# constructed, so a shared module-level one would give every layer the same draws and
# take its seed from before `keras.utils.set_random_seed` ran.
def _w_init() -> keras.initializers.Initializer:
    return keras.initializers.RandomNormal(0.0, 0.02)


def _gamma_init() -> keras.initializers.Initializer:
    return keras.initializers.RandomNormal(1.0, 0.02)


def _batch_norm(sync_bn: bool) -> layers.BatchNormalization:
    return layers.BatchNormalization(gamma_initializer=_gamma_init(), synchronized=sync_bn)


def _paper_depth(image_size: int) -> tuple[int, int]:
    """(start side s, number of stride-2 layers n) with image_size = s * 2**n."""
    start = paper_start_size(image_size)
    if start is None:
        raise UserError(f"image size {image_size} cannot be produced by the paper architecture")
    return start, int(math.log2(image_size // start))


def Generator(cfg: TrainConfig, image_shape: tuple[int, int, int],
              sync_bn: bool = False) -> keras.Sequential:
    """The generator G: z of `latent_dim` dims -> image of `image_shape` in [-1, 1].

    `sync_bn`: batch norm takes its statistics over the global batch, across replicas
    (set it when training on several; on one it would only cost time).

    Raises:
        UserError: if the architecture cannot produce `image_shape`.
    """
    size, _, channels = image_shape
    if cfg.arch == "tutorial":
        return _tutorial_generator(cfg.latent_dim, size, channels, sync_bn)
    start, depth = _paper_depth(size)
    width = cfg.g_filters * 2 ** (depth - 1)
    model = keras.Sequential(name="generator")
    model.add(keras.Input((cfg.latent_dim,)))
    # The paper's "project and reshape" as a convolution: no fully connected hidden layer.
    model.add(layers.Reshape((1, 1, cfg.latent_dim)))  # (B, 1, 1, z)
    model.add(layers.Conv2DTranspose(width, start, use_bias=False, kernel_initializer=_w_init()))
    model.add(_batch_norm(sync_bn))
    model.add(layers.ReLU())  # (B, s, s, F * 2**(n-1))
    for _ in range(depth - 1):
        width //= 2
        model.add(layers.Conv2DTranspose(
            width, 4, strides=2, padding="same", use_bias=False, kernel_initializer=_w_init()
        ))
        model.add(_batch_norm(sync_bn))
        model.add(layers.ReLU())  # side doubles, width halves
    # No batch norm on G's output layer; tanh matches data scaled to [-1, 1].
    model.add(layers.Conv2DTranspose(
        channels, 4, strides=2, padding="same", kernel_initializer=_w_init()
    ))
    model.add(layers.Activation("tanh", dtype="float32"))  # (B, H, W, C)
    return model


def Discriminator(cfg: TrainConfig, image_shape: tuple[int, int, int],
                  sync_bn: bool = False) -> keras.Sequential:
    """The discriminator D: image -> one real/fake logit (`sync_bn`: as for `Generator`).

    Raises:
        UserError: if the architecture cannot take `image_shape`.
    """
    if cfg.arch == "tutorial":
        return _tutorial_discriminator(image_shape)
    _, depth = _paper_depth(image_shape[0])
    model = keras.Sequential(name="discriminator")
    model.add(keras.Input(image_shape))
    # No batch norm on D's input layer (paper, section 3).
    model.add(layers.Conv2D(
        cfg.d_filters, 4, strides=2, padding="same", kernel_initializer=_w_init()
    ))
    model.add(layers.LeakyReLU(0.2))  # (B, H/2, W/2, F)
    for i in range(1, depth):
        model.add(layers.Conv2D(
            cfg.d_filters * 2**i, 4, strides=2, padding="same", use_bias=False,
            kernel_initializer=_w_init(),
        ))
        model.add(_batch_norm(sync_bn))
        model.add(layers.LeakyReLU(0.2))  # side halves, width doubles
    # "The last convolution layer is flattened and then fed into a single sigmoid output."
    model.add(layers.Flatten())
    model.add(layers.Dense(1, kernel_initializer=_w_init(), dtype="float32"))  # (B, 1) logits
    return model


def _tutorial_generator(latent_dim: int, size: int, channels: int,
                        sync_bn: bool) -> keras.Sequential:
    if size % 4:
        raise UserError(f"image size {size} cannot be produced by the tutorial architecture "
                        "(it needs a multiple of 4)")
    start = size // 4
    return keras.Sequential([
        keras.Input((latent_dim,)),
        layers.Dense(start * start * 256, use_bias=False),
        layers.BatchNormalization(synchronized=sync_bn),
        layers.LeakyReLU(),
        layers.Reshape((start, start, 256)),  # (B, s, s, 256)
        layers.Conv2DTranspose(128, 5, strides=1, padding="same", use_bias=False),
        layers.BatchNormalization(synchronized=sync_bn),
        layers.LeakyReLU(),  # (B, s, s, 128)
        layers.Conv2DTranspose(64, 5, strides=2, padding="same", use_bias=False),
        layers.BatchNormalization(synchronized=sync_bn),
        layers.LeakyReLU(),  # (B, 2s, 2s, 64)
        layers.Conv2DTranspose(channels, 5, strides=2, padding="same", use_bias=False),
        layers.Activation("tanh", dtype="float32"),  # (B, 4s, 4s, C)
    ], name="generator")


def _tutorial_discriminator(image_shape: tuple[int, int, int]) -> keras.Sequential:
    return keras.Sequential([
        keras.Input(image_shape),
        layers.Conv2D(64, 5, strides=2, padding="same"),
        layers.LeakyReLU(),
        layers.Dropout(0.3),
        layers.Conv2D(128, 5, strides=2, padding="same"),
        layers.LeakyReLU(),
        layers.Dropout(0.3),
        layers.Flatten(),
        layers.Dense(1, dtype="float32"),  # (B, 1) logits
    ], name="discriminator")


class DCGAN(keras.Model):
    """A generator and a discriminator trained against each other by `fit()`.

    Tracks per step: `d_loss`, `g_loss`, and `d_real` / `d_fake`, the mean of
    D(x) and D(G(z)) as probabilities (0.5 both when D cannot tell).
    """

    def __init__(self, generator: keras.Model, discriminator: keras.Model, latent_dim: int,
                 seed: int, update: str = "alternating", **kwargs):
        super().__init__(**kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.latent_dim = latent_dim
        self.update = update  # "alternating" or "simultaneous": see train_step
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
        # Per example: `_average` takes the mean over the global batch itself.
        self.bce = keras.losses.BinaryCrossentropy(from_logits=True, reduction="none")

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        # Listed here so Keras resets them at the start of every epoch.
        return [self.d_loss_tracker, self.g_loss_tracker, self.d_real_tracker, self.d_fake_tracker]

    def call(self, z: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.generator(z, training=training)

    def sample_noise(self, n: int | tf.Tensor) -> tf.Tensor:
        return keras.random.normal((n, self.latent_dim), seed=self.noise_seed)

    def replica_noise(self, batch: int | tf.Tensor) -> tf.Tensor:
        """This replica's `batch` rows of one noise draw for the global batch: together,
        the replicas use exactly the noise one device would draw (the seed state is the
        same on all of them, so each drawing its own would repeat one slice N times)."""
        replica, replicas = replica_slice()
        return self.sample_noise(batch * replicas)[replica * batch:(replica + 1) * batch]

    def _average(self, labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        """Cross-entropy summed over this replica's examples, divided by the global batch,
        as tf.distribute expects: the replicas' gradients are summed, so their sum is the
        gradient of the mean over the global batch (on one device, the plain mean)."""
        per_example = self.bce(labels, logits)  # (B,)
        replicas = replica_slice()[1]
        return ops.divide_no_nan(ops.sum(per_example),
                                 ops.cast(ops.shape(per_example)[0] * replicas, "float32"))

    def discriminate(self, real: tf.Tensor, fake: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """D's logits on real and on generated images, (B, 1) each.

        A D with batch norm sees each kind in its own batch (the paper's practice: mixed
        batches would let BN's statistics tell them apart). A D without it gets one call
        on both, concatenated: one larger batch runs faster than two.
        """
        if self.d_has_batchnorm:
            return (self.discriminator(real, training=True),
                    self.discriminator(fake, training=True))
        logits = self.discriminator(ops.concatenate([real, ops.cast(fake, real.dtype)]),
                                    training=True)
        return logits[:ops.shape(real)[0]], logits[ops.shape(real)[0]:]

    def train_step(self, real: tf.Tensor) -> dict[str, tf.Tensor]:
        # On several replicas (tf.distribute) `real` is this replica's slice of the batch.
        batch = ops.shape(real)[0]
        ones, zeros = ops.ones((batch, 1)), ops.zeros((batch, 1))
        if self.update == "simultaneous":
            d_loss, g_loss, real_logits, fake_logits = self._simultaneous_step(real, ones, zeros)
        else:
            d_loss, g_loss, real_logits, fake_logits = self._alternating_step(real, ones, zeros)
        # Each replica's losses are its share of the global mean; the trackers get the
        # whole, identical on every replica (one device: the values themselves).
        self.d_loss_tracker.update_state(across_replicas(d_loss, "sum"))
        self.g_loss_tracker.update_state(across_replicas(g_loss, "sum"))
        self.d_real_tracker.update_state(across_replicas(ops.mean(ops.sigmoid(real_logits)),
                                                         "mean"))
        self.d_fake_tracker.update_state(across_replicas(ops.mean(ops.sigmoid(fake_logits)),
                                                         "mean"))
        return step_logs({m.name: m.result() for m in self.metrics})

    def _alternating_step(self, real: tf.Tensor, ones: tf.Tensor,
                          zeros: tf.Tensor) -> tuple[tf.Tensor, ...]:
        # 1. Update D: real images towards 1, generated ones towards 0.
        z = self.replica_noise(ops.shape(real)[0])  # (B, latent_dim)
        with tf.GradientTape() as tape:
            fake = self.generator(z, training=True)  # (B, H, W, C)
            real_logits, fake_logits = self.discriminate(real, fake)  # (B, 1) each
            d_loss = (self._average(ones, real_logits)
                      + self._average(zeros, fake_logits))
        self._apply(self.d_optimizer, tape.gradient(d_loss, self.discriminator.trainable_variables),
                    self.discriminator)

        # 2. Update G with fresh noise against the updated D: the non-saturating loss
        #    -log D(G(z)) (Goodfellow et al. 2014, section 3) gives strong early gradients.
        z = self.replica_noise(ops.shape(real)[0])
        with tf.GradientTape() as tape:
            g_logits = self.discriminator(self.generator(z, training=True), training=True)
            g_loss = self._average(ones, g_logits)
        self._apply(self.g_optimizer, tape.gradient(g_loss, self.generator.trainable_variables),
                    self.generator)
        return d_loss, g_loss, real_logits, fake_logits

    def _simultaneous_step(self, real: tf.Tensor, ones: tf.Tensor,
                           zeros: tf.Tensor) -> tuple[tf.Tensor, ...]:
        # One G forward pass serves both updates, each taken at the current weights
        # (the tutorial's step): G's costs about as much as the rest of the step together.
        z = self.replica_noise(ops.shape(real)[0])
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            fake = self.generator(z, training=True)
            real_logits, fake_logits = self.discriminate(real, fake)
            d_loss = (self._average(ones, real_logits)
                      + self._average(zeros, fake_logits))
            g_loss = self._average(ones, fake_logits)  # non-saturating, as above
        d_grads = d_tape.gradient(d_loss, self.discriminator.trainable_variables)
        g_grads = g_tape.gradient(g_loss, self.generator.trainable_variables)
        self._apply(self.d_optimizer, d_grads, self.discriminator)
        self._apply(self.g_optimizer, g_grads, self.generator)
        return d_loss, g_loss, real_logits, fake_logits

    @staticmethod
    def _apply(optimizer: keras.optimizers.Optimizer, grads: list[tf.Tensor],
               net: keras.Model) -> None:
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
        gan = DCGAN(Generator(cfg, image_shape, sync_bn), Discriminator(cfg, image_shape, sync_bn),
                    cfg.latent_dim, seed=cfg.seed, update=cfg.update, name="dcgan")
        gan(ops.zeros((1, cfg.latent_dim)))  # build, so checkpoints can be restored into it
        lr, beta1 = cfg.adam
        gan.compile(
            g_optimizer=keras.optimizers.Adam(lr, beta_1=beta1, name="g_adam"),
            d_optimizer=keras.optimizers.Adam(lr, beta_1=beta1, name="d_adam"),
            steps_per_execution=cfg.steps_per_execution,
        )
    return gan


# A .keras file is a zip. Keras stamps it with the save time (metadata.json's date_saved
# and the weights entry's zip date) and numbers shared objects by their memory address
# (config.json's shared_object_id), so identical weights would hash differently on every
# run and DVC would see a new model. The times become the zip format's epoch, as
# reproducible builds do (wheels, SOURCE_DATE_EPOCH); the ids 0, 1, 2... in order.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def save_model(model: keras.Model, path: Path) -> None:
    """Save a model as `.keras`, atomically (a killed save never leaves a half-written
    file) and reproducibly (the same weights give the same bytes)."""
    with atomic_path(path) as tmp:  # keeps the .keras suffix Keras requires
        raw = tmp.with_name(f"{tmp.stem}.raw.keras")  # what Keras writes, before restamping
        try:
            model.save(raw)
            _restamp(raw, tmp)
        finally:
            raw.unlink(missing_ok=True)


def _restamp(src: Path, dst: Path) -> None:
    """Copy the .keras zip `src` to `dst` with every timestamp set to `ZIP_EPOCH`."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "metadata.json":
                meta = json.loads(data)
                meta["date_saved"] = "{}-{:02d}-{:02d}@{:02d}:{:02d}:{:02d}".format(*ZIP_EPOCH)
                data = json.dumps(meta).encode()
            elif info.filename == "config.json":
                data = json.dumps(_renumber_shared(json.loads(data), {})).encode()
            entry = zipfile.ZipInfo(info.filename, ZIP_EPOCH)
            entry.compress_type, entry.external_attr = info.compress_type, info.external_attr
            zout.writestr(entry, data)


def _renumber_shared(node: object, ids: dict[int, int]) -> object:
    """`node` with each `shared_object_id` replaced by its order of first appearance."""
    if isinstance(node, dict):
        return {k: ids.setdefault(v, len(ids)) if k == "shared_object_id" else
                _renumber_shared(v, ids) for k, v in node.items()}
    if isinstance(node, list):
        return [_renumber_shared(v, ids) for v in node]
    return node


def load_model(path: Path, remedy: str) -> keras.Model:
    """Load a `.keras` model saved by this package.

    Args:
        path: the file.
        remedy: what the user should run if it is missing or broken.

    Raises:
        UserError: if the file is missing or is not a Keras model.
    """
    if not Path(path).is_file():
        raise UserError(f"{path}: no model here; {remedy}")
    if not zipfile.is_zipfile(path):  # Keras would call it "File not found"
        raise UserError(f"{path}: cannot be loaded as a Keras model (not a .keras zip "
                        f"archive: truncated or another format); {remedy}")
    try:
        # safe_mode refuses Lambda layers and other code inside a model file.
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as err:
        raise UserError(f"{path}: cannot be loaded as a Keras model ({err}); {remedy}") from None
