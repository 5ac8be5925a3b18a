"""Helpers for test_postgres.py: a throw-away PostgreSQL on 127.0.0.1, and the scenario
those tests check, a copy of the tiny pipeline tracked by `mlflow server` on it.

A real PostgreSQL is started from its own programs (initdb, pg_ctl) in a temporary
directory, with password authentication, as the `postgres` user when the tests run as root
(PostgreSQL refuses to run as root). `.ci/run` installs it (`scripts/ci_services.sh`); where
it is not installed, `postgres_cluster` skips, and `pytest -rs` (the default here) says why.

conftest's `head_start` runs `track_on_postgres` in the background from the session's start,
so everything here runs commands with the `env` it is given (os.environ may be changed by the
tests running meanwhile) and asks MLflow nothing.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from dvc_repo import Background, commit_all, free_port, mlflow_server, run

PASSWORD = "dcgan-test"  # of the superuser and of the role `mlflow`; the server is ours alone
NOT_INSTALLED = ("PostgreSQL is not installed: no initdb and pg_ctl on PATH or in "
                 "/usr/lib/postgresql/*/bin; `bash scripts/ci_services.sh` installs it "
                 "(as root, with apt-get)")
NO_USER = ("running as root, and there is no `postgres` user to run PostgreSQL as "
           "(the Debian package creates it: `bash scripts/ci_services.sh`)")


def _pg_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl: on PATH, else the newest Debian
    /usr/lib/postgresql/<major>/bin (the Debian package leaves them off PATH)."""
    candidates = [Path(p).parent for p in [shutil.which("initdb")] if p]
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True,
                         key=lambda d: [int(x) for x in d.parent.name.split(".") if x.isdigit()])
    return next((d for d in candidates if all(os.access(d / name, os.X_OK)
                                              for name in ("initdb", "pg_ctl"))), None)


def unavailable() -> str | None:
    """Why PostgreSQL cannot run here (the reason to skip), or None."""
    if _pg_bindir() is None:
        return NOT_INSTALLED
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return NO_USER
    return None


def _as_owner() -> list[str]:
    """The prefix that runs PostgreSQL's programs: none for an ordinary user; as root,
    `runuser -u postgres --` (the user the Debian package creates)."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@contextlib.contextmanager
def postgres_cluster(env: dict[str, str]) -> Iterator[SimpleNamespace]:
    """A throw-away PostgreSQL on 127.0.0.1 with an empty database `mlflow` owned by the
    role `mlflow`. Yields `uri` (SQLAlchemy's, for `mlflow server`) and `conninfo` (for
    psycopg). Stopped and deleted on exit. Skips where PostgreSQL is not installed."""
    import psycopg

    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    bindir, as_owner = _pg_bindir(), _as_owner()
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
             "--encoding=UTF8", "--no-sync"], root, env=env)
        # 2. Listen on 127.0.0.1 only, the socket in our directory (not /var/run/postgresql);
        # fsync off, as the data is thrown away.
        port = free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
        started = run([*pg_ctl, "-l", str(log), "-w", "-t", "60", "-o", options, "start"], root,
                      check=False, env=env)
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
            run([*pg_ctl, "-m", "fast", "stop"], root, check=False, timeout=60, env=env)
        shutil.rmtree(root, ignore_errors=True)


def track_on_postgres(root: Path, pipeline: Background, env: dict[str, str]) -> SimpleNamespace:
    """test_postgres.py's scenario. root/clone must receive, by the time `pipeline` ends, a
    copy of the tiny pipeline's workspace and DVC cache after its first repro, without git
    history or MLflow store (`dvc_repo.copy_workspace`). Starts `postgres_cluster` and, once
    the copy is there, `mlflow server` on it (artifacts under root/server/artifacts); commits
    the copy to a new git repo and reruns every stage that talks to MLflow, train to probe,
    with MLFLOW_TRACKING_URI pointing at the server.

    Returns `postgres` (the cluster), `clone`, `commit`, `url`, `artifacts`, `repro` (the
    repro's output) and `stop`, which stops the server and the cluster; both keep running
    until then, for the tests to ask."""
    stack = contextlib.ExitStack()
    try:
        postgres = stack.enter_context(postgres_cluster(env))
        pipeline.result()
        clone, server_root = root / "clone", root / "server"
        server_root.mkdir()
        run(["git", "init", "-q"], clone, env=env)
        commit = commit_all(clone, "tiny pipeline", env=env)
        server = stack.enter_context(mlflow_server(postgres.uri, server_root, env=env))
        # train starts the run; the track stage adds what generate, evaluate and probe
        # wrote (artifacts, metrics) and the registry's alias.
        repro = run(["dvc", "repro", "-f", "--downstream", "train"], clone,
                    env={**env, "MLFLOW_TRACKING_URI": server.url}).stdout
    except BaseException:
        stack.close()
        raise
    return SimpleNamespace(postgres=postgres, clone=clone, commit=commit, url=server.url,
                           artifacts=server_root / "artifacts", repro=repro, stop=stack.close)
