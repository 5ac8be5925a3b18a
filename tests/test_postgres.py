"""End-to-end: the tiny pipeline against a team tracking server, `mlflow server` with a
PostgreSQL backend store and a shared artifact root, all on 127.0.0.1 (slow, about a minute:
the server's first start creates its tables, then the stages that track rerun, train to
probe, in a copy of the session's `pipeline` fixture; conftest's `head_start` runs it in the
background from the session's start, see postgres_server.py).

A real PostgreSQL is started from its own programs (initdb, pg_ctl) in a temporary
directory, with password authentication, as the `postgres` user when the tests run as root
(PostgreSQL refuses to run as root). `.ci/run` installs it (`scripts/ci_services.sh`); where
it is not installed the tests skip, and `pytest -rs` (the default here) says why.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from types import SimpleNamespace
from typing import TYPE_CHECKING

import postgres_server
import psycopg
import pytest
from dvc_repo import clean_env, ran_stages, run
from mlflow.tracking import MlflowClient

if TYPE_CHECKING:
    from conftest import HeadStart


@pytest.fixture(scope="module")
def served(head_start: HeadStart) -> Iterator[SimpleNamespace]:
    """The tracked stages (train, generate, evaluate, probe) of a private copy of the
    session's tiny pipeline, rerun by `dvc repro -f --downstream train` and tracked by
    `mlflow server` on a throw-away PostgreSQL with its artifacts under a shared directory
    (`postgres_server.track_on_postgres`). Yields `clone`, `commit`, `url`, `artifacts`
    (that directory), `client`, `run` (the one MLflow run of the experiment) and
    `postgres`. The servers stop afterwards."""
    if head_start.served is None:
        pytest.skip(postgres_server.unavailable())
    tracked = head_start.served.result()
    try:
        assert ran_stages(tracked.repro) == {"train", "generate", "evaluate", "probe", "track"}, \
            tracked.repro
        client = MlflowClient(tracked.url)
        [mlrun] = client.search_runs([client.get_experiment_by_name("dcgan").experiment_id])
        yield SimpleNamespace(clone=tracked.clone, commit=tracked.commit, url=tracked.url,
                              artifacts=tracked.artifacts, client=client, run=mlrun,
                              postgres=tracked.postgres)
    finally:
        tracked.stop()


@pytest.fixture(scope="module")
def postgres(served: SimpleNamespace) -> SimpleNamespace:
    """The PostgreSQL the server stores in: `uri` (SQLAlchemy's) and `conninfo` (psycopg's)."""
    return served.postgres


@pytest.mark.slow
def test_run_finished_with_params_and_metrics(served: SimpleNamespace) -> None:
    mlrun, client = served.run, served.client
    assert mlrun.info.status == "FINISHED"
    assert mlrun.info.run_name == f"paper-mnist-5k-16px@{served.commit[:7]}"
    assert mlrun.data.tags["git_commit"] == served.commit
    assert mlrun.data.params["train.epochs"] == "2"
    assert mlrun.data.params["preprocess.image_size"] == "16"
    for name in ("frechet_distance", "floor.kid", "probe_accuracy", "train_seconds"):
        assert math.isfinite(mlrun.data.metrics[name]), name
    for name in ("g_loss", "d_loss", "epoch_frechet_distance"):
        history = client.get_metric_history(mlrun.info.run_id, name)
        assert sorted(m.step for m in history) == [1, 2], name


@pytest.mark.slow
def test_artifacts_and_model_land_in_the_shared_root(served: SimpleNamespace) -> None:
    mlrun, client = served.run, served.client
    # The clients upload through the server, which alone writes the shared root.
    assert mlrun.info.artifact_uri.startswith("mlflow-artifacts:/")
    run_dir = served.artifacts / mlrun.info.experiment_id / mlrun.info.run_id / "artifacts"
    for artifact, local in (("train/history.csv", "data/train/history.csv"),
                            ("generate/grid.png", "data/generated/grid.png")):
        assert (run_dir / artifact).read_bytes() == (served.clone / local).read_bytes(), artifact
    assert len(list((run_dir / "images").glob("epoch_grid+step+*.png"))) == 2
    [model] = client.search_logged_models(experiment_ids=[mlrun.info.experiment_id])
    assert model.source_run_id == mlrun.info.run_id and model.name == "generator"
    model_dir = served.artifacts / mlrun.info.experiment_id / "models" / model.model_id
    assert (model_dir / "artifacts" / "MLmodel").is_file()
    [version] = client.search_model_versions("name = 'dcgan-generator'")
    assert version.run_id == mlrun.info.run_id
    assert client.get_model_version_by_alias("dcgan-generator", "best-mnist-5k").version == "1"
    # Nothing went to the clone's own default store.
    assert not (served.clone / "mlflow.db").exists() and not (served.clone / "mlruns").exists()


@pytest.mark.slow
def test_postgres_holds_the_run(served: SimpleNamespace, postgres: SimpleNamespace) -> None:
    run_id = served.run.info.run_id
    with psycopg.connect(**postgres.conninfo) as conn:
        runs = conn.execute("SELECT run_uuid, name, status FROM runs").fetchall()
        g_loss = conn.execute("SELECT step, value FROM metrics WHERE run_uuid = %s AND "
                              "key = 'g_loss' ORDER BY step", (run_id,)).fetchall()
        epochs = conn.execute("SELECT value FROM params WHERE run_uuid = %s AND "
                              "key = 'train.epochs'", (run_id,)).fetchall()
        versions = conn.execute("SELECT name, version, run_id FROM model_versions").fetchall()
    print(f"runs: {runs}\ng_loss: {g_loss}\ntrain.epochs: {epochs}\n"
          f"model_versions: {versions}")  # the evidence, with -s
    assert runs == [(run_id, served.run.info.run_name, "FINISHED")]
    history = served.client.get_metric_history(run_id, "g_loss")
    assert g_loss == sorted((m.step, m.value) for m in history)
    assert epochs == [("2",)]
    assert versions == [("dcgan-generator", 1, run_id)]


@pytest.mark.slow
def test_compare_reads_the_team_server(served: SimpleNamespace) -> None:
    out = run(["dcgan", "compare"], served.clone,
              env=clean_env(MLFLOW_TRACKING_URI=served.url)).stdout
    assert f"# 1 finished run in {served.url}," in out
    assert served.run.info.run_id[:8] in out


@pytest.mark.slow
def test_a_host_name_the_server_refuses_fails_in_one_line(served: SimpleNamespace) -> None:
    # 127.1 is 127.0.0.1 by a name outside the server's default --allowed-hosts: the server
    # answers /health but refuses every API call (403), as it does a team's DNS name.
    url = served.url.replace("127.0.0.1", "127.1")
    proc = run(["dcgan", "compare"], served.clone, check=False,
               env=clean_env(MLFLOW_TRACKING_URI=url))
    host = url.removeprefix("http://")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: MLflow tracking server {url} (MLFLOW_TRACKING_URI) refuses requests for host "
        f"'{host}': start it with `--allowed-hosts {host}` (a comma-separated list), or use a "
        "name it allows"]
