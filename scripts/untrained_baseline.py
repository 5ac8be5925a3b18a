"""Baseline: every evaluate-stage metric for an UNTRAINED generator (same arch and init seed
as train), beside the trained one's, so each number has a scale from above.

Run from the repo root after `dvc repro`:
    python scripts/untrained_baseline.py
Prints one JSON object: the untrained generator's metrics (with the same floor and
ceiling rows as data/metrics.json, which holds the trained generator's).
"""
import json

import numpy as np

from dcgan.core.config import load_params
from dcgan.core.seeding import seed_everything, set_precision
from dcgan.evaluation.evaluate import evaluate_generator
from dcgan.nets.architectures import Generator
from dcgan.nets.serialisation import load_model
from dcgan.processed.imagestore import open_dataset

p = load_params()
seed_everything(p.train.seed)
set_precision(p.train.precision)
data = open_dataset("data/processed/dataset")
g = Generator(p.train, data.image_shape)
shape = (p.generate.num_samples, p.train.latent_dim)
z = np.random.default_rng(p.generate.seed).standard_normal(shape).astype("float32")
samples = g.predict(z, verbose=0)
clf = load_model("models/classifier.keras", remedy="run `dvc repro classifier` first")
scores = evaluate_generator(clf, samples, data.train_x, data.test_x, p.evaluate,
                            labelled=data.labelled)
print(json.dumps(scores))
