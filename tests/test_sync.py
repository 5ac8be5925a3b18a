"""The sync step (dcgan.tracking.sync): MLflow as a projection of DVC's outputs.

Run with `pytest tests/test_sync.py -q`. The outputs are small files made here (a tiny
generator, two epochs of history, metrics files and a dvc.lock naming their md5s) in a
real MLflow SQLite store. Covers: a store with no run gets a complete new one; a second
sync adds nothing; train's own run is completed rather than duplicated; metrics that
dvc.lock says came from another generator stay out; the alias lands; what the store shows
(the track stage's output) is told from the outputs alone. The whole pipeline, a plain
`dvc repro` in a fresh and a pulled clone, is in test_pipeline and test_remote.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from dcgan.core.errors import UserError
from dcgan.core.outputs import file_md5
from dcgan.nets.serialisation import save_model
from dcgan.tracking.runfile import RunRecord, write_run_file
from dcgan.tracking.runlog import RunLog
from dcgan.tracking.sync import SyncPaths, sync

PARAMS = {"fetch.dataset": "mnist-5k", "preprocess.image_size": 4, "train.arch": "paper",
          "train.lr": 0.0002, "train.epochs": 2}
TAGS = {"dataset": "mnist-5k", "data_md5": "d" * 32 + ".dir", "arch": "paper",
        "precision": "float32"}
METRICS = {"frechet_distance": 12.5, "kid": 0.25, "floor": {"frechet_distance": 1.5},
           "modes_covered": None,
           "protocol": {"classifier_md5": "c" * 32, "n": 1000, "reference": "test", "seed": 0},
           "kept": {"generator": "ema", "kept": "best", "epoch": 2, "frechet_distance": 25.25,
                    "stopped_early": None}}
PROBE = {"probe_accuracy": 0.75, "probe_train_size": 100,
         "probe": {"100": {"discriminator": 0.75, "pixels": 0.5}}}


def _model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(16, activation="tanh"),
                             keras.layers.Reshape((4, 4, 1))])


def _outputs(root: Path, seed: int = 0) -> SyncPaths:
    """Every output the sync reads, and a dvc.lock that says they belong together."""
    paths = SyncPaths(run_file=root / "run.json", history=root / "history.csv",
                      quality=root / "quality.csv", grids=root / "grids", gif=root / "p.gif",
                      generator=root / "g.keras", discriminator=root / "d.keras",
                      generated=root / "generated", metrics=root / "metrics.json",
                      probe=root / "probe.json", lock=root / "dvc.lock")
    save_model(_model(seed), paths.generator)
    save_model(_model(seed + 1), paths.discriminator)
    paths.history.write_text("epoch,d_loss,g_loss\n1,1.5,0.5\n2,1.25,0.75\n")
    paths.quality.write_text("epoch,frechet_distance\n1,50.5\n2,25.25\n")
    paths.grids.mkdir()
    paths.generated.mkdir()
    for i in (1, 2):
        Image.fromarray(np.full((6, 6), 40 * i, np.uint8)).save(paths.grids / f"epoch_{i:04d}.png")
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(paths.gif)
    for name in ("grid.png", "interpolation.png"):
        Image.fromarray(np.ones((6, 6), np.uint8)).save(paths.generated / name)
    paths.metrics.write_text(json.dumps(METRICS))
    paths.probe.write_text(json.dumps(PROBE))
    g_md5 = file_md5(paths.generator)
    write_run_file(paths.run_file, RunRecord(g_md5, PARAMS, TAGS))
    out = lambda p, md5=None: {"path": str(p), "md5": md5 or file_md5(p)}  # noqa: E731
    stages = {
        "train": {"outs": [out(paths.generator), out(paths.discriminator)]},
        "generate": {"deps": [out(paths.generator)], "outs": [out(paths.generated, "a.dir")],
                     "params": {"params.yaml": {"generate": {"seed": 123}}}},
        "evaluate": {"deps": [out(paths.generated, "a.dir")], "outs": [out(paths.metrics)],
                     "params": {"params.yaml": {"evaluate": {"kid_subsets": 5}}}},
        "probe": {"deps": [out(paths.discriminator)], "outs": [out(paths.probe)],
                  "params": {"params.yaml": {"probe": {"train_sizes": [100], "seed": 0}}}},
    }
    paths.lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))
    return paths


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    for name in ("MLFLOW_EXPERIMENT_NAME", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(name, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    yield MlflowClient(uri)
    mlflow.set_tracking_uri(None)


def _shown(paths: SyncPaths, measured: tuple[Path, ...], alias: str | None) -> dict:
    """What sync should say the store shows: no run id, no version, whatever the store."""
    return {"generator_md5": file_md5(paths.generator), "epochs": 2,
            "metrics": {str(p): file_md5(p) for p in measured},
            "registered_model": "dcgan-generator",
            "alias": alias}


def _counts(client: MlflowClient, run_id: str) -> dict:
    run = client.get_run(run_id)
    return {"metrics": {k: len(client.get_metric_history(run_id, k)) for k in run.data.metrics},
            "artifacts": sorted(a.path for d in ("train", "generate", "images")
                                for a in client.list_artifacts(run_id, d)),
            "versions": len(client.search_model_versions(f"run_id = '{run_id}'")),
            "runs": len(client.search_runs([run.info.experiment_id]))}


def test_a_store_without_the_run_gets_a_complete_one(store: MlflowClient, tmp_path: Path) -> None:
    paths = _outputs(tmp_path)
    result = sync(paths)
    assert result["created"] is True and result["version"] == result["best_version"] == 1
    assert result["shown"] == _shown(paths, (paths.metrics, paths.probe), "best-mnist-5k")
    run = store.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "paper-mnist-5k-4px"
    assert run.data.params == {k: str(v) for k, v in PARAMS.items()}
    assert {k: run.data.tags[k] for k in TAGS} == TAGS
    assert run.data.tags["generator_md5"] == file_md5(paths.generator)
    assert run.data.tags["generate.seed"] == "123" and run.data.tags["evaluate.kid_subsets"] == "5"
    assert run.data.tags["probe.train_sizes"] == "[100]"
    assert [(m.step, m.value) for m in store.get_metric_history(run.info.run_id, "g_loss")] == \
        [(1, 0.5), (2, 0.75)]
    assert [(m.step, m.value) for m in
            store.get_metric_history(run.info.run_id, "epoch_frechet_distance")] == \
        [(1, 50.5), (2, 25.25)]
    metrics = run.data.metrics
    assert metrics["frechet_distance"] == 12.5 and metrics["floor.frechet_distance"] == 1.5
    assert metrics["probe.100.pixels"] == 0.5 and "modes_covered" not in metrics
    # What the metrics were measured under, and which epoch's generator: tags, not metrics.
    assert run.data.tags["protocol"] == "classifier cccccccc, N 1000, test, seed 0"
    assert run.data.tags["protocol.classifier_md5"] == "c" * 32
    assert not [k for k in metrics if k.startswith("protocol")]
    assert metrics["kept.epoch"] == 2 and run.data.tags["kept"] == "best ema generator, epoch 2"
    artifacts = _counts(store, run.info.run_id)["artifacts"]
    assert {"train/history.csv", "train/quality.csv", "train/p.gif", "train/d.keras",
            "generate/grid.png", "generate/interpolation.png"} <= set(artifacts)
    assert sum(a.endswith(".png") for a in artifacts if a.startswith("images/")) == 2
    loaded = mlflow.keras.load_model("models:/dcgan-generator@best-mnist-5k")
    z = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(loaded(z), _model(0)(z))


def test_a_second_sync_adds_nothing(store: MlflowClient, tmp_path: Path) -> None:
    paths = _outputs(tmp_path)
    first = sync(paths)
    before = _counts(store, first["run_id"])
    second = sync(paths)
    assert second["run_id"] == first["run_id"] and second["created"] is False
    assert second["logged"] == 0
    assert _counts(store, first["run_id"]) == before


def test_trains_own_run_is_completed_not_duplicated(store: MlflowClient, tmp_path: Path) -> None:
    paths = _outputs(tmp_path)
    with RunLog.open(PARAMS, TAGS, "paper-mnist-5k-4px") as log:  # what train leaves
        log.metrics({"d_loss": 1.5, "g_loss": 0.5}, step=1)
        log.metrics({"d_loss": 1.25, "g_loss": 0.75}, step=2)
        log.tags({"generator_md5": file_md5(paths.generator)})
    result = sync(paths)
    assert result["run_id"] == log.run_id and result["created"] is False
    # The same outputs, the same record as for a run made afresh.
    assert result["shown"] == _shown(paths, (paths.metrics, paths.probe), "best-mnist-5k")
    assert len(store.get_metric_history(log.run_id, "g_loss")) == 2  # not logged again
    assert store.get_run(log.run_id).data.metrics["probe_accuracy"] == 0.75
    assert _counts(store, log.run_id)["runs"] == 1


def test_metrics_of_another_generator_stay_out(store: MlflowClient, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    paths = _outputs(tmp_path)
    save_model(_model(7), paths.generator)  # `dvc repro train` alone: a new generator...
    write_run_file(paths.run_file, RunRecord(file_md5(paths.generator), PARAMS, TAGS))
    result = sync(paths)  # ...and dvc.lock still says the metrics measured the old one
    metrics = store.get_run(result["run_id"]).data.metrics
    assert "frechet_distance" not in metrics and metrics["probe_accuracy"] == 0.75
    assert "generate/grid.png" not in _counts(store, result["run_id"])["artifacts"]
    err = capsys.readouterr().err.splitlines()  # MLflow adds its own notes
    assert [line for line in err if line.startswith("warning:")] == [
        f"warning: {paths.metrics} was not measured on this generator (dvc.lock); left out "
        "of the MLflow run: run `dvc repro` to measure it"]
    assert result["best_version"] is None  # no Fréchet distance, no alias
    assert result["shown"] == _shown(paths, (paths.probe,), None)


def test_missing_outputs_are_one_line_and_log_nothing(store: MlflowClient, tmp_path: Path) -> None:
    paths = _outputs(tmp_path)
    paths.gif.unlink()  # a clone that has not pulled the DVC-cached outputs
    with pytest.raises(UserError, match=rf"^sync: {paths.gif} missing; run `dvc pull` \(or "
                       r"`dvc repro`\) first, then sync again$"):
        sync(paths)
    assert store.search_experiments() == [] or not store.search_runs(
        [e.experiment_id for e in store.search_experiments()])
