"""Baseline: the Fréchet distance of an UNTRAINED generator (same arch and init seed as train).

Gives `frechet_distance` in data/metrics.json its scale from above (the real-vs-real
floor gives it from below). Run from the repo root after `dvc repro`:
    python scripts/untrained_baseline.py
"""
import json

import numpy as np

from dcgan.classifier import feature_extractor
from dcgan.config import load_params
from dcgan.data import load_processed
from dcgan.metrics import evaluate_generator
from dcgan.model import Generator, load_model
from dcgan.training import seed_everything

p = load_params()
seed_everything(p.train.seed, p.train.precision)
data = load_processed("data/processed/dataset.npz")
g = Generator(p.train, data.image_shape)
shape = (p.generate.num_samples, p.train.latent_dim)
z = np.random.default_rng(p.generate.seed).standard_normal(shape).astype("float32")
samples = g.predict(z, verbose=0)
clf = load_model("models/classifier.keras", remedy="run `dvc repro classifier` first")
features = feature_extractor(clf)
scores = evaluate_generator(features, samples, data.train_x, data.test_x, p.evaluate.batch_size)
print(json.dumps(scores))
