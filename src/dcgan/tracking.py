"""MLflow tracking: the only module that imports mlflow.

One MLflow run per trained model. The train stage opens it with `start_run` (a
resumed training reopens its run) and ends by writing the generator's md5 to a
small file that dvc.yaml declares as an output (`write_run_file`); the generate,
evaluate and probe stages find the run that trained that generator with
`resume_run`. A hash, not the run id, so that identical runs write identical files.

The store defaults to `sqlite:///<repo root>/mlflow.db` with artifacts under
`<repo root>/mlruns`, the repo root being `$DVC_ROOT` when DVC runs the stage
(so `dvc exp run --temp/--queue` log to the main store) and the current
directory otherwise. `MLFLOW_TRACKING_URI` overrides it. Importing this module
changes nothing: the URI is set when a run starts.

Each run is named after its DVC experiment (`dvc exp run`) or, outside one, after
arch, dataset, size and commit, and tagged with the git commit, the DVC experiment,
the dataset, its data hash and the architecture. The generator is logged as a Keras
model and registered as a version of `dcgan-generator`; after evaluation the alias
`best-<dataset>` moves to the version with the lowest Fréchet distance.
`search_runs` feeds the `dcgan compare` command.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock
import mlflow
import numpy as np
import pandas as pd

from dcgan.errors import UserError
from dcgan.outputs import write_json

if TYPE_CHECKING:  # keras is imported where it is used, so `dcgan compare` starts fast
    import keras

EXPERIMENT = "dcgan"
# Every trained generator becomes a version of this registered model.
REGISTERED_MODEL = "dcgan-generator"


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


def _use_store(create: bool = True) -> str:
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


def source_tags() -> dict[str, str]:
    """Where a run comes from: `git_commit` (the experiment's baseline commit under
    `dvc exp run`, else HEAD of the current directory's repo) and, under `dvc exp run`,
    `dvc_exp_name`. Keys whose value is unknown are left out."""
    tags = {}
    commit = os.environ.get("DVC_EXP_BASELINE_REV") or _git_head()
    if commit:
        tags["git_commit"] = commit
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


def _git_head() -> str | None:
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def run_name(default: str | None, tags: dict[str, str]) -> str | None:
    """The DVC experiment's name when there is one, else `default@<short commit>` (None:
    MLflow picks a random name)."""
    if "dvc_exp_name" in tags:
        return tags["dvc_exp_name"]
    if default is not None and "git_commit" in tags:
        return f"{default}@{tags['git_commit'][:7]}"
    return default


# Steps a reopened run already holds, per metric key ("image:<key>" for image series). A
# resumed training repeats the epoch it was killed in, and logs it only where it is missing.
_logged: dict[str, int] = {}
# MLflow names an image series' files `<key>+step+<n>+timestamp+...` (`%` before 3.x).
_IMAGE_STEP = re.compile(r"^(?P<key>.+?)[+%]step[+%](?P<step>\d+)[+%]")


@contextlib.contextmanager
def start_run(params: dict[str, Any], tags: dict[str, str], default_name: str | None = None,
              resume: str | None = None) -> Iterator[str]:
    """Open a new run named by `run_name` and log `params`, `tags` and `source_tags()`.

    With `resume`, the id of a run in the store (an interrupted training's), reopen that
    run instead: metric and image steps it already has are not logged again. The run ends
    FINISHED when the block completes and FAILED when it raises.

    Yields:
        The run id.
    """
    experiment_id = _use_store()
    tags = {**tags, **source_tags()}
    if resume is not None and not _run_exists(resume):
        resume = None
    opened = (mlflow.start_run(run_id=resume) if resume else
              mlflow.start_run(experiment_id=experiment_id, run_name=run_name(default_name, tags)))
    with opened as run:
        _logged.clear()
        if resume:
            _logged.update(_logged_steps(resume))
        try:
            # A reopened run takes the same values again, which MLflow allows.
            mlflow.log_params({k: "null" if v is None else v for k, v in params.items()})
            mlflow.set_tags(tags)
            yield run.info.run_id
        finally:
            _logged.clear()


def _run_exists(run_id: str) -> bool:
    try:
        mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True


def _logged_steps(run_id: str) -> dict[str, int]:
    """The highest step of each metric and image series of a run."""
    client = mlflow.MlflowClient()
    steps = {key: max(m.step for m in client.get_metric_history(run_id, key))
             for key in client.get_run(run_id).data.metrics}
    for artifact in client.list_artifacts(run_id, "images"):
        match = _IMAGE_STEP.match(Path(artifact.path).name)
        if match:
            key = f"image:{match['key']}"
            steps[key] = max(steps.get(key, 0), int(match["step"]))
    return steps


def write_run_file(run_file: Path, generator_md5: str) -> None:
    """Tag the active run with the md5 of the generator it trained, and write that md5 to
    `run_file`, by which `resume_run` finds the run again."""
    mlflow.set_tag("generator_md5", generator_md5)
    write_json({"generator_md5": generator_md5}, run_file)


@contextlib.contextmanager
def resume_run(run_file: Path) -> Iterator[str]:
    """Reopen the run that trained the generator named in `run_file` (the newest such run,
    preferring the current DVC experiment's: identical params train identical generators).

    Raises:
        UserError: if the file is missing or broken, or no run in the store trained it.
    """
    try:
        md5 = json.loads(Path(run_file).read_text())["generator_md5"]
    except (OSError, ValueError, KeyError, TypeError):
        md5 = None
    if not isinstance(md5, str) or not re.fullmatch(r"[0-9a-f]{32}", md5):
        raise UserError(f"{run_file}: no generator hash to find its MLflow run by; run the "
                        "train stage first (`dvc repro train`)")
    _use_store()
    runs = mlflow.search_runs(experiment_names=[experiment_name()], output_format="list",
                              filter_string=f"tags.generator_md5 = '{md5}'",
                              order_by=["attributes.start_time DESC"])
    ours = [r for r in runs if r.data.tags.get("dvc_exp_name") == os.environ.get("DVC_EXP_NAME")]
    if not runs:
        raise UserError(
            f"{run_file}: no run in the MLflow store {tracking_uri()} trained this generator "
            f"(md5 {md5}); rerun training with `dvc repro -f train`"
        )
    with mlflow.start_run(run_id=(ours or runs)[0].info.run_id) as run:
        yield run.info.run_id


def find_run(prefix: str) -> mlflow.entities.Run:
    """The run of the pipeline's experiment whose id starts with `prefix` (as `dcgan compare`
    shows ids: their first 8 characters).

    Raises:
        UserError: if `prefix` is not hex, or it matches no run or several.
    """
    if not re.fullmatch(r"[0-9a-f]{4,32}", prefix):
        raise UserError(f"{prefix!r} is not a run id: give its first 4 or more hex digits, "
                        "as `dcgan compare` shows them")
    _use_store(create=False)
    runs = mlflow.search_runs(experiment_names=[experiment_name()], output_format="list")
    hits = [r for r in runs if r.info.run_id.startswith(prefix)]
    if len(hits) != 1:
        what = "no run" if not hits else f"{len(hits)} runs"
        raise UserError(f"{what} of experiment {experiment_name()!r} in {tracking_uri()} "
                        f"{'has' if not hits else 'have'} an id starting {prefix!r}; "
                        "`dcgan compare --all` lists them")
    return hits[0]


def set_tags(tags: dict[str, str]) -> None:
    """Set tags on the active run."""
    mlflow.set_tags(tags)


def tag_params(params: dict[str, Any]) -> None:
    """Record a downstream stage's params as tags: unlike params, tags may change when
    that stage reruns on the same model."""
    mlflow.set_tags({k: "null" if v is None else str(v) for k, v in params.items()})


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested metrics as flat `a.b.c` names (as `dvc metrics show` names them), numbers
    only: None and other non-numbers (e.g. an unlabelled dataset's class metrics) are left out.
    """
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, f"{name}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def log_metrics(metrics: dict[str, Any], step: int | None = None) -> None:
    """Log numeric metrics to the active run; nested dicts become dotted names. Steps a
    reopened run already has are skipped."""
    flat = {k: v for k, v in flatten_metrics(metrics).items()
            if step is None or step > _logged.get(k, 0)}
    if flat:
        mlflow.log_metrics(flat, step=step)


def log_image(image: np.ndarray, key: str, step: int) -> None:
    """Log an image (H, W[, C] uint8) as step `step` of the image series `key`, unless a
    reopened run already has that step."""
    if step > _logged.get(f"image:{key}", 0):
        mlflow.log_image(image, key=key, step=step)


def log_artifacts(paths: list[Path], artifact_path: str | None = None) -> None:
    """Copy files or directories into the active run's artifacts."""
    for path in paths:
        if Path(path).is_dir():
            mlflow.log_artifacts(str(path), artifact_path=f"{artifact_path or ''}/{path.name}")
        else:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)


