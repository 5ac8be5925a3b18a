"""Helpers for the end-to-end tests: a tiny copy of this repo in a temporary git repo,
running commands (dvc, git, stage scripts) in it with a clean environment, and a real
`mlflow server` on 127.0.0.1.

Imported by conftest.py (the session's `pipeline` fixture), test_pipeline.py,
test_experiments.py and test_postgres.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import yaml

REPO = Path(__file__).resolve().parents[1]

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


def commit_all(repo: Path, message: str) -> str:
    """`git add -A` and commit; returns the new HEAD."""
    run(["git", "add", "-A"], repo)
    run(["git", *GIT_USER, "commit", "-qm", message], repo)
    return run(["git", "rev-parse", "HEAD"], repo).stdout.strip()


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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, root: Path,
                  timeout: float = 120) -> Iterator[SimpleNamespace]:
    """A real `mlflow server` on 127.0.0.1 with `backend_store_uri`, serving artifacts from
    root/artifacts (its log: root/server.log); yields `url` and `root` once /health answers,
    and stops the server on exit. A server that dies or stays silent fails with its log."""
    port = free_port()
    cmd = ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", backend_store_uri,
           "--artifacts-destination", str(root / "artifacts")]
    url = f"http://127.0.0.1:{port}"
    with open(root / "server.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=clean_env(), stdout=log, stderr=log)
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
