"""Where the MLflow store is, and making sure it answers: the only place that sets the URI.

The store defaults to `sqlite:///<repo root>/mlflow.db` with artifacts under
`<repo root>/mlruns`, the repo root being `$DVC_ROOT` when DVC runs the stage (so
`dvc exp run --temp/--queue` log to the main store) and the current directory otherwise.
`MLFLOW_TRACKING_URI` overrides it. Importing this module changes nothing: the URI is set
by `use_store`, which every other tracking module calls first.
"""

from __future__ import annotations

import contextlib
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import filelock
import mlflow

from dcgan.core.errors import UserError

EXPERIMENT = "dcgan"


def repo_root() -> Path:
    """The directory that holds the MLflow store: `$DVC_ROOT`, else the current one."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri() -> str:
    """`$MLFLOW_TRACKING_URI` if set, else the SQLite store at the repo root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def experiment_name() -> str:
    """`$MLFLOW_EXPERIMENT_NAME`, else `dcgan`."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT


def check_store(timeout: float = 5.0) -> None:
    """Fail fast when the tracking URI names a server that does not answer, or that
    refuses the host name it is reached by.

    MLflow itself retries an unreachable server for minutes; train calls this before
    it loads anything, so a wrong `MLFLOW_TRACKING_URI` costs seconds, not a training run.
    The probe is an API call rather than /health: a server reached by a name missing from
    its `--allowed-hosts` (by default only localhost and private IPs are allowed) answers
    /health but refuses every API call with 403.

    Raises:
        UserError: if an http(s) tracking server does not answer, or refuses the host name.
    """
    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    try:
        probe = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
        with urllib.request.urlopen(probe, timeout=timeout):
            pass
    except urllib.error.HTTPError as err:
        # It answered: a server (or a proxy in front of one) is there. Any status but the
        # host check's is MLflow's client's to handle (a 401 asks for the credentials it sends).
        if err.code == 403 and b"Invalid Host header" in err.read(500):
            host = urllib.parse.urlsplit(uri).netloc
            raise UserError(
                f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) refuses requests for host "
                f"{host!r}: start it with `--allowed-hosts {host}` (a comma-separated list), "
                "or use a name it allows"
            ) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(
            f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is unreachable: {reason}; "
            "start it (e.g. `mlflow server --host 127.0.0.1 --port 5000`) or unset "
            "MLFLOW_TRACKING_URI to use the local store mlflow.db"
        ) from None


@contextlib.contextmanager
def _store_lock() -> Iterator[None]:
    """Serialise store set-up across processes when the store is a local SQLite file.

    Two experiments started together by `dvc queue start -j 2` would otherwise both
    create the tables of a new mlflow.db, or both create the experiment, and one fails.
    """
    db = _sqlite_file(tracking_uri())
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(f"{db}.lock", timeout=300):
        yield


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def use_store(create: bool = True) -> str:
    """Point mlflow at the store and make sure the experiment exists; return its id.

    Raises:
        UserError: if the server is unreachable, or if `create` is False and the
            experiment does not exist.
    """
    check_store()
    # Decide before set_tracking_uri, which exports MLFLOW_TRACKING_URI itself.
    default_store = "MLFLOW_TRACKING_URI" not in os.environ
    name = experiment_name()
    db = _sqlite_file(tracking_uri())
    if not create and db is not None and not db.exists():
        raise UserError(f"no MLflow store at {db}; run the pipeline first (`dvc repro`) or "
                        "set MLFLOW_TRACKING_URI")
    with _store_lock():
        mlflow.set_tracking_uri(tracking_uri())
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        if not create:
            raise UserError(f"the MLflow store {tracking_uri()} has no experiment {name!r}; "
                            "run the pipeline first (`dvc repro`)")
        # Artifacts of the default store live beside it, not under the cwd, which
        # is a throw-away copy for `dvc exp run --temp`. A server picks its own.
        location = None
        if default_store:
            location = (repo_root() / "mlruns" / name).as_uri()
        return mlflow.create_experiment(name, artifact_location=location)
