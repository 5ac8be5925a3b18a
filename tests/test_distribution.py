"""Training on several replicas and several workers (tf.distribute), with the real engines.

Run with `pytest tests/test_distribution.py -q` (slow: about three minutes).
- Choosing the strategy and its bad input, in this process.
- Mirrored: two logical CPU devices (`DCGAN_VIRTUAL_CPUS=2`, in a fresh process) run one
  step that must match the single-device step at the same global batch, and a training
  SIGKILLed after epoch 1 resumes to the weights of an uninterrupted one.
- Multi-worker: a chief (`dvc repro train`) and a worker (`dcgan train-worker`) on 127.0.0.1,
  each with its own TF_CONFIG and its own copy of the tiny pipeline; both end with the same
  weights, only the chief writes outputs and logs to MLflow; killed after epoch 1 and
  restarted, they resume to the same weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import yaml
from dvc_repo import REPO, clean_env, copy_workspace, free_port, run
from mlflow.tracking import MlflowClient

from dcgan.core.config import TrainConfig
from dcgan.core.errors import UserError
from dcgan.training.cluster import task_rank, tf_config
from dcgan.training.distribution import Role, make_strategy
from dcgan.training.train import _replica_batch

TRAIN_ARGS = ["--data", "data/processed/dataset", "--classifier", "models/classifier.keras"]


def _cluster(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


# --- choosing the strategy (this process: one CPU device) ---

def test_none_and_auto_on_a_cpu_give_one_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
    for kind in ("none", "auto"):
        role = make_strategy(kind)
        assert (role.kind, role.replicas, role.chief, role.workers) == ("none", 1, True, 1)
        assert role.tags() == {"distribution": "none", "replicas": "1", "workers": "1"}


def test_mirrored_on_one_cpu_is_one_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
    role = make_strategy("mirrored")
    assert (role.kind, role.replicas) == ("mirrored", 1)


@pytest.mark.parametrize(("kind", "tf_config_value", "message"), [
    ("multi_worker", None, "TF_CONFIG is not set"),
    ("multi_worker", "{not json", "TF_CONFIG is invalid"),
    ("multi_worker", '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", '
                     '"index": 3}}', "is not in the cluster"),
    ("multi_worker", '{"cluster": {"worker": ["127.0.0.1:1"], "evaluator": ["127.0.0.1:2"]}, '
                     '"task": {"type": "evaluator", "index": 0}}', "does not train"),
    ("auto", _cluster([1, 2], 0), "set train.distribution: multi_worker"),
    ("mirrored", _cluster([1, 2], 1), "set train.distribution: multi_worker"),
])
def test_a_bad_cluster_set_up_is_one_error(monkeypatch: pytest.MonkeyPatch, kind: str,
                                           tf_config_value: str | None, message: str) -> None:
    if tf_config_value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config_value)
    with pytest.raises(UserError, match=message):
        make_strategy(kind)


def test_task_rank_puts_the_chief_first(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    for task, rank in [({"type": "chief", "index": 0}, 0), ({"type": "worker", "index": 0}, 1),
                       ({"type": "worker", "index": 1}, 2)]:
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": spec, "task": task}))
        assert task_rank(tf_config()) == (rank, 3)


def test_virtual_cpus_must_be_a_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DCGAN_VIRTUAL_CPUS", "two")
    with pytest.raises(UserError, match="DCGAN_VIRTUAL_CPUS='two' is invalid"):
        make_strategy("mirrored")


def test_the_global_batch_must_split_evenly() -> None:
    two = Role("mirrored", SimpleNamespace(num_replicas_in_sync=2), True, 0, 1)
    _replica_batch(64, two)
    with pytest.raises(UserError, match="129 does not split evenly over 2 replicas"):
        _replica_batch(129, two)


def test_distribution_is_a_checked_param() -> None:
    assert TrainConfig().distribution == "auto"
    with pytest.raises(ValueError, match="distribution"):
        TrainConfig(distribution="horovod")


# --- mirrored on two logical CPUs (fresh processes) ---

ONE_STEP = """
import json, sys
import numpy as np
import tensorflow as tf
from dcgan.core.config import TrainConfig
from dcgan.training.distribution import make_strategy
from dcgan.nets.model import build_gan
from dcgan.core.seeding import seed_everything

