"""End to end: SIGKILL the train stage mid-epoch, rerun `dvc repro`, get the same bytes.

Run with `pytest tests/test_resume.py -q` (slow: one more tiny pipeline, about a minute,
which conftest's `head_start` runs in the background from the session's start). A fresh tiny
clone (a `git clone` of the fixture's first commit: the same sources, whatever changes in
this working tree meanwhile) runs `dvc repro`; as soon as epoch 1's checkpoint exists,
the train process gets SIGKILL (no handler runs, as with the OOM killer or a lost machine).
A second `dvc repro` must resume at epoch 2 and end with a dvc.lock identical, md5 for md5,
to the uninterrupted pipeline of the session's `pipeline` fixture: every stage, so two clean
runs of fetch, preprocess and classifier match too. The MLflow run goes on: one run, each
epoch logged once.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest
import yaml
from mlflow.tracking import MlflowClient

if TYPE_CHECKING:
    from conftest import HeadStart


@pytest.fixture(scope="module")
def killed_and_resumed(head_start: HeadStart) -> SimpleNamespace:
    # Run by conftest's `head_start` in the background; MLflow is asked here.
    k = head_start.resume.result()
    after_kill = MlflowClient(f"sqlite:///{k.store_after_kill}")
    [run_after_kill] = after_kill.search_runs(
        [after_kill.get_experiment_by_name("dcgan").experiment_id])
    steps_after_kill = [m.step for m in
                        after_kill.get_metric_history(run_after_kill.info.run_id, "g_loss")]
    client = MlflowClient(f"sqlite:///{k.repo / 'mlflow.db'}")
    return SimpleNamespace(repo=k.repo, killed=k.killed, resumed=k.resumed, client=client,
                           run_after_kill=run_after_kill, steps_after_kill=steps_after_kill)


@pytest.mark.slow
def test_kill_lands_mid_training(killed_and_resumed) -> None:
    k = killed_and_resumed
    assert k.killed.returncode != 0
    assert k.run_after_kill.info.status == "RUNNING"  # SIGKILL: nothing closed it
    assert k.steps_after_kill == [1]  # epoch 1 logged, epoch 2 under way
    assert "Running stage 'train'" in k.resumed.stdout


@pytest.mark.slow
def test_rerun_resumes_and_matches_the_uninterrupted_pipeline(killed_and_resumed,
                                                              pipeline) -> None:
    k = killed_and_resumed
    assert "resuming from the checkpoint of epoch 1" in k.resumed.stdout + k.resumed.stderr
    resumed = yaml.safe_load((k.repo / "dvc.lock").read_text())
    assert set(resumed["stages"]) == set(pipeline.first_lock["stages"])
    for stage, entry in pipeline.first_lock["stages"].items():
        assert resumed["stages"][stage] == entry, stage  # every dep, param and out md5
    assert not list((k.repo / "models" / "checkpoints").iterdir())  # removed on success


@pytest.mark.slow
def test_resumed_training_continues_its_mlflow_run(killed_and_resumed) -> None:
    k = killed_and_resumed
    experiment = k.client.get_experiment_by_name("dcgan").experiment_id
    [mlrun] = k.client.search_runs([experiment])
    assert mlrun.info.run_id == k.run_after_kill.info.run_id
    assert mlrun.info.status == "FINISHED"
    for key in ("g_loss", "d_real", "images_per_sec", "epoch_frechet_distance"):
        steps = [m.step for m in k.client.get_metric_history(mlrun.info.run_id, key)]
        assert sorted(steps) == [1, 2], key  # none twice, none missing
    assert "frechet_distance" in mlrun.data.metrics and "probe_accuracy" in mlrun.data.metrics
