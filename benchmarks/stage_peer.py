"""The train stage itself against PyTorch's step: `python -m benchmarks stage`.

`python -m benchmarks train --peer pytorch` times our train step alone, on random images in
memory. A user runs the train stage: `dvc repro` on their folder, with the data read from
the processed store, the per-epoch grid, history, Fréchet distance every `train.eval_every`
epochs, keep-best and the checkpoint. This benchmark measures that:

1. draw a folder of 64 px RGB JPEGs in class folders (benchmarks.data.make_folder);
2. in a temporary DVC repo (a copy of stages/, src/dcgan and dvc.yaml, as
   `python -m benchmarks data` makes it) run fetch, preprocess and the classifier;
3. time `dvc repro train` at `short` epochs and again at `long` epochs (params changed, so
   train alone reruns). The difference, `long - short` epochs, is a whole number of FD
   intervals; start-up, tracing and the first epoch cancel. The stage's rate is the images
   of those epochs (full batches: train drops the remainder) over the extra seconds;
4. PyTorch's main.py step (benchmarks.peer.torch_rate) before and after the stage runs, in
   fresh processes, at the same batch, size and precision.

The record compares the stage's ratio to PyTorch with the latest step-alone ratio
(`train_vs_pytorch`, same precision, `alternating`) in the results file.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.records import ROOT, in_fresh_process, installed_torch, machine
from dcgan.core.errors import UserError

TOLERANCE = 0.10  # the stage's ratio within 10% of the step-alone ratio


def run(precision: str, images: int = 3000, short: int = 1, long: int = 6,
        results: Path = ROOT / "benchmarks/results.jsonl") -> dict:
    """Steps 1-4 (module docstring); the record.

    Raises:
        UserError: if PyTorch is missing, `long - short` is not a positive multiple of
            train.eval_every, or a stage fails.
    """
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    every = params["train"]["eval_every"]
    if long <= short or (every and (long - short) % every):
        raise UserError(f"--epochs {short} {long}: the second must exceed the first by a "
                        f"multiple of train.eval_every ({every})")
    torch_version = installed_torch()  # before minutes of measuring
    peer = dict(batch_size=params["train"]["batch_size"], image_size=64, precision=precision,
                steps=20, warmup=5)
    trained, seconds, torch_rates = _measure(precision, images, (short, long), every, peer)
    per_epoch = trained // peer["batch_size"] * peer["batch_size"]  # full batches only
    stage_rate = per_epoch * (long - short) / (seconds[long] - seconds[short])
    ratio = stage_rate / statistics.mean(torch_rates)
    bench = [r for r in _records(results) if r.get("benchmark") == "train_vs_pytorch"
             and r["precision"] == precision and r["update"] == "alternating"]
    bench_ratio = bench[-1]["ours_over_pytorch"] if bench else None
    return {
        "benchmark": "train_stage_vs_pytorch", "torch": torch_version,
        "precision": precision, "folder_images": images,
        "train_images": trained, "images_per_epoch": per_epoch, "image_shape": [64, 64, 3],
        "batch_size": peer["batch_size"],
        "eval_every": every, "epochs": [short, long],
        "stage_seconds": {str(k): round(v, 1) for k, v in seconds.items()},
        "images_per_sec": {"stage": round(stage_rate, 1),
                           "pytorch": [round(r, 1) for r in torch_rates]},
        "stage_over_pytorch": round(ratio, 3), "bench_over_pytorch": bench_ratio,
        "bench_commit": bench[-1]["git_commit"] if bench else None,
        "stage_over_bench": round(ratio / bench_ratio, 3) if bench_ratio else None,
        "target": f"stage ratio within {TOLERANCE:.0%} of the step-alone ratio",
        "met": bool(bench_ratio) and abs(ratio / bench_ratio - 1) <= TOLERANCE,
        **machine(),
    }


def _measure(precision: str, images: int, epochs: tuple[int, int], every: int,
             peer: dict) -> tuple[int, dict[int, float], list[float]]:
    """Steps 1-4: the training images, the seconds of `dvc repro train` at each of `epochs`,
    and PyTorch's images/s before and after."""
    from benchmarks.data import _workspace

    with tempfile.TemporaryDirectory(prefix="dcgan-bench-stage-") as tmp:
        work, folder = Path(tmp) / "work", Path(tmp) / "images"
        in_fresh_process("benchmarks.data", "make_folder",
                         {"root": str(folder), "n": images, "size": 64, "classes": 10})
        _workspace(ROOT, work, folder, images, 64)
        _set(work, {"train.eval_every": every, "train.precision": precision,
                    "train.batch_size": peer["batch_size"]})
        _repro(work, "classifier")  # fetch, preprocess and the classifier, untimed
        paths = yaml.safe_load((work / "dvc.yaml").read_text())["vars"][0]["paths"]
        trained = json.loads((work / paths["stats"]).read_text())["counts"]["train"]
        torch_rates = [in_fresh_process("benchmarks.peer", "torch_rate", peer)]
        seconds = {}
        for count in epochs:
            _set(work, {"train.epochs": count})
            seconds[count] = _repro(work, "train")
        torch_rates.append(in_fresh_process("benchmarks.peer", "torch_rate", peer))
    return trained, seconds, torch_rates


def _set(work: Path, values: dict[str, object]) -> None:
    """Set `section.key` values in the workspace's params.yaml."""
    params = yaml.safe_load((work / "params.yaml").read_text())
    for key, value in values.items():
        section, name = key.split(".")
        params[section][name] = value
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _repro(work: Path, stage: str) -> float:
    """Seconds of `dvc repro STAGE` in the workspace (what it needs first, included)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", stage], cwd=work, env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise UserError(f"bench stage: dvc repro {stage} failed: "
                        f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    return time.perf_counter() - start


def _records(path: Path) -> list[dict]:
    """The records of the results file, oldest first; none if it does not exist."""
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