def one_step(kind, update, augment, lecam):
    role = make_strategy(kind)  # DCGAN_VIRTUAL_CPUS=2: mirrored has two replicas
    cfg = TrainConfig(batch_size=16, latent_dim=8, g_filters=8, d_filters=8, seed=3,
                      update=update, ema_half_life=64,  # the EMA too: once per step
                      augment=augment, lecam=float(lecam))
    seed_everything(cfg.seed)
    gan = build_gan(cfg, (16, 16, 1), role.strategy)
    images = np.random.default_rng(0).uniform(-1, 1, (16, 16, 16, 1)).astype("float32")
    logs = gan.fit(tf.data.Dataset.from_tensors(images), epochs=1, verbose=0).history
    weights = [w.numpy() for w in gan.generator.weights + gan.discriminator.weights
               + gan.sampler.weights]
    synced = [getattr(layer, "synchronized") for layer in gan.generator.layers
              if hasattr(layer, "synchronized")]
    return role.replicas, {k: v[0] for k, v in logs.items()}, weights, synced

# One mirrored strategy per process: a second one's collectives clash with the first's.
n1, logs1, w1, s1 = one_step("none", *sys.argv[1:])
n2, logs2, w2, s2 = one_step("mirrored", *sys.argv[1:])
print(json.dumps({
    "replicas": [n1, n2], "sync_bn": [any(s1), all(s2)], "logs": [logs1, logs2],
    "max_abs": max(float(np.abs(a - b).max()) for a, b in zip(w1, w2)),
    "max_rel": max(float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(w1, w2)),
}))
"""


@pytest.mark.slow
@pytest.mark.parametrize(("update", "augment", "lecam"), [
    ("alternating", "", "0"), ("simultaneous", "", "0"), ("reuse_fake", "", "0"),
    # DiffAugment: each replica augments its rows of the global batch as one device would;
    # LeCam's averages take the mean logits over the global batch.
    ("alternating", "color,translation,cutout", "0.3")])
def test_a_step_on_two_replicas_matches_one_device(tmp_path: Path, update: str,
                                                   augment: str, lecam: str) -> None:
    proc = run([sys.executable, "-c", ONE_STEP, update, augment, lecam], tmp_path,
               env=clean_env(DCGAN_VIRTUAL_CPUS="2", PYTHONPATH=str(REPO / "src")))
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(r))  # the figures, with -s
    assert r["replicas"] == [1, 2]
    assert r["sync_bn"] == [False, True]  # BN statistics over the global batch
    single, mirrored = r["logs"]
    for key in ("d_loss", "g_loss", "d_real", "d_fake"):
        assert mirrored[key] == pytest.approx(single[key], rel=1e-5, abs=1e-6), key
    # float32: the same step up to summation order (Adam moves each weight ~2e-4)
    assert r["max_abs"] < 1e-6


def _stage_train(repo: Path, params: Path, out: Path, env: dict[str, str]) -> subprocess.Popen:
    """`python stages/train.py` in `repo` with `params`, writing under `out` (a process)."""
    args = ["--params", str(params), *TRAIN_ARGS,
            "--generator", f"{out}/g.keras", "--discriminator", f"{out}/d.keras",
            "--history", f"{out}/history.csv", "--quality", f"{out}/quality.csv",
            "--grids", f"{out}/grids", "--gif", f"{out}/progress.gif",
            "--generator-last", f"{out}/g_last.keras", "--selection", f"{out}/selection.json",
            "--run-file", f"{out}/run.json", "--checkpoints", f"{out}/checkpoints"]
    return subprocess.Popen([sys.executable, "stages/train.py", *args], cwd=repo, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _result(stdout: str) -> dict:
    """The JSON line the train stage prints last."""
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def _kill(procs: list[subprocess.Popen]) -> None:
    """SIGKILL every process that still runs, with its children, at once, as a lost machine
    would stop them. The whole tree is frozen (SIGSTOP) first: killed one by one, a parent
    reacts to its child's death, and DVC then rewrites .dvc/tmp/rwlock; a SIGKILL in the
    middle of that leaves it empty, and the next `dvc repro` stops on the corrupt file."""
    tree = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            parent = psutil.Process(proc.pid)
            tree += [parent, *parent.children(recursive=True)]
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for process in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(sig)
    for proc in procs:
        proc.wait(timeout=60)


def _kill_after_first_checkpoint(procs: list[subprocess.Popen], checkpoints: Path) -> None:
    """SIGKILL every process (with its children) once epoch 1 is checkpointed under
    `checkpoints` (as a lost machine would stop them)."""
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("*/training_metadata.json")):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate() for p in procs]
        time.sleep(0.02)
    _kill(procs)
    for proc in procs:
        proc.communicate(timeout=60)


@pytest.fixture(scope="module")
def tiny(pipeline: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the tiny pipeline (other tests change the fixture's params), its
    data and classifier up to date, with `train.distribution: multi_worker` set."""
    repo = tmp_path_factory.mktemp("dist") / "chief"
    copy_workspace(pipeline.path, repo)
    run(["git", "init", "-q"], repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    # 15 steps an epoch: a multi-worker step of this tiny model is mostly collectives.
    params["train"].update(distribution="multi_worker", batch_size=256)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", "classifier"], repo)
    return repo


@pytest.fixture(scope="module")
def mirrored(tiny: Path) -> SimpleNamespace:
    """The train stage on two logical CPUs (mirrored): uninterrupted, then again SIGKILLed
    after epoch 1 and rerun; MLflow in a scratch store."""
    root = tiny.parent / "mirrored"
    root.mkdir()
    params = yaml.safe_load((tiny / "params.yaml").read_text())
    params["train"]["distribution"] = "mirrored"
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = clean_env(DCGAN_VIRTUAL_CPUS="2", MLFLOW_TRACKING_URI=f"sqlite:///{root}/ml.db")
    whole = _stage_train(tiny, root / "params.yaml", root / "whole", env)
    out, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err[-3000:]
    first = _stage_train(tiny, root / "params.yaml", root / "resumed", env)
    _kill_after_first_checkpoint([first], root / "resumed" / "checkpoints")
    again = _stage_train(tiny, root / "params.yaml", root / "resumed", env)
    out2, err2 = again.communicate(timeout=600)
    assert again.returncode == 0, err2[-3000:]
    client = MlflowClient(f"sqlite:///{root}/ml.db")
    return SimpleNamespace(whole=_result(out), resumed=_result(out2), resumed_err=err2,
                           runs=client.search_runs(
                               [client.get_experiment_by_name("dcgan").experiment_id]))


@pytest.mark.slow
def test_mirrored_training_resumes_to_the_same_weights(mirrored: SimpleNamespace) -> None:
    assert "resuming from the checkpoint of epoch 1" in mirrored.resumed_err
    assert mirrored.resumed["weights_sha256"] == mirrored.whole["weights_sha256"]
    assert sorted(r.data.tags["distribution"] for r in mirrored.runs) == ["mirrored"] * 2
    assert {r.data.tags["replicas"] for r in mirrored.runs} == {"2"}


def _two_workers(chief: Path, worker: Path, kill_after_epoch_1: bool = False) -> SimpleNamespace:
    """The chief's `dvc repro train` and the worker's `dcgan train-worker`, each with its
    TF_CONFIG on fresh ports; optionally SIGKILLed once the chief checkpoints epoch 1.

    A port `free_port` found free can be taken (by any process's outgoing connection)
    before the task listens on it; that task then stops with its one-line error and the
    pair is started again on new ports. When one task fails, the other, which would
    wait for it, is stopped, and the test fails with both outputs.
    """
    for _ in range(3):
        ports = [free_port(), free_port()]
        logs = [chief.parent / f"{chief.name}.{name}" for name in ("out", "err")], \
            [chief.parent / f"{worker.name}.{name}" for name in ("out", "err")]
        procs = []
        for i, (cmd, repo) in enumerate([(["dvc", "repro", "train"], chief),
                                         (["dcgan", "train-worker"], worker)]):
            with open(logs[i][0], "w") as out, open(logs[i][1], "w") as err:
                procs.append(subprocess.Popen(cmd, cwd=repo, text=True, stdout=out, stderr=err,
                                              env=clean_env(TF_CONFIG=_cluster(ports, i))))
        checkpoints = chief / "models" / "checkpoints"
        deadline = time.monotonic() + 600
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if kill_after_epoch_1 and list(checkpoints.glob("*/training_metadata.json")):
                _kill(procs)
                return SimpleNamespace()
            if any(p.returncode for p in procs if p.poll() is not None):
                time.sleep(30)  # the other may end too, with its own error line
                break
            time.sleep(0.02)
        _kill(procs)
        (c_out, c_err), (w_out, w_err) = [[path.read_text() for path in pair] for pair in logs]
        c_err += c_out  # dvc passes the stage's stderr on to its stdout
        if "cannot listen on port" not in c_err + w_err:
            break
    assert not kill_after_epoch_1, "no checkpoint of epoch 1:\n" + c_err[-3000:] + w_err[-3000:]
    assert procs[0].returncode == 0, c_err[-3000:] + "\nworker:\n" + w_err[-3000:]
    assert procs[1].returncode == 0, w_out[-2000:] + w_err[-3000:] + "\nchief:\n" + c_err[-3000:]
    return SimpleNamespace(chief=_result(c_out), worker=_result(w_out), chief_err=c_err,
                           worker_err=w_err)


def _runs(repo: Path) -> list:
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name("dcgan").experiment_id])


