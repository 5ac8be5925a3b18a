"""What TensorFlow's op determinism costs in training speed: a benchmark, not a test.

Trains the configured DCGAN (params.yaml's train section) on the processed dataset for a
few epochs in fresh processes, with `tf.config.experimental.enable_op_determinism()` on
and off (it cannot be turned off once on, hence one process each), alternating the two
so that a noisy shared machine hurts both alike. Prints one JSON line: the median images
per second after the first epoch, per mode, and the ratio.

    python -m benchmarks.determinism [--epochs 3] [--repeats 2] [--data PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from benchmarks.records import machine

CHILD = """
import json, sys, time
import keras, numpy as np, tensorflow as tf
from dcgan.core.config import load_params
from dcgan.processed.imagestore import open_dataset
from dcgan.nets.model import build_gan
from dcgan.processed.batches import SeededBatches
data_file, epochs, deterministic = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "on"
cfg = load_params("params.yaml").train
keras.utils.set_random_seed(cfg.seed)
if deterministic:
    tf.config.experimental.enable_op_determinism()
x = open_dataset(data_file).train_x
batches = SeededBatches(x, cfg.batch_size, cfg.seed)
gan = build_gan(cfg, x.image_shape)
times = []
class Clock(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None): self.t = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None): times.append(time.perf_counter() - self.t)
gan.fit(batches.dataset, epochs=epochs, steps_per_epoch=batches.steps,
        callbacks=[batches, Clock()], verbose=0)
images = len(x) // cfg.batch_size * cfg.batch_size
print(json.dumps([images / t for t in times[1:]]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/processed/dataset")
    parser.add_argument("--epochs", type=int, default=3, help="per process; the first is warm-up")
    parser.add_argument("--repeats", type=int, default=2, help="processes per mode")
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(args.repeats):
        for mode in ("on", "off"):
            out = subprocess.run([sys.executable, "-c", CHILD, args.data, str(args.epochs), mode],
                                 capture_output=True, text=True, check=True).stdout
            rates[mode] += json.loads(out.strip().splitlines()[-1])
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    print(json.dumps({"images_per_sec_deterministic": round(on, 1),
                      "images_per_sec_nondeterministic": round(off, 1),
                      "deterministic_over_nondeterministic": round(on / off, 3),
                      "epochs_measured": {k: len(v) for k, v in rates.items()},
                      **machine()}))


if __name__ == "__main__":
    main()
