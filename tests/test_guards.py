"""Training health (dcgan.training.guards) and safe loading: divergence stops training with one
error,
keeping the last good checkpoint and a FAILED run; collapse warns and tags the run; params,
arrays and models are never deserialised unsafely.

Run with `pytest tests/test_guards.py -q` (about a minute: three tiny real trainings).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from test_training import TINY, outputs, processed_npz, use_scratch_store

from dcgan.core.config import load_params, parse_params
from dcgan.core.errors import UserError
from dcgan.nets.serialisation import load_model
from dcgan.processed import imagestore
from dcgan.training import train as training
from dcgan.training.guards import CollapseWatch, Diverged, DivergenceGuard
from dcgan.training.train import checkpoint_dir, train

# Plain training (TINY's augmentation and LeCam off): the guards must see D collapse.
NO_QUALITY = {**TINY, "train": {**TINY["train"], "eval_every": 0, "keep_best": False,
                                "augment": "", "lecam": 0.0}}


def _train(root: Path, params: dict, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """train() in `root` with its own store; returns (outputs, error or None, client)."""
    uri = use_scratch_store(monkeypatch, root)
    out = outputs(root)
    try:
        train(parse_params(params), processed_npz(root), root / "no-classifier.keras", out)
    except Exception as err:  # handed to the test
        return out, err, MlflowClient(uri)
    return out, None, MlflowClient(uri)


def _only_run(client: MlflowClient):
    [run] = client.search_runs([client.get_experiment_by_name("dcgan").experiment_id])
    return run


# ---------------------------------------------------------------- divergence


class _PoisonAfterFirstEpoch(keras.callbacks.Callback):
    """What an overflow does: after epoch 1 has been checkpointed, one of G's weights is NaN."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == 0:
            weights = self.model.generator.get_weights()
            weights[0].flat[0] = np.nan
            self.model.generator.set_weights(weights)


def test_divergence_stops_with_one_error_keeps_the_checkpoint_and_fails_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Adam bounds each step by the learning rate, so here even lr = 1000 gives huge but
    # finite losses (measured); the NaN is put in directly, after the real checkpoint.
    real_callbacks = training._callbacks
    monkeypatch.setattr(training, "_callbacks",
                        lambda *a, **k: [*real_callbacks(*a, **k), _PoisonAfterFirstEpoch()])
    out, error, client = _train(tmp_path, NO_QUALITY, monkeypatch)
    ckpt = checkpoint_dir(out.checkpoints, parse_params(NO_QUALITY).train,
                          imagestore.dataset_md5(processed_npz(tmp_path)))
    assert isinstance(error, Diverged) and isinstance(error, UserError)
    # Where it shows first depends on the kernels: a NaN weight makes the losses NaN at the
    # next step, unless a fused batch norm + ReLU (oneDNN) maps the NaN to 0; then the weights
    # guard finds it at the epoch's end.
    where = str(error).split("; ")[0]
    assert where in ("training diverged at epoch 2, step 1: d_loss = nan, g_loss = nan",
                     "training diverged at epoch 2, its end: the weights hold NaN or inf")
    assert str(error).removeprefix(where) == (
        f"; the checkpoint of epoch 1 is kept in {ckpt}; lower the learning rates (now G "
        "0.004, D 0.001: train.lr for both, or train.g_lr and train.d_lr) or change "
        "train.seed, then rerun")
    assert ckpt.is_dir() and any(ckpt.iterdir())  # the last good epoch survives
    assert not out.generator.exists()
    assert _only_run(client).info.status == "FAILED"