def _tree(repo: Path) -> dict[str, int]:
    """Every file of the workspace but git's and DVC's, with its mtime in ns."""
    return {str(p.relative_to(repo)): p.stat().st_mtime_ns for p in repo.rglob("*")
            if p.is_file() and not str(p.relative_to(repo)).startswith((".git", ".dvc"))}


@pytest.fixture(scope="module")
def cluster(tiny: Path) -> SimpleNamespace:
    root = tiny.parent
    for name in ("worker", "chief2", "worker2"):  # copies made before anything trains
        shutil.copytree(tiny, root / name)
    runs_before = {name: len(_runs(root / name)) for name in ("chief", "worker")}
    worker_files = _tree(root / "worker")
    whole = _two_workers(root / "chief", root / "worker")
    _two_workers(root / "chief2", root / "worker2", kill_after_epoch_1=True)
    resumed = _two_workers(root / "chief2", root / "worker2")
    return SimpleNamespace(root=root, whole=whole, resumed=resumed, runs_before=runs_before,
                           worker_files=worker_files)


@pytest.mark.slow
def test_two_workers_end_with_identical_weights(cluster: SimpleNamespace) -> None:
    whole = cluster.whole
    print(json.dumps({"chief": whole.chief, "worker": whole.worker}, indent=1))
    assert whole.worker == {"worker": 1, "weights_sha256": whole.chief["weights_sha256"]}
    assert "lost contact" not in whole.chief_err + whole.worker_err


