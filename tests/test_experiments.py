"""End-to-end experiments on the tiny pipeline of conftest's `pipeline` fixture (slow).

- Two experiments queued with `dvc exp run --queue` and run two at a time by
  `dvc queue start -j 2`, both logging to the repo's SQLite store: each is one MLflow
  run, named after it; `dvc exp show`, `dvc params diff`, `dvc metrics diff` and
  `dvc plots diff` see them; the registry's best alias lands on the lowest FD.
- Two experiments against a real `mlflow server` on 127.0.0.1 (SQLite backend and
  artifact store in a temporary directory) through MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from dvc_repo import clean_env, commit_all, mlflow_server, run
from mlflow.tracking import MlflowClient

QUEUED = {"lr-high": 1e-3, "lr-low": 1e-4}  # experiment name -> train.lr
SERVED = {"srv-a": 3e-4, "srv-b": 6e-4}


def _experiment_runs(client: MlflowClient, name: str) -> list:
    experiment = client.get_experiment_by_name("dcgan")
    return client.search_runs([experiment.experiment_id], f"tags.dvc_exp_name = '{name}'")


def _wait_for_queue(repo: Path, timeout: float = 900) -> str:
    """Poll `dvc queue status` until nothing is queued or running; return the last status."""
    deadline = time.monotonic() + timeout
    while True:
        status = run(["dvc", "queue", "status"], repo).stdout
        tasks = [line.split() for line in status.splitlines()[1:] if line.strip()]
        if not any(len(t) > 1 and t[-1] in ("Queued", "Running") for t in tasks):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"queue still busy after {timeout} s:\n{status}")
        time.sleep(3)


@pytest.fixture(scope="module")
def committed(pipeline: SimpleNamespace) -> SimpleNamespace:
    """The tiny pipeline up to date and committed, as `dvc exp` wants it; `baseline` is the
    commit."""
    run(["dvc", "repro"], pipeline.path)  # whatever other tests changed
    return SimpleNamespace(repo=pipeline.path, baseline=commit_all(pipeline.path, "outputs"))


@pytest.fixture(scope="module")
def queued(committed: SimpleNamespace) -> SimpleNamespace:
    """QUEUED, run by `dvc queue start -j 2` on the committed pipeline."""
    repo, baseline = committed.repo, committed.baseline
    for name, lr in QUEUED.items():
        run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"train.lr={lr}"], repo)
    run(["dvc", "queue", "start", "-j", "2"], repo)
    try:
        status = _wait_for_queue(repo)
    finally:
        run(["dvc", "queue", "stop"], repo, check=False)
    logs = {name: run(["dvc", "queue", "logs", name], repo, check=False).stdout
            for name in QUEUED}
    return SimpleNamespace(repo=repo, baseline=baseline, status=status, logs=logs,
                           client=MlflowClient(f"sqlite:///{repo / 'mlflow.db'}"))


@pytest.mark.slow
def test_queued_experiments_ran_two_at_a_time(queued: SimpleNamespace) -> None:
    for name in QUEUED:
        line = next(line for line in queued.status.splitlines() if f" {name} " in f" {line} ")
        assert line.split()[-1] == "Success", f"{queued.status}\n{queued.logs[name][-3000:]}"
    runs = [_experiment_runs(queued.client, name)[0] for name in QUEUED]
    (a, b) = sorted(runs, key=lambda r: r.info.start_time)
    # The second started before the first had finished training: they overlapped.
    assert b.info.start_time < a.info.start_time + 1000 * a.data.metrics["train_seconds"]


@pytest.mark.slow
def test_each_experiment_is_one_finished_mlflow_run(queued: SimpleNamespace) -> None:
    for name, lr in QUEUED.items():
        runs = _experiment_runs(queued.client, name)
        assert len(runs) == 1, name
        mlrun = runs[0]
        assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == name
        assert float(mlrun.data.params["train.lr"]) == lr
        assert mlrun.data.tags["git_commit"] == queued.baseline
        assert mlrun.data.tags["dataset"] == "mnist-5k" and mlrun.data.tags["arch"] == "paper"
        steps = [m.step for m in queued.client.get_metric_history(mlrun.info.run_id, "g_loss")]
        assert steps == [1, 2]
        for metric in ("frechet_distance", "probe_accuracy", "train_seconds"):
            assert metric in mlrun.data.metrics, (name, metric)
    # The store is the repo root's: nothing was written inside DVC's temporary copies.
    assert not list((queued.repo / ".dvc" / "tmp").rglob("mlflow.db"))


@pytest.mark.slow
def test_best_alias_names_the_lowest_frechet_distance(queued: SimpleNamespace) -> None:
    client = queued.client
    experiment = client.get_experiment_by_name("dcgan")
    finished = client.search_runs(
        [experiment.experiment_id],
        "attributes.status = 'FINISHED' and tags.dataset = 'mnist-5k'")
    scored = {r.info.run_id: r.data.metrics["frechet_distance"] for r in finished
              if "frechet_distance" in r.data.metrics}
    assert len(scored) >= 3  # the pipeline's own run and the two experiments
    best = client.get_model_version_by_alias("dcgan-generator", "best-mnist-5k")
    assert scored[best.run_id] == min(scored.values())


@pytest.mark.slow
def test_exp_show_lists_params_and_metrics(queued: SimpleNamespace) -> None:
    shown = json.loads(run(["dvc", "exp", "show", "--json"], queued.repo).stdout)
    revs = {rev["name"]: rev["data"] for commit in shown
            for exp in commit.get("experiments") or [] for rev in exp["revs"]}
    for name, lr in QUEUED.items():
        data = revs[name]
        assert data["params"]["params.yaml"]["data"]["train"]["lr"] == lr
        metrics = data["metrics"]["data/metrics.json"]["data"]
        assert metrics["frechet_distance"] > 0
        assert 0 <= data["metrics"]["data/probe.json"]["data"]["probe_accuracy"] <= 1


@pytest.mark.slow
def test_params_and_metrics_diff_between_experiments(queued: SimpleNamespace) -> None:
    a, b = QUEUED
    params = json.loads(run(["dvc", "params", "diff", a, b, "--json"], queued.repo).stdout)
    assert list(params["params.yaml"]) == ["train.lr"]  # the only param that differs
    assert params["params.yaml"]["train.lr"]["old"] == QUEUED[a]
    assert params["params.yaml"]["train.lr"]["new"] == QUEUED[b]
    metrics = json.loads(run(["dvc", "metrics", "diff", a, b, "--json"], queued.repo).stdout)
    fd = metrics["data/metrics.json"]["frechet_distance"]
    assert fd["old"] != fd["new"] and fd["diff"] == pytest.approx(fd["new"] - fd["old"])
    # Against the baseline commit too.
    base = json.loads(run(["dvc", "params", "diff", "HEAD", a, "--json"], queued.repo).stdout)
    assert base["params.yaml"]["train.lr"]["new"] == QUEUED[a]


@pytest.mark.slow
def test_plots_diff_renders_every_concern(queued: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "plots"
    run(["dvc", "plots", "diff", *QUEUED, "-o", str(out)], queued.repo)
    html = (out / "index.html").read_text()  # JSON inside: "Fréchet" is escaped
    for title in ("Generator and discriminator loss per epoch", "D(x) on real images",
                  "chet distance of a fixed sample"):
        assert title in html, title
    assert "images_per_sec" not in html  # a timing: MLflow's, not a DVC output's
    # Both experiments' sample grids, one image per revision.
    images = [p.name for p in (out / "static").iterdir()]
    for name in QUEUED:
        assert any(name in image and "grid.png" in image for image in images), images


# ---------------------------------------------------------------- a real MLflow server


@pytest.fixture
def server(tmp_path: Path):
    """`mlflow server` on 127.0.0.1 with a SQLite backend and artifacts in tmp_path."""
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path) as served:
        yield served


@pytest.mark.slow
def test_experiments_against_a_real_mlflow_server(committed: SimpleNamespace, server,
                                                 tmp_path: Path) -> None:
    repo = committed.repo
    env = clean_env(MLFLOW_TRACKING_URI=server.url)
    for name, lr in SERVED.items():  # up to track, which logs the files and the model
        run(["dvc", "exp", "run", "--temp", "-n", name, "-S", f"train.lr={lr}", "track"], repo,
            env=env)
    client = MlflowClient(server.url)
    runs = {name: _experiment_runs(client, name) for name in SERVED}
    assert {name: len(r) for name, r in runs.items()} == {name: 1 for name in SERVED}
    for name, lr in SERVED.items():
        mlrun = runs[name][0]
        assert mlrun.info.status == "FINISHED"
        assert float(mlrun.data.params["train.lr"]) == lr  # the params differ as set
        for metric in ("g_loss", "d_loss", "epoch_frechet_distance"):
            history = client.get_metric_history(mlrun.info.run_id, metric)
            assert sorted(m.step for m in history) == [1, 2], (name, metric)
        # Artifacts go through the server and come back.
        path = client.download_artifacts(mlrun.info.run_id, "train/history.csv",
                                         str(tmp_path / name))
        history = pd.read_csv(path)
        assert history["epoch"].tolist() == [1, 2]
        assert history["g_loss"].tolist() == pytest.approx(
            [m.value for m in sorted(client.get_metric_history(mlrun.info.run_id, "g_loss"),
                                     key=lambda m: m.step)])
    # The artifacts live in the server's store, and nothing reached the repo's own store.
    assert list((server.root / "artifacts").rglob("history.csv"))
    local = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    assert all(not _experiment_runs(local, name) for name in SERVED)
    versions = client.search_model_versions("name = 'dcgan-generator'")
    assert {v.run_id for v in versions} == {r[0].info.run_id for r in runs.values()}
