"""How fast and how big the pipeline's stages are (issue 6): generate and evaluate speed,
the no-op `dvc repro`, and each stage's peak memory. A benchmark, not a test.

Each function returns one JSON-serialisable record: `benchmark`, the figures, `target`,
`met`, and `benchmarks.records.machine()`; `python -m benchmarks` prints it as one line and
appends it to benchmarks/results.jsonl. Run from the repo root after `dvc repro`, e.g.
    python -c "from benchmarks import stages as b; print(b.generate_rate())"

- `generate_rate`: samples/s of `sampling.generate.draw_samples`, the generate stage's own sampling,
  after one warm-up call (the grid pictures and file writes are not timed).
- `evaluate_seconds`: the evaluate stage's scoring (`evaluate_generator`, then the
  classifier's accuracy pass) of 10,000 samples against the processed data as the stage
  reads it, from disk (`default`), or against full-MNIST-sized real sets held in memory
  (`full_mnist_size`: 50,000 train and 10,000 test images tiled from it with a little
  noise; meant for the small default data). Timed: the reads from disk, as in the stage.
  Not timed: opening the data and loading the classifier (reported apart), MLflow
  logging, and the Inception metrics `evaluate.inception` adds (off by default).
- `noop_repro_seconds`: `dvc repro` where `dvc status` shows nothing to do, median of 3.
- `stage_memory`: each stage's dvc.yaml command in its own process, in a temporary copy of
  stages/, dvc.yaml and params.yaml with few epochs; the peak RSS is `os.wait4`'s ru_maxrss.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from benchmarks.records import machine
from dcgan.core.config import FetchConfig, load_params
from dcgan.core.errors import UserError
from dcgan.evaluation.classifier import accuracy
from dcgan.evaluation.evaluate import evaluate_generator
from dcgan.ingest.sources import load_array_dataset
from dcgan.nets.serialisation import load_model
from dcgan.processed.batches import images_at
from dcgan.processed.imagestore import open_dataset
from dcgan.sampling.generate import draw_samples, load_generator_file

STAGES = ("fetch", "preprocess", "classifier", "train", "generate", "evaluate", "probe", "track")
REAL_SETS = {"default": None, "full_mnist_size": (50_000, 10_000)}  # (train, test) images
DATASETS = {"default": None, "60k": 60_000}  # images written in fetch's format (None: fetched)
MB = 1e6  # targets are in decimal GB: 3 GB = 3000 MB
# Between the caller and the measured command. At exec, Linux carries the high-water RSS of
# the forking process into the child's ru_maxrss (exec_mmap), so a stage spawned straight
# from a caller holding TensorFlow would read at least the caller's size. This lean process
# holds ~10 MB, and it alone forks the stage.
_LAUNCHER = """import json, os, subprocess, sys, time
cmd, cwd, log = json.loads(sys.argv[1])
with open(log, "ab") as out, open(log + ".err", "ab") as err:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err)
    _, status, usage = os.wait4(proc.pid, 0)
print(json.dumps([os.waitstatus_to_exitcode(status), usage.ru_maxrss,
                  time.perf_counter() - start]))
"""


def _record(benchmark: str, target: str, met: bool, **figures: object) -> dict:
    return {"benchmark": benchmark, **figures, "target": target, "met": bool(met), **machine()}


def generate_rate(generator_path: Path = Path("models/generator.keras"),
                  num_samples: int = 10_000, seed: int = 0) -> dict:
    """Samples per second of the generate stage's `draw_samples`, after one warm-up call.

    Raises:
        UserError: if the generator file is missing or not a Keras model.
    """
    generator = load_generator_file(generator_path)
    draw_samples(generator, num_samples, np.random.default_rng(seed))  # traces predict
    start = time.perf_counter()
    samples = draw_samples(generator, num_samples, np.random.default_rng(seed))
    seconds = time.perf_counter() - start
    rate = num_samples / seconds
    return _record("generate", ">= 1000 samples/s (10,000 in <= 10 s)", rate >= 1000,
                   samples=num_samples, shape=list(samples.shape[1:]),
                   seconds=round(seconds, 3), samples_per_sec=round(rate, 1))


def tiled(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` images cycled from `x`, each with a little noise so no two are equal."""
    out = np.resize(x, (n, *x.shape[1:]))
    return np.clip(out + rng.normal(0, 0.05, out.shape).astype(np.float32), -1, 1)