@pytest.mark.slow
def test_two_workers_compute_what_two_replicas_in_one_process_do(
        cluster: SimpleNamespace, mirrored: SimpleNamespace) -> None:
    # Bit for bit: every all-reduce sums two values, and a + b == b + a in floating point.
    assert cluster.whole.chief["weights_sha256"] == mirrored.whole["weights_sha256"]


@pytest.mark.slow
def test_only_the_chief_writes_outputs_and_logs(cluster: SimpleNamespace) -> None:
    root = cluster.root
    assert _tree(root / "worker") == cluster.worker_files  # not a file written or touched
    assert len(_runs(root / "worker")) == cluster.runs_before["worker"]
    runs = _runs(root / "chief")
    assert len(runs) == cluster.runs_before["chief"] + 1
    [new] = [r for r in runs if r.info.run_id == cluster.whole.chief["run_id"]]
    assert new.info.status == "FINISHED"
    assert (new.data.tags["distribution"], new.data.tags["replicas"],
            new.data.tags["workers"]) == ("multi_worker", "2", "2")
    assert new.data.params["train.distribution"] == "multi_worker"
    lock = yaml.safe_load((root / "chief" / "dvc.lock").read_text())["stages"]["train"]
    generator = next(o for o in lock["outs"] if o["path"].endswith("generator.keras"))
    assert generator["md5"] == new.data.tags["generator_md5"]
    assert not list((root / "worker" / "models" / "checkpoints").glob("*"))


