"""Helpers for the end-to-end tests: a tiny copy of this repo in a temporary git repo,
running commands (dvc, git, stage scripts) in it with a clean environment, private copies of
such a repo's workspace, the kill-and-resume scenario of test_resume.py, work in a background
thread, and a real `mlflow server` on 127.0.0.1.

Imported by conftest.py (the session's `pipeline` fixture), test_pipeline.py,
test_experiments.py, test_postgres.py, test_remote.py and test_resume.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
# The pipeline's paths, as dvc.yaml names them once (e.g. PATHS["tracked"]).
PATHS = yaml.safe_load((REPO / "dvc.yaml").read_text())["vars"][0]["paths"]

# Tiny params: 16x16 images, a latent of 8, two epochs; the real pipeline otherwise.
TINY = {
    "preprocess": {"image_size": 16},
    "classifier": {"epochs": 1, "feature_dim": 16},
    "train": {"epochs": 2, "batch_size": 64, "latent_dim": 8, "g_filters": 8, "d_filters": 8,
              "eval_every": 1},
    "generate": {"num_samples": 64, "grid_rows": 4, "interp_steps": 4},
    "probe": {"train_sizes": [100]},
}
GIT_USER = ["-c", "user.name=t", "-c", "user.email=t@t"]


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment minus MLflow/DVC settings, with this interpreter's
    directory first on PATH (so `python` in dvc.yaml has the package), plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "DVC_")) and k != "GIT_DIR"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None,
        timeout: float = 900) -> subprocess.CompletedProcess:
    """Run `cmd` in `cwd`; with `check`, a non-zero exit fails the test with its output."""
    proc = subprocess.run(cmd, cwd=cwd, env=env or clean_env(), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def ran_stages(output: str) -> set[str]:
    """The stages `dvc repro` says it ran."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def commit_all(repo: Path, message: str, env: dict[str, str] | None = None) -> str:
    """`git add -A` and commit; returns the new HEAD."""
    run(["git", "add", "-A"], repo, env=env)
    run(["git", *GIT_USER, "commit", "-qm", message], repo, env=env)
    return run(["git", "rev-parse", "HEAD"], repo, env=env).stdout.strip()


def make_clone(dest: Path) -> str:
    """Copy this working tree's files (committed or not) to `dest`, set the tiny params,
    and commit them to a new git repo there; returns the commit."""
    files = run(["git", "ls-files", "-co", "--exclude-standard"], REPO).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], dest)
    return commit_all(dest, "tiny")


def copy_workspace(src: Path, dest: Path, mlflow_store: bool = True) -> None:
    """The workspace and DVC cache of src, and its MLflow store unless `mlflow_store` is
    false, without its git history or DVC's scratch space (experiment queue, locks)."""
    top = {".git"} | (set() if mlflow_store else {"mlflow.db", "mlflow.db.lock", "mlruns"})

    def skip(folder: str, names: list[str]) -> set[str]:
        if Path(folder) == src:
            return top & set(names)
        return {"tmp"} & set(names) if Path(folder) == src / ".dvc" else set()
    shutil.copytree(src, dest, ignore=skip)


def _kill_train_after_first_checkpoint(repo: Path,
                                       env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run `dvc repro` and SIGKILL its train process once epoch 1 is checkpointed."""
    proc = subprocess.Popen(["dvc", "repro"], cwd=repo, env=env, text=True,
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


def kill_and_resume(repo: Path, env: dict[str, str]) -> SimpleNamespace:
    """test_resume.py's scenario in `repo`, a fresh tiny clone: `dvc repro` with its train
    stage SIGKILLed mid-training (`killed`, its output), then `dvc repro` again (`resumed`).
    `store_after_kill`: a copy of the repo's MLflow store as the kill left it.

    Commands and file copies only (no MLflow client, no os.environ: `env` is given), so
    that it can run in a `Background` while other tests run in this process."""
    killed = _kill_train_after_first_checkpoint(repo, env)
    snapshot = repo.parent / f"{repo.name}-store-after-kill"
    snapshot.mkdir()
    for store_file in repo.glob("mlflow.db*"):  # with a journal the kill may have left
        shutil.copy2(store_file, snapshot / store_file.name)
    resumed = run(["dvc", "repro"], repo, env=env)
    return SimpleNamespace(repo=repo, killed=killed, resumed=resumed,
                           store_after_kill=snapshot / "mlflow.db")


class Background:
    """`work()` in a thread of its own, started at once; `result()` waits for it and returns
    what it returned, or raises what it raised (pytest's skip included).

    For work that runs commands in subprocesses, which leave this process free: a tiny
    `dvc repro` keeps about one core busy, mostly importing TensorFlow in each stage, so
    it can run beside the in-process tests on a machine with two cores."""

    def __init__(self, work: Callable[[], object]) -> None:
        self._value: object = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], object]) -> None:
        try:
            self._value = work()
        except BaseException as error:  # for whoever asks for the result
            self._error = error

    def join(self, timeout: float = 1800) -> None:
        """Wait for the work to end, whatever its outcome."""
        self._thread.join(timeout)

    def result(self, timeout: float = 1800) -> object:
        self.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"background work still running after {timeout} s")
        if self._error is not None:
            raise self._error
        return self._value


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, root: Path, timeout: float = 120,
                  env: dict[str, str] | None = None) -> Iterator[SimpleNamespace]:
    """A real `mlflow server` on 127.0.0.1 with `backend_store_uri`, serving artifacts from
    root/artifacts (its log: root/server.log); yields `url` and `root` once /health answers,
    and stops the server on exit. A server that dies or stays silent fails with its log.
    `env`: the server's environment (default: `clean_env()`), MLflow's settings left out.

    The server runs without MLflow's job execution (MLFLOW_SERVER_ENABLE_JOB_EXECUTION, on by
    default since MLflow 3.x): it serves GenAI jobs (scorers, trace roll-ups) that nothing
    here uses, and its runner starts eight more Python processes that slow the server's
    start and stop by seconds each and compete for the CPU with the stages under test."""
    port = free_port()
    cmd = ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", backend_store_uri,
           "--artifacts-destination", str(root / "artifacts")]
    url = f"http://127.0.0.1:{port}"
    with open(root / "server.log", "w") as log:
        env = {k: v for k, v in (env or clean_env()).items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    urllib.request.urlopen(f"{url}/health", timeout=2).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError((root / "server.log").read_text()[-3000:]) from None
                    time.sleep(0.5)
            yield SimpleNamespace(url=url, root=root)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