def evaluate_seconds(real: str = "default", num_samples: int = 10_000,
                     data_file: Path = Path("data/processed/dataset"),
                     classifier_path: Path = Path("models/classifier.keras"),
                     generator_path: Path = Path("models/generator.keras"),
                     params_file: Path = Path("params.yaml")) -> dict:
    """Seconds of the evaluate stage's scoring of `num_samples` generated images.

    Args:
        real: "default" (the processed data as it is) or "full_mnist_size" (see the module).

    Raises:
        UserError: if the data, classifier, generator or params file is missing or broken.
    """
    if real not in REAL_SETS:
        raise UserError(f"real set {real!r}: expected one of {', '.join(REAL_SETS)}")
    cfg = load_params(params_file).evaluate
    start = time.perf_counter()
    data = open_dataset(data_file)
    classifier = load_model(classifier_path, remedy="run the classifier stage first "
                                                    "(`dvc repro classifier`)")
    load_seconds = time.perf_counter() - start
    samples = draw_samples(load_generator_file(generator_path), num_samples,
                           np.random.default_rng(0))
    train_x, test_x, test_y = data.train_x, data.test_x, data.test_y
    if REAL_SETS[real]:
        rng = np.random.default_rng(0)
        n_train, n_test = REAL_SETS[real]
        train_x = tiled(images_at(train_x, slice(None)), n_train, rng)
        test_x = tiled(images_at(test_x, slice(None)), n_test, rng)
        test_y = np.resize(test_y, n_test)
    start = time.perf_counter()
    result = evaluate_generator(classifier, samples, train_x, test_x, cfg, data.labelled)
    accuracy(classifier, test_x, test_y, cfg.batch_size)
    seconds = time.perf_counter() - start
    return _record("evaluate", "<= 60 s for 10,000 samples", seconds <= 60, real=real,
                   samples=num_samples, train=len(train_x), test=len(test_x),
                   n=result["frechet_samples"], seconds=round(seconds, 2),
                   load_seconds=round(load_seconds, 2),
                   frechet_distance=round(result["frechet_distance"], 3))


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True,
                          text=True)


def noop_repro_seconds(repo: Path = Path("."), runs: int = 3) -> dict:
    """Median seconds of `runs` `dvc repro` calls in `repo` when nothing changed.

    Raises:
        UserError: if `repo` is not a DVC repo, or `dvc status` shows changes (repro would
            run stages, so it would not be a no-op).
    """
    status = _dvc(repo, "status", "--json")
    if status.returncode:
        lines = (status.stderr.strip() or status.stdout.strip() or "failed").splitlines()
        raise UserError(f"{Path(repo).resolve()}: `dvc status` failed ({lines[-1]}); run the "
                        "benchmark in a DVC repo's root")
    changed = sorted(json.loads(status.stdout or "{}"))
    if changed:
        raise UserError(f"{Path(repo).resolve()}: `dvc status` shows changes in "
                        f"{', '.join(changed)}, so `dvc repro` would run them, not a no-op; "
                        "run `dvc repro` first, then the benchmark")
    seconds, ran = [], set()
    for _ in range(runs):
        start = time.perf_counter()
        proc = _dvc(repo, "repro")
        seconds.append(time.perf_counter() - start)
        if proc.returncode:
            raise UserError(f"{Path(repo).resolve()}: `dvc repro` failed: "
                            f"{proc.stderr.strip()[-300:]}")
        ran |= {line.split("'")[1] for line in proc.stdout.splitlines()
                if line.startswith("Running stage")}
    median = statistics.median(seconds)
    return _record("noop_repro", "<= 5 s, no stage run", median <= 5 and not ran,
                   seconds=round(median, 2), runs=[round(s, 2) for s in seconds],
                   stages_ran=sorted(ran))


