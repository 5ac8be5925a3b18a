"""A run's logged generator, used outside the pipeline: load it by its `models:/` or
`runs:/` URI, find the run of a `.keras` file, and log an export of it to its run
(`dcgan sample` and `dcgan export`, through dcgan.tools.generator_ref and .export)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from mlflow.exceptions import MlflowException

from dcgan.core.errors import UserError
from dcgan.tracking import queries
from dcgan.tracking.store import tracking_uri, use_store

if TYPE_CHECKING:  # keras is imported where it is used
    import keras


def load_logged_generator(uri: str, remedy: str) -> tuple[keras.Model, str | None]:
    """The Keras flavour of the logged model `uri`, and the run that logged it.

    Raises:
        UserError: if the store is missing, or `uri` names no model, an unset alias, a
            missing version or run, or a model without a Keras flavour.
    """
    use_store(create=False)
    try:
        info = mlflow.models.get_model_info(uri)
        if "keras" not in info.flavors:
            raise UserError(f"{uri}: a {', '.join(info.flavors)} model, not a Keras generator; "
                            f"{remedy}")
        generator = mlflow.keras.load_model(
            uri, load_model_kwargs={"compile": False, "safe_mode": True})
    except MlflowException as err:
        first = " ".join(err.message.strip().split("\n")[0].split()).rstrip(".")
        raise UserError(f"{uri}: {first} in {tracking_uri()}; {_hint(uri)}") from None
    return generator, info.run_id


def run_of_file(md5: str) -> str | None:
    """The run tagged with generator md5 `md5`, if the store exists and answers and has one
    (a file is all `dcgan sample` and `dcgan export` need: no store is made for it)."""
    try:
        use_store(create=False)
        runs = queries.runs_of_generator(md5)
    except UserError:
        return None
    return runs[0].info.run_id if runs else None


def log_export(run_id: str, out: Path, metrics: dict[str, float]) -> str:
    """Log an export to the generator's run under `exports/`, with its parity figures as
    `metrics` (dcgan.tools.export.Parity.metrics: `export.<fmt>.max_abs_diff_vs_float32`
    and `export.<fmt>.max_abs_diff_vs_trained`).

    Returns:
        The artifact path it was logged under.
    """
    client = mlflow.MlflowClient()
    if out.is_dir():
        client.log_artifacts(run_id, str(out), f"exports/{out.name}")
    else:
        client.log_artifact(run_id, str(out), "exports")
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    return f"exports/{out.name}"


def _hint(uri: str) -> str:
    """What to do when `uri` names nothing in the store."""
    if "@" in uri:
        return ("`dvc repro` sets best-<dataset> once a run is scored; use a version "
                "number instead (`mlflow ui`: Models lists them)")
    if uri.startswith("runs:/"):
        return "`dcgan compare` lists the runs; a run's model is runs:/<run id>/generator"
    return "`mlflow ui` (Models) lists the registered versions; `dvc repro` registers one"
