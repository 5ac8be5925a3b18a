"""What every benchmark record carries, and the one way records are written.

- `in_fresh_process` runs a measurement in a fresh Python process (TensorFlow's state, op
  determinism and dtype policy do not leak between measurements);
- `machine` says where and with what a figure was taken, `installed_torch` which PyTorch
  the peer benchmarks ran;
- `append_result` adds the record to benchmarks/results.jsonl, which the docs render from.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from dcgan.core.errors import UserError

ROOT = Path(__file__).resolve().parent.parent  # the repository: `benchmarks` imports from here


def in_fresh_process(module: str, function: str, args: dict) -> object:
    """`module.function(**args)` in a fresh Python process; its JSON result.

    Raises:
        UserError: if the process fails; the message holds its last line on stderr.
    """
    code = (f"import json, sys; from {module} import {function}; "
            f"print(json.dumps({function}(**json.loads(sys.argv[1]))))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True,
                          text=True, env=child_env())
    if proc.returncode:
        # The exception's own line (a traceback's last line may be a note under it).
        lines = [line for line in proc.stderr.splitlines()
                 if re.match(r"[\w.]+(Error|Exception): ", line)] or ["no error line"]
        raise UserError(f"{function}({', '.join(f'{k}={v!r}' for k, v in args.items())}) "
                        f"failed: {lines[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a fresh Python process that imports `benchmarks`
    from any directory (the repository on PYTHONPATH), with `extra` variables set."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, **extra, "PYTHONPATH": path}


def _isa() -> str | None:
    """The widest of the vector extensions that decide TensorFlow's CPU kernels (bfloat16
    native or not, AVX-512 or AVX2), from /proc/cpuinfo's flags."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        return None
    return next((isa for isa in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if isa in flags),
                "older")


def machine() -> dict:
    """Where and with what a figure was taken."""
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or None
    return {"cpu": cpu, "cpu_isa": _isa(), "cores": os.cpu_count(),
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1"),  # dcgan's default
            "python": platform.python_version(),
            "tensorflow": version("tensorflow"), "keras": version("keras"),
            "git_commit": commit, "date": datetime.now(UTC).isoformat(timespec="seconds")}


def installed_torch() -> str:
    """The installed PyTorch's version.

    Raises:
        UserError: if PyTorch, a benchmark-only dependency, is not installed.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        raise UserError("PyTorch is not installed: `pip install -r requirements-bench.txt -c "
                        "constraints-bench.txt` (the CPU build, benchmarks only)") from None


def append_result(record: dict, path: Path) -> None:
    """Add `record` as one JSON line to the results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
