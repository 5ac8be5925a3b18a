"""Training throughput, ours against the TF tutorial's: `python -m benchmarks train`.

A benchmark, not a test. Each measurement runs in a fresh Python process (TF's state, op
determinism and dtype policy do not leak between them), and the two contenders alternate,
so a noisy shared machine slows both alike; the ratio of their medians is the figure that
means something. Images are random in [-1, 1]: throughput does not depend on content.

- `ours`: `model.DCGAN.train_step` through `fit()`, as the train stage runs it, for the
  given arch, batch size and precision (with op determinism, as train has it).
- `tutorial`: the TensorFlow DCGAN tutorial's own train step, verbatim in substance: its
  architecture, two tapes over one generator call, separate D calls on real and fake, Adam
  1e-4, float32, a plain `tf.function` loop.

`run_benchmark` returns the record that the command prints as one JSON line and appends to
`benchmarks/results.jsonl` (tracked in git), with the machine and the versions.
"""

from __future__ import annotations

import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from benchmarks.records import in_fresh_process, machine
from dcgan.core.config import TrainConfig
from dcgan.core.seeding import seed_everything, set_precision
from dcgan.nets.architectures import Discriminator, Generator
from dcgan.nets.model import build_gan

CONTENDERS = ("ours", "tutorial")


def measure(contender: str, arch: str, batch_size: int, precision: str, steps: int,
            warmup: int, update: str = "alternating", steps_per_execution: int = 1,
            image_size: int = 28, latent_dim: int = 100, filters: int = 64,
            channels: int = 1) -> float:
    """Images per second of `steps` train steps after `warmup` ones, in this process.

    Stateful (seeds, dtype policy, op determinism): call it in a fresh process, as
    `run_benchmark` does.
    """
    shape = (image_size, image_size, channels)
    images = np.random.default_rng(0).uniform(-1, 1, (batch_size * 4, *shape)).astype("float32")
    if contender == "ours":
        seed_everything(0)
        set_precision(precision)
        cfg = TrainConfig(arch=arch, batch_size=batch_size, latent_dim=latent_dim,
                          g_filters=filters, d_filters=filters, precision=precision,
                          update=update, steps_per_execution=steps_per_execution)
        gan = build_gan(cfg, shape)
        # Whole executions: warm-up and timed steps rounded up to steps_per_execution.
        warmup, steps = (-(-n // steps_per_execution) * steps_per_execution
                         for n in (warmup, steps))
        clock = _Clock(warmup // steps_per_execution)
        data = tf.data.Dataset.from_tensor_slices(images).batch(batch_size).repeat()
        gan.fit(data, epochs=1, steps_per_epoch=warmup + steps, callbacks=[clock], shuffle=False,
                verbose=0)
        return batch_size * steps / clock.seconds
    keras.utils.set_random_seed(0)
    step, _ = tutorial_gan(batch_size, latent_dim, shape)
    batch = tf.constant(images[:batch_size])
    for _ in range(warmup):
        float(step(batch))
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(batch)
    float(loss)  # waits for the last step
    return batch_size * steps / (time.perf_counter() - start)


class _Clock(keras.callbacks.Callback):
    """Time the steps after the first `warmup_calls` calls of the train function (each runs
    `steps_per_execution` steps)."""

    def __init__(self, warmup_calls: int):
        super().__init__()
        self.warmup_calls, self.calls = warmup_calls, 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.calls += 1
        if self.calls == self.warmup_calls:
            self.start = time.perf_counter()

    def on_train_end(self, logs: dict | None = None) -> None:
        self.seconds = time.perf_counter() - self.start


def tutorial_gan(batch_size: int, latent_dim: int, shape: tuple[int, int, int],
                 ) -> tuple[tf.types.experimental.PolymorphicFunction, keras.Model]:
    """https://www.tensorflow.org/tutorials/generative/dcgan: its `train_step` (a batch of
    images -> G's loss + D's loss) and the generator it trains."""
    cfg = TrainConfig(arch="tutorial", latent_dim=latent_dim)
    generator, discriminator = Generator(cfg, shape), Discriminator(cfg, shape)
    cross_entropy = keras.losses.BinaryCrossentropy(from_logits=True)
    g_opt, d_opt = keras.optimizers.Adam(1e-4), keras.optimizers.Adam(1e-4)

    @tf.function
    def train_step(images: tf.Tensor) -> tf.Tensor:
        noise = tf.random.normal([batch_size, latent_dim])
        with tf.GradientTape() as gen_tape, tf.GradientTape() as disc_tape:
            generated = generator(noise, training=True)
            real_output = discriminator(images, training=True)
            fake_output = discriminator(generated, training=True)
            gen_loss = cross_entropy(tf.ones_like(fake_output), fake_output)
            disc_loss = (cross_entropy(tf.ones_like(real_output), real_output)
                         + cross_entropy(tf.zeros_like(fake_output), fake_output))
        g_grads = gen_tape.gradient(gen_loss, generator.trainable_variables)
        d_grads = disc_tape.gradient(disc_loss, discriminator.trainable_variables)
        g_opt.apply_gradients(zip(g_grads, generator.trainable_variables, strict=True))
        d_opt.apply_gradients(zip(d_grads, discriminator.trainable_variables, strict=True))
        return gen_loss + disc_loss

    return train_step, generator


def run_benchmark(arch: str, batch_size: int, precision: str, steps: int, warmup: int,
                  repeats: int, update: str = "alternating", steps_per_execution: int = 1,
                  **sizes: int) -> dict:
    """Alternate `ours` and `tutorial`, `repeats` fresh processes each; the record."""
    rates: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for _ in range(repeats):
        for name in CONTENDERS:
            args = dict(contender=name, arch=arch, batch_size=batch_size, precision=precision,
                        steps=steps, warmup=warmup, update=update,
                        steps_per_execution=steps_per_execution, **sizes)
            rates[name].append(in_fresh_process("benchmarks.step", "measure", args))
    ours, tutorial = (statistics.median(rates[n]) for n in CONTENDERS)
    return {
        "benchmark": "train_throughput",
        "arch": arch, "batch_size": batch_size, "precision": precision, "update": update,
        "steps_per_execution": steps_per_execution,
        "steps": steps, "warmup": warmup, "repeats": repeats, **sizes,
        "images_per_sec": {"ours": round(ours, 1), "tutorial_baseline": round(tutorial, 1)},
        "ours_over_tutorial": round(ours / tutorial, 3),
        "target": "ours >= 1.5 x tutorial", "met": ours / tutorial >= 1.5,
        "runs": {n: [round(r, 1) for r in v] for n, v in rates.items()},
        **machine(),
    }