def stage_commands(dvc_yaml: Path) -> dict[str, list[str]]:
    """Each stage's `cmd` from dvc.yaml, `${...}` filled from its `vars`, as argv lists.

    Raises:
        UserError: if a command names a variable that `vars` does not define.
    """
    spec = yaml.safe_load(Path(dvc_yaml).read_text())
    values: dict[str, str] = {}

    def flatten(prefix: str, node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                flatten(f"{prefix}{key}.", value)
        else:
            values[prefix[:-1]] = str(node)

    for entry in spec.get("vars", []):
        flatten("", entry if isinstance(entry, dict) else {})

    def fill(match: re.Match) -> str:
        if match[1] not in values:
            raise UserError(f"{dvc_yaml}: ${{{match[1]}}} is not defined under vars; "
                            "define it there")
        return values[match[1]]

    return {name: shlex.split(re.sub(r"\$\{\s*([\w.]+)\s*\}", fill, stage["cmd"]))
            for name, stage in spec["stages"].items()}


def peak_rss(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[int, float]:
    """Run `cmd` and return its peak RSS in KiB and its seconds; its stdout is appended to
    `log`, its stderr to `log` + ".err".

    Raises:
        UserError: if the command fails; the message holds its last line on stderr.
    """
    launcher = subprocess.run([sys.executable, "-I", "-c", _LAUNCHER,
                               json.dumps([cmd, str(cwd), str(log)])],
                              env=env, capture_output=True, text=True, check=True)
    code, kib, seconds = json.loads(launcher.stdout)
    if code:
        lines = Path(f"{log}.err").read_text(errors="replace").strip().splitlines()
        raise UserError(f"{Path(cmd[0]).name} {cmd[1]} failed (exit {code}): "
                        f"{(lines or ['nothing on stderr'])[-1]}")
    return kib, seconds


def _workdir(repo: Path, dest: Path, dataset: str, epochs: dict[str, int]) -> None:
    """Copy stages/, dvc.yaml and params.yaml to `dest`, with `epochs` set; for `60k`,
    write fetch's raw file: the default digits cycled to 60,000, each with a little noise."""
    shutil.copytree(repo / "stages", dest / "stages")
    shutil.copy2(repo / "dvc.yaml", dest / "dvc.yaml")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in epochs.items():
        section, name = key.split(".")
        params[section][name] = value
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if dataset == "60k":
        x, y = load_array_dataset(FetchConfig(dataset="mnist-5k"), dest / "data/cache")
        rng = np.random.default_rng(0)
        noise = rng.integers(-8, 9, (DATASETS[dataset], *x.shape[1:]))
        x = np.clip(np.resize(x, noise.shape) + noise, 0, 255).astype(np.uint8)
        (dest / "data/raw").mkdir(parents=True)
        np.savez(dest / "data/raw/images.npz", x=x, y=np.resize(y, len(x)).astype(np.int64))


def stage_memory(dataset: str = "default", train_epochs: int = 1, classifier_epochs: int = 1,
                 repo: Path = Path("."), until: str = "track") -> dict:
    """Peak RSS and seconds of each stage, fetch to `until`, each in its own process.

    Runs in a temporary directory (its own MLflow SQLite store), never in `repo`'s data.
    train evaluates quality every epoch (train.eval_every 1), so its peak includes that.

    Args:
        dataset: "default" (params.yaml's dataset, fetched) or "60k" (60,000 28x28 grey
            images written in fetch's format; fetch itself is skipped).
        until: the last stage to run, in the order of `STAGES`.

    Raises:
        UserError: if a stage fails, or `repo` lacks stages/, dvc.yaml or params.yaml.
    """
    repo = Path(repo)
    if dataset not in DATASETS or until not in STAGES:
        raise UserError(f"dataset {dataset!r} / stage {until!r}: expected a dataset of "
                        f"{', '.join(DATASETS)} and a stage of {', '.join(STAGES)}")
    for name in ("stages", "dvc.yaml", "params.yaml"):
        if not (repo / name).exists():
            raise UserError(f"{repo.resolve() / name}: not found; run the benchmark from the "
                            "repo root or pass the repo's path")
    commands = stage_commands(repo / "dvc.yaml")
    epochs = {"train.epochs": train_epochs, "train.eval_every": 1,
              "classifier.epochs": classifier_epochs}
    stages: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="dcgan-stage-memory-") as tmp:
        work = Path(tmp)
        _workdir(repo, work, dataset, epochs)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
        for name in STAGES[:STAGES.index(until) + 1]:
            if name == "fetch" and dataset == "60k":
                continue
            cmd = [sys.executable if a == "python" else a for a in commands[name]]
            kib, seconds = peak_rss(cmd, work, env, work / f"{name}.log")
            stages[name] = {"peak_rss_mb": round(kib * 1024 / MB), "seconds": round(seconds, 1)}
        stats = work / commands["preprocess"][commands["preprocess"].index("--stats") + 1]
        images = sum(json.loads(stats.read_text())["counts"].values()) if stats.exists() else None
    train = stages.get("train", {}).get("peak_rss_mb", float("inf"))
    return _record("stage_memory", "train peak RSS <= 3000 MB", train <= 3000,
                   dataset=dataset, images=images, params=epochs, stages=stages)
