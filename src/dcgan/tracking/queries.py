"""Questions asked of the store: the runs to compare, a run by id prefix, and the runs
that trained a given generator (by its md5)."""

from __future__ import annotations

import os
import re

import mlflow
import pandas as pd

from dcgan.core.errors import UserError
from dcgan.tracking.store import experiment_name, tracking_uri, use_store


def runs_of_generator(md5: str) -> list[mlflow.entities.Run]:
    """The runs of the pipeline's experiment tagged with generator md5 `md5`, the current
    DVC experiment's first (identical params train identical generators), newest first."""
    use_store()
    runs = mlflow.search_runs(experiment_names=[experiment_name()], output_format="list",
                              filter_string=f"tags.generator_md5 = '{md5}'",
                              order_by=["attributes.start_time DESC"])
    here = os.environ.get("DVC_EXP_NAME")
    return sorted(runs, key=lambda r: r.data.tags.get("dvc_exp_name") != here)


def find_run(prefix: str) -> mlflow.entities.Run:
    """The run of the pipeline's experiment whose id starts with `prefix` (as `dcgan compare`
    shows ids: their first 8 characters).

    Raises:
        UserError: if `prefix` is not hex, or it matches no run or several.
    """
    if not re.fullmatch(r"[0-9a-f]{4,32}", prefix):
        raise UserError(f"{prefix!r} is not a run id: give its first 4 or more hex digits, "
                        "as `dcgan compare` shows them")
    use_store(create=False)
    runs = mlflow.search_runs(experiment_names=[experiment_name()], output_format="list")
    hits = [r for r in runs if r.info.run_id.startswith(prefix)]
    if len(hits) != 1:
        what = "no run" if not hits else f"{len(hits)} runs"
        raise UserError(f"{what} of experiment {experiment_name()!r} in {tracking_uri()} "
                        f"{'has' if not hits else 'have'} an id starting {prefix!r}; "
                        "`dcgan compare --all` lists them")
    return hits[0]


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
    use_store(create=False)
    filters = []
    if dataset is not None:
        filters.append(f"tags.dataset = '{dataset}'")
    if finished_only:
        filters.append("attributes.status = 'FINISHED'")
    name = experiment_name()
    return mlflow.search_runs(experiment_names=[name], filter_string=" and ".join(filters),
                              order_by=["attributes.start_time DESC"], output_format="pandas")
