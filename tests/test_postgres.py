"""End-to-end: the tiny pipeline against a team tracking server, `mlflow server` with a
PostgreSQL backend store and a shared artifact root, all on 127.0.0.1 (slow, about two
minutes: the server's first start creates its tables, then one `dvc repro`).

A real PostgreSQL is started here from its own programs (initdb, pg_ctl) in a temporary
directory, with password authentication, as the `postgres` user when the tests run as root
(PostgreSQL refuses to run as root). `.ci/run` installs it (`scripts/ci_services.sh`); where
it is not installed the tests skip, and `pytest -rs` (the default here) says why.
"""

from __future__ import annotations

import math
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
from dvc_repo import clean_env, free_port, make_clone, mlflow_server, run
from mlflow.tracking import MlflowClient

PASSWORD = "dcgan-test"  # of the superuser and of the role `mlflow`; the server is ours alone
NOT_INSTALLED = ("PostgreSQL is not installed: no initdb and pg_ctl on PATH or in "
                 "/usr/lib/postgresql/*/bin; `bash scripts/ci_services.sh` installs it "
                 "(as root, with apt-get)")


def _pg_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl: on PATH, else the newest Debian
    /usr/lib/postgresql/<major>/bin (the Debian package leaves them off PATH)."""
    candidates = [Path(p).parent for p in [shutil.which("initdb")] if p]
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True,
                         key=lambda d: [int(x) for x in d.parent.name.split(".") if x.isdigit()])
    return next((d for d in candidates if all(os.access(d / name, os.X_OK)
                                              for name in ("initdb", "pg_ctl"))), None)


def _as_owner() -> list[str]:
    """The prefix that runs PostgreSQL's programs: none for an ordinary user; as root,
    `runuser -u postgres --` (the user the Debian package creates)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root, and there is no `postgres` user to run PostgreSQL as "
                    "(the Debian package creates it: `bash scripts/ci_services.sh`)")
    return ["runuser", "-u", "postgres", "--"]


@pytest.fixture(scope="module")
def postgres() -> Iterator[SimpleNamespace]:
    """A throw-away PostgreSQL on 127.0.0.1 with an empty database `mlflow` owned by the
    role `mlflow`. Yields `uri` (SQLAlchemy's, for `mlflow server`) and `conninfo` (for
    psycopg). Stopped and deleted afterwards."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip(NOT_INSTALLED)
    as_owner = _as_owner()
    # pytest's temporary directories are private to the user running the tests (mode 700),
    # so the server's user gets a directory of its own.
    root = Path(tempfile.mkdtemp(prefix="dcgan-pg-"))
    data, log = root / "data", root / "postgres.log"
    pg_ctl = [*as_owner, str(bindir / "pg_ctl"), "-D", str(data)]
    try:
        (root / "pw").write_text(PASSWORD)
        if as_owner:
            shutil.chown(root, "postgres")
        # 1. A cluster whose TCP logins need a password; C locale: the OS may have none other.
        run([*as_owner, str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
             f"--pwfile={root / 'pw'}", "--auth=scram-sha-256", "--locale=C",
             "--encoding=UTF8", "--no-sync"], root)
        # 2. Listen on 127.0.0.1 only, the socket in our directory (not /var/run/postgresql);
        # fsync off, as the data is thrown away.
        port = free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
        started = run([*pg_ctl, "-l", str(log), "-w", "-t", "60", "-o", options, "start"], root,
                      check=False)
        assert started.returncode == 0, f"{started.stdout}{started.stderr}{log.read_text()}"
        # 3. The role and database a team's server would get.
        conninfo = {"host": "127.0.0.1", "port": port, "user": "postgres", "password": PASSWORD,
                    "dbname": "postgres"}
        with psycopg.connect(**conninfo, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE mlflow LOGIN PASSWORD '{PASSWORD}'")
            conn.execute("CREATE DATABASE mlflow OWNER mlflow")
        yield SimpleNamespace(uri=f"postgresql://mlflow:{PASSWORD}@127.0.0.1:{port}/mlflow",
                              conninfo={**conninfo, "user": "mlflow", "dbname": "mlflow"})
    finally:
        if (data / "postmaster.pid").exists():
            run([*pg_ctl, "-m", "fast", "stop"], root, check=False, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def served(postgres: SimpleNamespace,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """One `dvc repro` of a tiny clone, tracked by `mlflow server` on `postgres` with its
    artifacts under a shared directory. Yields `clone`, `commit`, `url`, `artifacts` (that
    directory), `client` and `run` (the one MLflow run of the experiment)."""
    clone, root = tmp_path_factory.mktemp("pg-clone"), tmp_path_factory.mktemp("pg-server")
    commit = make_clone(clone)
    # The stages before train do not track: they run while the server creates its tables.
    with open(root / "untracked.log", "w") as log:
        untracked = subprocess.Popen(["dvc", "repro", "classifier"], cwd=clone, env=clean_env(),
                                     stdout=log, stderr=subprocess.STDOUT)
    try:
        with mlflow_server(postgres.uri, root) as server:
            untracked.wait(timeout=900)
            assert untracked.returncode == 0, (root / "untracked.log").read_text()[-3000:]
            run(["dvc", "repro"], clone, env=clean_env(MLFLOW_TRACKING_URI=server.url))
            client = MlflowClient(server.url)
            [mlrun] = client.search_runs([client.get_experiment_by_name("dcgan").experiment_id])
            yield SimpleNamespace(clone=clone, commit=commit, url=server.url, client=client,
                                  artifacts=root / "artifacts", run=mlrun)
    finally:
        if untracked.poll() is None:  # the server failed to start
            untracked.kill()
            untracked.wait()


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
