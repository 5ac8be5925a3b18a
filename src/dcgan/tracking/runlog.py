"""One MLflow run, as an object: what it already holds, and logging only what it lacks.

`RunLog.open(...)` starts a run (or reopens one: a resumed training's, or the run the
sync step completes) and yields a `RunLog` that training's per-epoch commit and the sync
step log through. It talks to the store with an explicit `MlflowClient` and run id, never
through MLflow's global active run, and it remembers the highest step of every metric
and image series, so that logging an epoch the run already has does nothing: a resumed
training repeats the epoch it was killed in, and a second sync adds nothing.

Each run is named after its DVC experiment (`dvc exp run`) or, outside one, after
arch, dataset, size and commit, and tagged with the git commit and the DVC experiment.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.tracking.context.registry import resolve_tags

from dcgan.tracking.store import use_store

# MLflow names an image series' files `<key>+step+<n>+timestamp+...` (`%` before 3.x).
_IMAGE_STEP = re.compile(r"^(?P<key>.+?)[+%]step[+%](?P<step>\d+)[+%]")


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


class RunLog:
    """Logging to one run, skipping what it already holds.

    Attributes:
        run_id: the run's id.
        client: the `MlflowClient` of the store.
        steps: the highest step of each metric, and of each image series as `image:<key>`.
    """

    def __init__(self, run_id: str, client: mlflow.MlflowClient):
        self.run_id, self.client = run_id, client
        self.steps = self._logged_steps()

    @classmethod
    @contextlib.contextmanager
    def open(cls, params: dict[str, Any], tags: dict[str, str], default_name: str | None = None,
             resume: str | None = None) -> Iterator[RunLog]:
        """Open a new run named by `run_name` with `params`, `tags` and `source_tags()`, or,
        with `resume` (the id of a run in the store), reopen that run. The run ends FINISHED
        when the block completes and FAILED when it raises."""
        experiment_id = use_store()
        client = mlflow.MlflowClient()
        tags = {**tags, **source_tags()}
        if resume is not None and not _run_exists(client, resume):
            resume = None
        if resume is None:  # with MLflow's own tags too (source, user, git commit)
            resume = client.create_run(experiment_id, run_name=run_name(default_name, tags),
                                       tags=resolve_tags()).info.run_id
        else:
            client.update_run(resume, status="RUNNING")
        log = cls(resume, client)
        try:
            log.params(params)
            log.tags(tags)
            yield log
        except BaseException:
            client.set_terminated(log.run_id, "FAILED")
            raise
        client.set_terminated(log.run_id, "FINISHED")

    def _logged_steps(self) -> dict[str, int]:
        run = self.client.get_run(self.run_id)
        steps = {key: max(m.step for m in self.client.get_metric_history(self.run_id, key))
                 for key in run.data.metrics}
        for artifact in self.client.list_artifacts(self.run_id, "images"):
            match = _IMAGE_STEP.match(Path(artifact.path).name)
            if match:
                key = f"image:{match['key']}"
                steps[key] = max(steps.get(key, 0), int(match["step"]))
        return steps

    def params(self, params: dict[str, Any]) -> None:
        """Log params; a reopened run may take the same values again, which MLflow allows."""
        held = self.client.get_run(self.run_id).data.params
        fresh = [mlflow.entities.Param(k, "null" if v is None else str(v))
                 for k, v in params.items() if k not in held]
        if fresh:
            self.client.log_batch(self.run_id, params=fresh)

    def tags(self, tags: dict[str, Any]) -> None:
        """Set tags (None is written `null`)."""
        self.client.log_batch(self.run_id, tags=[
            mlflow.entities.RunTag(k, "null" if v is None else str(v)) for k, v in tags.items()])

    def metrics(self, metrics: dict[str, Any], step: int | None = None) -> int:
        """Log numeric metrics (nested dicts become dotted names) at `step`, skipping those
        the run already has at that step or later. Without a step, log the values that differ
        from the run's latest.

        Returns:
            How many values were logged.
        """
        flat = flatten_metrics(metrics)
        if step is None:
            latest = self.client.get_run(self.run_id).data.metrics
            flat = {k: v for k, v in flat.items() if latest.get(k) != v}
        else:
            flat = {k: v for k, v in flat.items() if step > self.steps.get(k, 0)}
        if not flat:
            return 0
        stamp = mlflow.utils.time.get_current_time_millis()
        self.client.log_batch(self.run_id, metrics=[
            mlflow.entities.Metric(k, v, stamp, step or 0) for k, v in flat.items()])
        for key in flat:
            self.steps[key] = max(self.steps.get(key, 0), step or 0)
        return len(flat)

    def image(self, image: np.ndarray, key: str, step: int) -> bool:
        """Log an image (H, W[, C] uint8) as step `step` of the image series `key`, unless
        the run already has that step. Returns whether it was logged."""
        if step <= self.steps.get(f"image:{key}", 0):
            return False
        self.client.log_image(self.run_id, image, key=key, step=step, synchronous=True)
        self.steps[f"image:{key}"] = step
        return True

    def artifacts(self, paths: list[Path], artifact_path: str) -> int:
        """Copy files into `artifact_path` of the run's artifacts, unless a file of the same
        name and size is there already. Returns how many were copied."""
        held = {Path(a.path).name: a.file_size
                for a in self.client.list_artifacts(self.run_id, artifact_path)}
        copied = 0
        for path in map(Path, paths):
            if held.get(path.name) != path.stat().st_size:
                self.client.log_artifact(self.run_id, str(path), artifact_path)
                copied += 1
        return copied


def _run_exists(client: mlflow.MlflowClient, run_id: str) -> bool:
    try:
        client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True
