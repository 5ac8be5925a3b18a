"""End to end: SIGKILL the train stage mid-epoch, rerun `dvc repro`, get the same bytes.

Run with `pytest tests/test_resume.py -q` (slow: one more tiny pipeline, about a minute).
A fresh tiny clone runs `dvc repro`; as soon as epoch 1's checkpoint exists, the train
process gets SIGKILL (no handler runs, as with the OOM killer or a lost machine). A second
`dvc repro` must resume at epoch 2 and end with a dvc.lock identical, md5 for md5, to the
uninterrupted pipeline of the session's `pipeline` fixture: every stage, so two clean runs
of fetch, preprocess and classifier match too. The MLflow run goes on: one run, each epoch
logged once.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import yaml
from dvc_repo import clean_env, make_clone, run
from mlflow.tracking import MlflowClient


def _kill_train_after_first_checkpoint(repo: Path) -> subprocess.CompletedProcess:
    """Run `dvc repro` and SIGKILL its train process once epoch 1 is checkpointed."""
    proc = subprocess.Popen(["dvc", "repro"], cwd=repo, env=clean_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    killed = False
    while proc.poll() is None and time.monotonic() < deadline and not killed:
        if list((repo / "models" / "checkpoints").glob("*/training_metadata.json")):
            for child in psutil.Process(proc.pid).children(recursive=True):
                if "stages/train.py" in " ".join(child.cmdline()):
                    child.send_signal(signal.SIGKILL)
                    killed = True
        time.sleep(0.02)
    out = proc.communicate(timeout=600)[0]
    assert killed, f"train was never killed:\n{out[-3000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


@pytest.fixture(scope="module")
def killed_and_resumed(pipeline: SimpleNamespace,
                       tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    repo = tmp_path_factory.mktemp("killed")
    make_clone(repo)
    killed = _kill_train_after_first_checkpoint(repo)
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    [run_after_kill] = client.search_runs([client.get_experiment_by_name("dcgan").experiment_id])
    steps_after_kill = [m.step for m in
                        client.get_metric_history(run_after_kill.info.run_id, "g_loss")]
    resumed = run(["dvc", "repro"], repo)
    return SimpleNamespace(repo=repo, killed=killed, resumed=resumed, client=client,
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