class _KerasFlavor:
    """`mlflow.keras` with the model directory made first: MLflow 3.17's Keras `save_model`
    writes the input example before it creates that directory, so `log_model(...,
    input_example=...)` fails with FileNotFoundError on input_example.json."""

    __name__ = "mlflow.keras"

    @staticmethod
    def save_model(path: str, **kwargs: Any) -> None:
        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)


def log_generator(generator: keras.Model, tags: dict[str, str]) -> int:
    """Log the generator as an MLflow Keras model, with a signature and an input example,
    and register it as a new version of `REGISTERED_MODEL` carrying `tags`.

    Returns:
        The new model version's number.
    """
    requirements = [f"tensorflow=={_version('tensorflow')}", f"keras=={_version('keras')}"]
    # Input: a batch of noise vectors z; output: images in [-1, 1].
    z = np.random.default_rng(0).standard_normal((2, generator.input_shape[-1])).astype("float32")
    signature = mlflow.models.infer_signature(z, np.asarray(generator(z, training=False)))
    info = mlflow.models.Model.log(
        artifact_path=None, name="generator", flavor=_KerasFlavor, model=generator,
        signature=signature, input_example=z, pip_requirements=requirements,
        registered_model_name=REGISTERED_MODEL,
    )
    version = int(info.registered_model_version)
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(REGISTERED_MODEL, str(version), key, value)
    return version


