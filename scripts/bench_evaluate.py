"""Benchmark: seconds to evaluate 10,000 generated images (classifier training excluded).

Not a test: it prints figures. Run from the repo root after `dvc repro`:
    python scripts/bench_evaluate.py
Prints one JSON line per case:
- `default`: 10,000 samples from models/generator.keras against the default data
  (N = min(samples, train, test) = the test split's size);
- `full_mnist_size`: the same samples against full-MNIST-sized real sets (50,000 train,
  10,000 test, the default data tiled with a little noise), so N = 10,000 and the
  k-NN and memorisation checks run at full size.
Each line has the seconds for `evaluate_generator` (every row: samples, floor, two
ceilings) plus the classifier's accuracy pass, i.e. the evaluate stage minus file I/O.
"""
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from dcgan.classifier import accuracy
from dcgan.config import load_params
from dcgan.data import load_processed
from dcgan.evaluation import evaluate_generator
from dcgan.model import load_model

NUM_SAMPLES = 10_000


def cpu_model() -> str:
    """The CPU's model name (Linux), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def tiled(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` images cycled from `x`, each with a little noise so no two are equal."""
    out = np.resize(x, (n, *x.shape[1:]))
    return np.clip(out + rng.normal(0, 0.05, out.shape).astype(np.float32), -1, 1)


def timed(name, classifier, samples, train_x, test_x, test_y, cfg, labelled) -> dict:
    start = time.perf_counter()
    result = evaluate_generator(classifier, samples, train_x, test_x, cfg, labelled)
    accuracy(classifier, test_x, test_y, cfg.batch_size)
    seconds = time.perf_counter() - start
    return {"case": name, "samples": len(samples), "train": len(train_x), "test": len(test_x),
            "n": result["frechet_samples"], "seconds": round(seconds, 2),
            "frechet_distance": round(result["frechet_distance"], 3),
            "cpu": cpu_model(), "cores": os.cpu_count()}


def main() -> None:
    p = load_params()
    data = load_processed("data/processed/dataset.npz")
    generator = load_model("models/generator.keras", remedy="run `dvc repro train` first")
    classifier = load_model("models/classifier.keras", remedy="run `dvc repro classifier`")
    z = np.random.default_rng(0).standard_normal((NUM_SAMPLES, generator.input_shape[-1]))
    start = time.perf_counter()
    samples = generator.predict(z.astype(np.float32), batch_size=500, verbose=0)
    print(json.dumps({"case": "generate", "samples": NUM_SAMPLES,
                      "seconds": round(time.perf_counter() - start, 2)}))
    args = (classifier, samples)
    print(json.dumps(timed("default", *args, data.train_x, data.test_x, data.test_y,
                           p.evaluate, data.labelled)))
    rng = np.random.default_rng(0)
    big_test_y = np.resize(data.test_y, NUM_SAMPLES)
    print(json.dumps(timed("full_mnist_size", *args, tiled(data.train_x, 50_000, rng),
                           tiled(data.test_x, NUM_SAMPLES, rng), big_test_y, p.evaluate,
                           data.labelled)))


if __name__ == "__main__":
    main()
