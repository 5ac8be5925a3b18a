"""Tests of keep-best and early stopping (dcgan.training.selection and its use by train):
the state's maths, the delivered generator being the argmin epoch's, and an early stop.

Tiny networks on the tiny data of tests/test_training.py; about a minute.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from test_training import TINY, _train_in

from dcgan.core.config import parse_params
from dcgan.core.outputs import file_md5
from dcgan.evaluation.classifier import feature_extractor
from dcgan.processed import imagestore
from dcgan.training.selection import FixedSampleFD, Selection


def test_best_is_the_first_argmin_and_patience_counts_scores_since() -> None:
    sel = Selection(keep_best=True, patience=2)
    assert sel.update(1, 50.0) and sel.update(2, 40.0)
    assert not sel.update(3, 40.0)  # a tie keeps the earlier epoch
    assert (sel.best_epoch, sel.best_score, sel.stale) == (2, 40.0, 1)
    assert sel.stop(None) is None
    assert not sel.update(4, 45.0)
    assert "no better Fréchet distance in 2 evaluations (best 40 at epoch 2)" in sel.stop(None)
    assert sel.stop("D's loss below 0.05") == "collapse: D's loss below 0.05"
    assert Selection(keep_best=True, patience=0).stop("anything") is None  # 0: never stop


def test_restore_rebuilds_the_state_from_the_kept_rows() -> None:
    live = Selection(keep_best=True, patience=3)
    rows = [(2, 30.0), (4, 20.0), (6, 25.0)]
    for epoch, score in rows:
        live.update(epoch, score)
    restored = Selection(keep_best=True, patience=3, best_epoch=9, stale=7)
    restored.restore(rows)
    assert restored == live


def test_summary_names_the_delivered_epoch() -> None:
    sel = Selection(keep_best=True, patience=0)
    sel.restore([(1, 9.0), (2, 7.0), (3, 8.0)])
    assert sel.summary("ema", 3) == {
        "generator": "ema", "kept": "best", "epoch": 2, "frechet_distance": 7.0,
        "best_epoch": 2, "best_frechet_distance": 7.0, "last_epoch": 3,
        "last_frechet_distance": 8.0, "stopped_early": None}
    last = Selection(keep_best=False, patience=0)
    last.restore([(1, 9.0), (2, 7.0), (3, 8.0)])
    assert last.summary("raw", 3)["kept"] == "last" and last.summary("raw", 3)["epoch"] == 3
    assert Selection(False, 0).summary("raw", 5)["frechet_distance"] is None  # no scores


# Seed 2 at this rate: the best score comes at epoch 4 of 5; seed 4: epoch 4 is no better
# (plain training: TINY's augmentation and LeCam off; float32 whatever the CPU, as bfloat16
# draws another trajectory).
KEEP = {**TINY, "train": {**TINY["train"], "epochs": 5, "eval_every": 1, "seed": 2,
                          "lr": 0.01, "augment": "", "lecam": 0.0, "precision": "float32"}}


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    root = tmp_path_factory.mktemp("keep")
    out, error = _train_in(root, params=KEEP)
    assert error is None
    return root, out


def _score(root: Path, generator_file: Path) -> float:
    """The quality monitor's Fréchet distance of a saved generator, recomputed."""
    data = imagestore.open_dataset(root / "processed" / "dataset")
    features = feature_extractor(keras.saving.load_model(root / "models" / "classifier.keras"))
    cfg = parse_params(KEEP).train
    fd = FixedSampleFD(features, data.val_x, cfg.latent_dim, cfg.seed)
    return fd(keras.saving.load_model(generator_file))


@pytest.mark.slow
def test_keep_best_delivers_the_argmin_epoch(kept) -> None:
    root, out = kept
    quality = pd.read_csv(out.quality)
    best = int(quality.loc[quality["frechet_distance"].idxmin(), "epoch"])
    assert best < 5, "the test needs a best epoch before the last to mean something"
    selection = json.loads(out.selection.read_text())
    assert selection["kept"] == "best" and selection["generator"] == "ema"
    assert selection["epoch"] == best and selection["last_epoch"] == 5
    assert selection["frechet_distance"] == quality["frechet_distance"].min()
    # 1,000 samples against the validation images (16 here), never the test ones.
    assert selection["protocol"]["n"] == 1000
    assert selection["protocol"]["reference"] == "validation"
    # The delivered file is that epoch's generator (its score, recomputed), not the last.
    assert file_md5(out.generator) != file_md5(out.generator_last)
    assert _score(root, out.generator) == pytest.approx(selection["frechet_distance"], rel=1e-4)
    assert _score(root, out.generator_last) == pytest.approx(
        quality["frechet_distance"].iloc[-1], rel=1e-4)


@pytest.mark.slow
def test_mlflow_run_says_which_epoch_was_kept(kept) -> None:
    root, out = kept
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    [run] = client.search_runs(client.get_experiment_by_name("dcgan").experiment_id)
    selection = json.loads(out.selection.read_text())
    assert run.data.metrics["kept.epoch"] == selection["epoch"]
    assert run.data.metrics["kept.frechet_distance"] == selection["frechet_distance"]
    assert run.data.tags["kept"] == f"best ema generator, epoch {selection['epoch']}"


@pytest.mark.slow
def test_early_stop_after_patience_evaluations_without_improvement(tmp_path: Path) -> None:
    params = {**KEEP, "train": {**KEEP["train"], "seed": 4, "early_stop_patience": 1}}
    out, error = _train_in(tmp_path, params=params)
    assert error is None
    scores = pd.read_csv(out.quality)["frechet_distance"].tolist()
    stop = len(scores)
    assert stop < 5, "the test needs a stop before the last epoch"
    # Every score before the last was a new best; the last was not.
    assert all(scores[i] < min(scores[:i]) for i in range(1, stop - 1))
    assert scores[-1] >= min(scores[:-1])
    assert pd.read_csv(out.history)["epoch"].tolist() == list(range(1, stop + 1))
    selection = json.loads(out.selection.read_text())
    assert selection["last_epoch"] == stop
    assert selection["stopped_early"].startswith("no better Fréchet distance in 1 evaluations")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs(client.get_experiment_by_name("dcgan").experiment_id)
    assert run.data.tags["stopped_early"].startswith(f"after epoch {stop}: no better")