def best_alias(dataset: str) -> str:
    """The registry alias that marks the best generator of `dataset`, e.g. `best-mnist-5k`."""
    return f"best-{dataset}"


def promote_best(run_id: str, metric: str = "frechet_distance") -> int | None:
    """Move the alias `best_alias(<run's dataset>)` to the registered generator version
    with the lowest `metric` among FINISHED runs of that dataset, in any experiment.

    Call it after the run has closed, so that it counts as finished.

    Returns:
        The version the alias now names, or None if no finished run of the dataset has
        both the metric and a registered generator.
    """
    _use_store()
    client = mlflow.MlflowClient()
    dataset = client.get_run(run_id).data.tags.get("dataset")
    if dataset is None:
        return None
    versions = {}  # run id -> its newest registered version
    for mv in client.search_model_versions(f"name = '{REGISTERED_MODEL}'"):
        versions[mv.run_id] = max(versions.get(mv.run_id, 0), int(mv.version))
    candidates = mlflow.search_runs(
        search_all_experiments=True, output_format="list",
        filter_string=f"attributes.status = 'FINISHED' and tags.dataset = '{dataset}'",
    )
    scored = [(r.data.metrics[metric], r.info.start_time, r.info.run_id) for r in candidates
              if metric in r.data.metrics and r.info.run_id in versions]
    if not scored:
        return None
    best_run = min(scored)[2]  # ties: the earlier run keeps the alias
    client.set_registered_model_alias(REGISTERED_MODEL, best_alias(dataset), versions[best_run])
    return versions[best_run]


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def search_runs(dataset: str | None = None, finished_only: bool = False) -> pd.DataFrame:
    """This store's runs of the pipeline's experiment, newest first, as MLflow's own table.

    One row per run; columns as `mlflow.search_runs` names them: `run_id`, `status`,
    `start_time`, `end_time`, `params.<section>.<key>`, `metrics.<name>`, `tags.<name>`
    (among them `tags.mlflow.runName`, `tags.dataset`, `tags.dvc_exp_name`).

    Args:
        dataset: keep only runs whose `dataset` tag is this (e.g. `mnist-5k`).
        finished_only: keep only runs whose status is FINISHED.

    Raises:
        UserError: if the store holds no such experiment.
    """
    if dataset is not None and "'" in dataset:
        raise UserError(f"dataset name {dataset!r} cannot contain a quote")
    _use_store(create=False)
    filters = []
    if dataset is not None:
        filters.append(f"tags.dataset = '{dataset}'")
    if finished_only:
        filters.append("attributes.status = 'FINISHED'")
    name = experiment_name()
    return mlflow.search_runs(experiment_names=[name], filter_string=" and ".join(filters),
                              order_by=["attributes.start_time DESC"], output_format="pandas")
