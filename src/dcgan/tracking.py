"""MLflow tracking: the only module that imports mlflow.

One MLflow run per trained model. The train stage opens it with `start_run`
and writes its id to a small file that dvc.yaml declares as an output; the
generate and evaluate stages reopen the same run with `resume_run`.

The store defaults to `sqlite:///<repo root>/mlflow.db` with artifacts under
`<repo root>/mlruns`, the repo root being `$DVC_ROOT` when DVC runs the stage
(so `dvc exp run --temp/--queue` log to the main store) and the current
directory otherwise. `MLFLOW_TRACKING_URI` overrides it. Importing this module
changes nothing: the URI is set when a run starts.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
from PIL import Image

from dcgan.errors import UserError

EXPERIMENT = "dcgan"


def repo_root() -> Path:
    """The directory that holds the MLflow store: `$DVC_ROOT`, else the current one."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri() -> str:
    """`$MLFLOW_TRACKING_URI` if set, else the SQLite store at the repo root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def _use_store() -> str:
    """Point mlflow at the store and make sure the experiment exists; return its id."""
    # Decide before set_tracking_uri, which exports MLFLOW_TRACKING_URI itself.
    default_store = "MLFLOW_TRACKING_URI" not in os.environ
    mlflow.set_tracking_uri(tracking_uri())
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # Artifacts of the default store live beside it, not under the cwd, which
    # is a throw-away copy for `dvc exp run --temp`. A server picks its own.
    location = None
    if default_store:
        location = (repo_root() / "mlruns" / name).as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


@contextlib.contextmanager
def start_run(run_file: Path, params: dict[str, Any], tags: dict[str, str],
              run_name: str | None = None) -> Iterator[str]:
    """Open a new run, log `params` and `tags`, and write its id to `run_file`.

    The run ends FINISHED when the block completes and FAILED when it raises.

    Yields:
        The run id.
    """
    experiment_id = _use_store()
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.log_params({k: "null" if v is None else v for k, v in params.items()})
        mlflow.set_tags(tags)
        run_file.parent.mkdir(parents=True, exist_ok=True)
        run_file.write_text(json.dumps({"run_id": run.info.run_id}) + "\n")
        yield run.info.run_id


@contextlib.contextmanager
def resume_run(run_file: Path) -> Iterator[str]:
    """Reopen the run whose id the train stage wrote to `run_file`.

    Raises:
        UserError: if the file is missing or names no run in the store.
    """
    try:
        run_id = json.loads(Path(run_file).read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{run_file}: no MLflow run id; run the train stage first") from None
    _use_store()
    try:
        mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise UserError(
            f"{run_file}: run {run_id} is not in the MLflow store {tracking_uri()}; "
            "rerun training with `dvc repro -f train`"
        ) from None
    with mlflow.start_run(run_id=run_id):
        yield run_id


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
    """Log numeric metrics to the active run; nested dicts become dotted names."""
    mlflow.log_metrics(flatten_metrics(metrics), step=step)


def log_artifacts(paths: list[Path], artifact_path: str | None = None) -> None:
    """Copy files or directories into the active run's artifacts."""
    for path in paths:
        if Path(path).is_dir():
            mlflow.log_artifacts(str(path), artifact_path=f"{artifact_path or ''}/{path.name}")
        else:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_generator(generator: keras.Model) -> None:
    """Log the generator as an MLflow Keras model, so the UI lists it as a model."""
    requirements = [f"tensorflow=={_version('tensorflow')}", f"keras=={keras.__version__}"]
    # Input: a batch of noise vectors z; output: images in [-1, 1].
    z = np.random.default_rng(0).standard_normal((2, generator.input_shape[-1])).astype("float32")
    signature = mlflow.models.infer_signature(z, np.asarray(generator(z, training=False)))
    mlflow.keras.log_model(generator, name="generator", signature=signature,
                           pip_requirements=requirements)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


class EpochLogger(keras.callbacks.Callback):
    """Log every epoch's metrics, and the fixed-noise grid when there is one, to the run.

    Place it after the callbacks that add to `logs` (throughput, sample grid).
    """

    def __init__(self, grid_dir: Path | None = None):
        super().__init__()
        self.grid_dir = grid_dir

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        log_metrics(logs or {}, step=epoch + 1)
        grid = self.grid_dir / f"epoch_{epoch + 1:04d}.png" if self.grid_dir else None
        if grid is not None and grid.exists():
            mlflow.log_image(np.asarray(Image.open(grid)), key="epoch_grid", step=epoch + 1)
