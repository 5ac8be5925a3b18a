"""scripts/setup.sh and scripts/find_python.sh without installing anything: which Python is
picked, the one-line errors (unsupported or missing Python, no ensurepip), and that a failed
set-up keeps the environment it was replacing and leaves nothing half-made.

Interpreters that are not this one are small shell scripts on a PATH of their own (a pyenv
shim that does not run, a Python 3.10), or wrap this one (to fail at `python -m venv`).
Run with `pytest tests/test_setup.py -q` (a few seconds).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = ["bash", "sh", "sed", "awk", "cut", "seq", "dirname", "cat", "sha256sum", "mktemp", "ls",
         "flock", "rm", "mv", "mkdir", "tail"]
THIS = "{}.{}".format(*sys.version_info)
FULL = "{}.{}.{}".format(*sys.version_info)


def _supported() -> str:
    """'3.11 to 3.13', from pyproject.toml's requires-python."""
    spec = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    lo, hi = re.fullmatch(r">=3\.(\d+),<3\.(\d+)", spec).groups()
    return f"3.{lo} to 3.{int(hi) - 1}"


def _script(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """A PATH folder with the shell tools the scripts use and no Python at all."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in TOOLS:
        if found := shutil.which(name):
            (tools / name).symlink_to(found)
    return tools


def _run(script: str, bin_dir: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("PYTHON", "VENV", "PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(["bash", f"scripts/{script}"], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**base, "PATH": str(bin_dir), **env})


def _python310(bin_dir: Path, name: str = "python3") -> Path:
    """A Python 3.10 that answers the version question."""
    return _script(bin_dir / name, 'printf "3.10.13\\t%s\\n" "$0"')


def _one_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("setup: "), proc.stderr
    return lines[0]


def test_picks_the_first_that_runs_and_says_which(bin_dir: Path) -> None:
    # A pyenv shim for a version pyenv has not enabled: on PATH, but it does not run.
    _script(bin_dir / "python3.11", 'echo "pyenv: python3.11: command not found" >&2; exit 127')
    (bin_dir / "python3.12").symlink_to(sys.executable)
    _python310(bin_dir)
    proc = _run("find_python.sh", bin_dir)
    assert proc.returncode == 0, proc.stderr
    name, version, executable = proc.stdout.rstrip("\n").split("\t")
    assert (name, version) == ("python3.12", FULL)
    assert Path(executable).is_absolute()


def test_python3_is_used_only_in_range(bin_dir: Path) -> None:
    (bin_dir / "python3").symlink_to(sys.executable)
    assert _run("find_python.sh", bin_dir).stdout.startswith("python3\t")
    (bin_dir / "python3").unlink()
    _python310(bin_dir)
    error = _one_error(_run("find_python.sh", bin_dir))
    assert f"no Python {_supported()} runs here" in error
    assert "found: python3 3.10.13" in error and "apt-get install python3.11 " in error


def test_an_explicit_python_is_honoured_or_refused(bin_dir: Path, tmp_path: Path) -> None:
    (bin_dir / "python3.11").symlink_to(sys.executable)
    old = _python310(tmp_path, "python3.10")
    error = _one_error(_run("find_python.sh", bin_dir, PYTHON=str(old)))
    assert f"PYTHON={old} is Python 3.10.13; this project needs Python {_supported()}" in error
    error = _one_error(_run("find_python.sh", bin_dir, PYTHON="python3.9"))
    assert "PYTHON=python3.9 does not run" in error
    proc = _run("find_python.sh", bin_dir, PYTHON=sys.executable)
    assert proc.stdout.startswith(f"{sys.executable}\t{THIS}.")


def test_no_ensurepip_names_the_debian_package(bin_dir: Path, tmp_path: Path) -> None:
    # Debian ships ensurepip only in python3.X-venv: without it, `import ensurepip` fails.
    shadow = tmp_path / "no-venv-package"
    shadow.mkdir()
    (shadow / "ensurepip.py").write_text("raise ImportError('No module named ensurepip')\n")
    error = _one_error(_run("find_python.sh", bin_dir, PYTHON=sys.executable,
                            PYTHONPATH=str(shadow)))
    assert error == (f"setup: {sys.executable} cannot create a virtual environment (no "
                     f"ensurepip); install it with: apt-get install python{THIS}-venv")


def test_setup_stops_before_making_anything(bin_dir: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    error = _one_error(_run("setup.sh", bin_dir, VENV=str(venv),
                            PYTHON=str(_python310(tmp_path, "python3.10"))))
    assert "is Python 3.10.13" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "python3.10"]


def _failing_python(tmp_path: Path) -> Path:
    """This Python, except that `-m venv DIR` leaves DIR half-made and fails."""
    return _script(tmp_path / "python", f"""
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin" && echo half > "$3/bin/python"
  echo "OSError: [Errno 28] No space left on device" >&2
  exit 1
fi
exec {sys.executable} "$@"
""")


def _finished_venv(path: Path) -> None:
    path.mkdir()
    (path / "pyvenv.cfg").write_text("version = old\n")
    (path / ".stamp").write_text("an older stamp\n")


@pytest.mark.parametrize("interrupted", [False, True])
def test_a_failed_setup_keeps_the_old_environment(bin_dir: Path, tmp_path: Path,
                                                  interrupted: bool) -> None:
    venv = tmp_path / "venv"
    if interrupted:  # an earlier set-up killed mid-way: old one aside, new one unfinished
        _finished_venv(tmp_path / "venv.previous")
        (venv / "bin").mkdir(parents=True)
    else:
        _finished_venv(venv)
    proc = _run("setup.sh", bin_dir, VENV=str(venv), PYTHON=str(_failing_python(tmp_path)))
    assert proc.stdout.startswith(f"setting up {venv} with {tmp_path / 'python'} (Python {THIS}.")
    assert proc.stdout.rstrip().endswith("a few minutes the first time)...")
    first, *rest = proc.stderr.splitlines()
    assert proc.returncode == 1
    assert first.startswith(f"setup: installing the pinned dependencies into {venv} with ")
    assert f"failed (the previous {venv} is kept)" in first
    assert rest[-1] == "OSError: [Errno 28] No space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "python", "venv"]
    assert (venv / ".stamp").read_text() == "an older stamp\n"
    assert not (venv / "bin").exists()


def test_a_failed_first_setup_leaves_nothing(bin_dir: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    proc = _run("setup.sh", bin_dir, VENV=str(venv), PYTHON=str(_failing_python(tmp_path)))
    assert proc.returncode == 1
    assert "failed (nothing was left behind)" in proc.stderr.splitlines()[0]
    assert not venv.exists() and not (tmp_path / "venv.previous").exists()


def test_a_failed_update_leaves_the_environment_as_it_was(bin_dir: Path, tmp_path: Path) -> None:
    # A finished environment of this Python, made from older pins: updated in place by pip,
    # which this one lacks, so the update fails before it changes anything.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (venv / ".stamp").write_text("an older stamp\n")
    before = sorted(p.relative_to(venv) for p in venv.rglob("*"))
    proc = _run("setup.sh", bin_dir, VENV=str(venv))
    assert proc.stdout.startswith(f"updating {venv} (Python {THIS}) to the pinned dependencies")
    first, *rest = proc.stderr.splitlines()
    assert proc.returncode == 1
    assert first.startswith(f"setup: updating {venv} to the pinned dependencies failed (")
    assert rest[-1].endswith("No module named pip")
    assert sorted(p.relative_to(venv) for p in venv.rglob("*")) == before
    assert (venv / ".stamp").read_text() == "an older stamp\n"