def test_guard_checks_losses_every_step_and_weights_every_epoch(tmp_path: Path) -> None:
    guard = DivergenceGuard((2e-4, 2e-4), tmp_path / "ckpt")
    guard.set_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
    guard.on_epoch_begin(0)
    guard.on_train_batch_end(0, {"d_loss": 1.3, "g_loss": 0.7, "d_real": 0.5})
    guard.on_epoch_end(0, {})
    with pytest.raises(Diverged, match=r"epoch 1, step 4: g_loss = inf; no epoch had "
                                       r"completed, so there is no checkpoint"):
        guard.on_train_batch_end(3, {"d_loss": 1.3, "g_loss": math.inf})
    weights = guard.model.get_weights()
    weights[1][:] = np.inf
    guard.model.set_weights(weights)
    guard.on_epoch_begin(4)
    with pytest.raises(Diverged, match=r"epoch 5, its end: the weights hold NaN or inf; the "
                                       r"checkpoint of epoch 4 is kept"):
        guard.on_epoch_end(4, {})


# ---------------------------------------------------------------- collapse


def test_absurd_learning_rate_collapses_d_and_is_flagged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    # Seed 0 at this rate, in float32 (bfloat16 draws another trajectory): D's loss falls
    # below 0.05 in epoch 3.
    params = {**NO_QUALITY, "train": {**NO_QUALITY["train"], "epochs": 3, "lr": 1.0,
                                      "collapse_patience": 1, "seed": 0,
                                      "precision": "float32"}}
    out, error, client = _train(tmp_path, params, monkeypatch)
    assert error is None  # a warning, not an error: training runs to the end
    d_loss = [float(line.split(",")[2]) for line in out.history.read_text().splitlines()[1:]]
    first = next(i for i, loss in enumerate(d_loss, 1) if loss < 0.05)
    warning = [line for line in capsys.readouterr().err.splitlines()
               if line.startswith("warning:")]
    assert warning == [f"warning: D's loss stayed below 0.05 in epochs {first}-{first}: D "
                       "rejects every sample and G gets no useful gradient (collapse); lower "
                       "train.lr or change train.seed"]
    run = _only_run(client)
    assert run.info.status == "FINISHED"
    assert run.data.tags["collapse"].startswith(f"D's loss stayed below 0.05 in epochs {first}")


def test_collapse_needs_patience_epochs_in_a_row(capsys: pytest.CaptureFixture) -> None:
    watch = CollapseWatch(patience=3, threshold=0.05)
    notes = [watch.update(epoch, {"d_loss": loss})
             for epoch, loss in enumerate([0.01, 0.02, 0.9, 0.01, 0.0, 0.03, 0.0, 0.0])]
    tags = [note for note in notes if note is not None]
    assert [t.split(" in epochs ")[1][:3] for t in tags] == ["4-6"]  # once
    assert capsys.readouterr().err.count("warning:") == 1
    off = CollapseWatch(patience=0, threshold=0.05)
    assert [off.update(epoch, {"d_loss": 0.0}) for epoch in range(5)] == [None] * 5


# ---------------------------------------------------------------- safe loading


def test_params_yaml_with_a_python_tag_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "params.yaml"
    bad.write_text(f"fetch: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(UserError, match=r"params.yaml"):
        load_params(bad)
    assert not marker.exists()


def test_labels_with_pickled_objects_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = processed_npz(tmp_path)  # a valid dataset, but for its labels
    np.save(bad / "train_y.npy", np.array([Payload()] * 64, dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match=r"train_y.npy: not a label array"):
        imagestore.open_dataset(bad)
    assert not marker.exists()


@pytest.mark.slow
def test_model_with_code_inside_is_refused(tmp_path: Path) -> None:
    """A .keras file with a Lambda layer would run its code on load; safe_mode refuses it."""
    marker = tmp_path / "pwned"
    path = tmp_path / "generator.keras"
    code = ("import keras, os\n"
            f"f = lambda x: (os.system('touch {marker}'), x)[1]\n"
            "m = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(f)])\n"
            f"m.save({str(path)!r})\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    assert path.is_file() and marker.exists()  # building the model ran the code once...
    marker.unlink()
    with pytest.raises(UserError, match=r"cannot be loaded as a Keras model .*safe"):
        load_model(path, remedy="rerun train")
    assert not marker.exists()  # ...loading it did not