@pytest.mark.slow
def test_two_workers_resume_to_the_same_weights(cluster: SimpleNamespace) -> None:
    resumed = cluster.resumed
    for output in (resumed.chief_err, resumed.worker_err):
        assert "resuming from the checkpoint of epoch 1" in output
    assert resumed.chief["weights_sha256"] == cluster.whole.chief["weights_sha256"]
    assert resumed.worker["weights_sha256"] == cluster.whole.chief["weights_sha256"]
    # The resumed chief goes on with the run it started: one run, each epoch logged once.
    [run_] = [r for r in _runs(cluster.root / "chief2")
              if r.info.run_id == resumed.chief["run_id"]]
    client = MlflowClient(f"sqlite:///{cluster.root / 'chief2' / 'mlflow.db'}")
    assert sorted(m.step for m in client.get_metric_history(run_.info.run_id, "g_loss")) == [1, 2]


@pytest.mark.slow
def test_train_worker_refuses_what_cannot_work(tiny: Path) -> None:
    env = {k: v for k, v in clean_env().items() if k != "TF_CONFIG"}
    cases = [
        (env, "TF_CONFIG is not set"),
        ({**env, "TF_CONFIG": _cluster([1, 2], 0)}, "run `dvc repro` here instead"),
    ]
    for case_env, message in cases:
        proc = run(["dcgan", "train-worker"], tiny, check=False, env=case_env)
        assert proc.returncode == 2
        [line] = proc.stderr.strip().splitlines()  # no TF start-up logs: TF never loads
        assert line.startswith("error: ") and message in line
    with socket.socket() as taken:  # this task's port: another program listens on it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run(["dcgan", "train-worker"], tiny, check=False,
                   env={**env, "TF_CONFIG": _cluster([free_port(), port], 1)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: cannot listen on port {port} (127.0.0.1:{port}, this task's address in "
        "TF_CONFIG): the port is taken or the host is not this machine; free it, or give "
        "every task a TF_CONFIG with another port")
    params = tiny.parent / "auto"
    params.mkdir(exist_ok=True)
    (params / "params.yaml").write_text((tiny / "params.yaml").read_text().replace(
        "distribution: multi_worker", "distribution: auto"))
    proc = run(["dcgan", "train-worker", "--repo", str(params)], tiny, check=False,
               env={**env, "TF_CONFIG": _cluster([1, 2], 1)})
    assert proc.returncode == 2 and "set it to multi_worker" in proc.stderr, proc.stderr
    assert os.environ.get("TF_CONFIG") is None  # nothing leaked into this process
