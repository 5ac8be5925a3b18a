"""Datasets of any size (issue 15): memory, disk and speed of the streamed data path, on a
synthetic folder of N images. `python -m benchmarks data` prints one JSON record and appends it to
benchmarks/results.jsonl; all in a temporary directory, deleted afterwards (Ctrl-C too).

1. N JPEGs, SIZE wide, SIZE*78/64 tall (cropped, as CelebA's 178x218), colour fields
   tinted by class (learnable labels), in K class folders, drawn on every core.
2. A DVC repo: git and dvc init, the project's .dvc/config, stages/, src/dcgan, dvc.yaml,
   params.yaml on that folder (`fetch.dataset: folder`), one epoch, eval_every 1.
3. Peak RSS of each stage with its children (`stages.peak_rss`): fetch, preprocess
   by `dvc repro -s` (the data enters .dvc/cache), the others by their dvc.yaml commands;
   train (a 64 px epoch: 2.3 h in float32 on 2 AVX2 cores) as `train_steps`: the stage's
   data, model and quality monitor for S steps, then G, D and the MLflow run later stages
   read. Target: <= 3000 MB.
4. Disk of data/, models/, .dvc/cache after preprocess, each inode once (DVC hardlinks),
   over the uint8 array N*SIZE*SIZE*3. Target: <= 1.5.
5. Preprocess of 50,000 of the images pinned to one core (one worker) and on all cores.
   Target: >= 1.8x on 2 cores. `full_images_per_sec`: the whole stage, DVC included.
6. Train images/s at 28 px (the folder preprocessed again) and SIZE px: batches from one
   uint8 array in memory, from disk in the page cache, from disk after
   posix_fadvise(DONTNEED) (`disk_cold`). S steps after 10 at SIZE px, S*(SIZE/28)^2 at
   28 px, so that runs last alike (10 steps at 28 px are 5 s, too short to time on a
   shared machine). Target: disk/memory >= 0.95.
7. Steps 1-4 again for --second images: memory should not grow with N.
Measurements run in fresh processes, alternating; figures are medians. Train precision is
params.yaml's (`auto`: bfloat16 where it is native, float32 elsewhere).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from benchmarks.speed import preprocess_scaling, say, throughput
from dcgan.core.errors import UserError
from dcgan.nets.architectures import paper_start_size

# TensorFlow (benchmarks.step and .stages, the model) is imported where needed: the processes that
# draw images or preprocess import this module and fork, which TF's threads forbid.

MB = 1e6  # decimal, as benchmarks.stages
LIMITS = {"stage_rss": 3000, "disk": 1.5, "preprocess_scaling": 1.8, "train_from_disk": 0.95}
TARGET = ("every stage <= 3000 MB peak RSS; data/, models/, .dvc/cache <= 1.5x the uint8 "
          "array; preprocess all cores >= 1.8x one; train from disk >= 0.95x in memory")


def _draw(task: tuple[str, int, int, int, int]) -> int:
    """A pool task: write images first..first+count-1; returns their bytes."""
    root, first, count, size, classes = task
    written = 0
    for i in range(first, first + count):
        label, rng = i % classes, np.random.default_rng(i)
        field = Image.fromarray(rng.integers(0, 256, (4, 4, 3), np.uint8)).resize(
            (size, size * 78 // 64), Image.Resampling.BICUBIC)  # (W, H): taller than wide
        tint = 127.5 * (1 + np.cos(2 * np.pi * (label / classes + np.array([0, 1, 2]) / 3)))
        path = os.path.join(root, f"class_{label:03d}", f"{i:07d}.jpg")
        Image.fromarray((0.5 * np.asarray(field) + 0.5 * tint).astype(np.uint8)).save(
            path, quality=90)
        written += os.path.getsize(path)
    return written


def make_folder(root: str, n: int, size: int, classes: int) -> dict:
    """Write the synthetic folder (step 1); {"bytes", "disk_bytes", "seconds"}. Forks a
    pool: run it in a fresh process."""
    start = time.perf_counter()
    for label in range(classes):
        (Path(root) / f"class_{label:03d}").mkdir(parents=True)
    tasks = [(root, i, min(1000, n - i), size, classes) for i in range(0, n, 1000)]
    with multiprocessing.get_context("fork").Pool(len(os.sched_getaffinity(0))) as pool:
        written = sum(pool.imap_unordered(_draw, tasks))
    return {"bytes": written, "disk_bytes": disk_bytes(Path(root)),
            "seconds": round(time.perf_counter() - start, 3)}


def disk_bytes(*paths: Path) -> int:
    """Bytes allocated on disk (st_blocks) by `paths` and all under them, each inode once:
    a DVC cache file and its hardlinked workspace copy count once. Missing paths count 0."""
    seen, total = set(), 0
    for path in paths:
        names = [path] if path.is_file() else []
        for folder, _, files in os.walk(path):
            names += [folder, *(os.path.join(folder, f) for f in files)]
        for name in names:
            st = os.lstat(name)
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def _workspace(repo: Path, work: Path, folder: Path, n: int, size: int) -> None:
    """The DVC repo of step 2, with params for `n` images of `size` px in `folder`."""
    for name in ("stages", "src/dcgan"):
        shutil.copytree(repo / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy2(repo / name, work / name)
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
        if proc.returncode:
            raise UserError(f"bench data: {' '.join(cmd[-3:])} failed: {proc.stderr[-300:]}")
    shutil.copy2(repo / ".dvc/config", work / ".dvc/config")  # the project's cache type
    params = yaml.safe_load((repo / "params.yaml").read_text())
    # The default validation split, or a tenth of a small folder's images.
    val_size = min(params["preprocess"]["val_size"], max(1, n // 10))
    n_train = n - round(n * params["preprocess"]["test_fraction"]) - val_size
    for key, value in {"fetch.dataset": "folder", "fetch.folder": str(folder.resolve()),
                       "preprocess.image_size": size, "preprocess.val_size": val_size,
                       "train.epochs": 1,
                       "classifier.epochs": 1, "train.eval_every": 1,
                       "train.batch_size": min(params["train"]["batch_size"], n_train)}.items():
        section, name = key.split(".")
        params[section][name] = value
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _stage_peaks(work: Path, steps: int, array_bytes: int) -> tuple[dict, dict]:
    """Steps 3 and 4: ({stage: {"peak_rss_mb", "seconds"}}, the disk figures)."""
    from benchmarks.records import ROOT
    from benchmarks.stages import peak_rss, stage_commands

    commands = stage_commands(work / "dvc.yaml")
    train = commands["train"]
    paths = {k.replace("-", "_"): train[train.index(f"--{k}") + 1]
             for k in ("data", "classifier", "generator", "discriminator", "selection",
                       "run-file")}
    entry = ("import json, sys; from benchmarks.data import train_steps; "
             "print(json.dumps(train_steps(**json.loads(sys.argv[1]))))")
    runs = {**{s: ["python", "-m", "dvc", "repro", "-s", s] for s in ("fetch", "preprocess")},
            "classifier": commands["classifier"],
            "train": ["python", "-c", entry, json.dumps({"steps": steps, **paths})],
            **{name: commands[name] for name in ("generate", "evaluate", "probe")}}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)  # train's entry imports benchmarks, from the copy's cwd
    stages, disk = {}, {}
    for name, cmd in runs.items():
        say(f"stage {name}")
        cmd = [sys.executable if a == "python" else a for a in cmd]  # this venv's Python
        try:
            kib, seconds = peak_rss(cmd, work, env, work / f"{name}.log")
        except UserError as err:
            raise UserError(f"bench data: stage {name}: {err}") from None
        stages[name] = {"peak_rss_mb": round(kib * 1024 / MB), "seconds": round(seconds, 1),
                        **({"steps": steps} if name == "train" else {})}
        if name == "preprocess":
            used = disk_bytes(work / "data", work / "models", work / ".dvc/cache")
            disk = {"bytes": used, "array_bytes": array_bytes,
                    "ratio": round(used / array_bytes, 3)}
    return stages, disk


def _point(repo: Path, root: Path, n: int, size: int, classes: int, steps: int) -> dict:
    """Steps 1-4 for `n` images under `root`; the workspace is root/work."""
    from benchmarks.records import in_fresh_process

    say(f"{n} images of {size} px: drawing the folder")
    folder = in_fresh_process("benchmarks.data", "make_folder", {
        "root": str(root / "images"), "n": n, "size": size, "classes": classes})
    _workspace(repo, root / "work", root / "images", n, size)
    stages, disk = _stage_peaks(root / "work", steps, n * size * size * 3)
    peak = max(s["peak_rss_mb"] for s in stages.values())
    return {"images": n, "folder": folder, "stages": stages, "peak_rss_mb": peak, "disk": disk}


def train_steps(steps: int, data: str, classifier: str, generator: str, discriminator: str,
                selection: str, run_file: str) -> dict:
    """The train stage's data, model and quality monitor for `steps` steps; saves the
    delivered G and D, writes selection.json (the steps' end is the one epoch kept), the
    MLflow run and run file, as train does (the track stage then registers G). Run in the
    workspace."""
    from dcgan.core import config, seeding
    from dcgan.core.outputs import file_md5, write_json
    from dcgan.evaluation.classifier import feature_extractor
    from dcgan.nets import model, serialisation
    from dcgan.processed import batches, imagestore
    from dcgan.tracking.runfile import RunRecord, write_run_file
    from dcgan.tracking.runlog import RunLog
    from dcgan.training.selection import FixedSampleFD

    params = config.load_params("params.yaml")
    cfg, dataset = params.train, imagestore.open_dataset(Path(data))
    seeding.seed_everything(cfg.seed)
    seeding.set_precision(cfg.precision)
    seeded = batches.SeededBatches(dataset.train_x, cfg.batch_size, cfg.seed)
    gan = model.build_gan(cfg, dataset.image_shape)
    features = feature_extractor(serialisation.load_model(Path(classifier), "run classifier"))
    score = FixedSampleFD(features, dataset.val_x, cfg.latent_dim, cfg.seed)
    gan.fit(seeded.dataset, epochs=1, steps_per_epoch=steps, callbacks=[seeded],
            shuffle=False, verbose=2)
    fd = score(gan.sampler)  # what the quality monitor scores at the epoch's end
    tags = {"dataset": "folder", "data_md5": imagestore.dataset_md5(Path(data)),
            "arch": cfg.arch}
    logged = config.flatten(params, ("fetch", "preprocess", "train"))
    with RunLog.open(logged, tags, "bench-data") as run:
        serialisation.save_model(gan.sampler, Path(generator))
        serialisation.save_model(gan.discriminator, Path(discriminator))
        write_json({"generator": "ema" if gan.average is not None else "raw", "kept": "last",
                    "epoch": 1, "frechet_distance": fd, "stopped_early": None},
                   Path(selection))
        md5 = file_md5(Path(generator))
        run.tags({"generator_md5": md5})
        write_run_file(Path(run_file), RunRecord(md5, logged, tags))
    return {"run_id": run.run_id, "frechet_distance": fd}


def run(images: int = 200_000, size: int = 64, classes: int = 10, second: int = 50_000,
        train_steps: int = 200, repeats: int = 2, repo: Path = Path(".")) -> dict:
    """The whole benchmark (module docstring); its record.

    Raises:
        UserError: on sizes the pipeline cannot run, a missing repo file or a failing stage.
    """
    repo = Path(repo).resolve()
    if (paper_start_size(size) is None or min(classes, train_steps, repeats) < 1
            or images < max(10, 2 * classes) or second < 0 or 0 < second < 10):
        raise UserError(f"bench data: --size {size} must suit the paper arch (16, 28, 32, 64 "
                        "...), --images >= 10 and >= 2x --classes, --second 0 or >= 10")
    for name in ("stages", "src/dcgan", "dvc.yaml", "params.yaml", ".dvc/config", ".dvcignore"):
        if not (repo / name).exists():
            raise UserError(f"{repo / name}: not found; run the benchmark in the repo root")
    stop = signal.signal(signal.SIGTERM, _terminate)  # a kill, as Ctrl-C, deletes tmp
    try:
        with tempfile.TemporaryDirectory(prefix="dcgan-bench-data-",
                                         ignore_cleanup_errors=True) as tmp:
            main = _point(repo, Path(tmp) / "main", images, size, classes, train_steps)
            work = Path(tmp) / "main/work"
            scaling = preprocess_scaling(work, Path(tmp) / "scaling", size, repeats)
            scaling["full_images_per_sec"] = round(images / main["stages"]["preprocess"]["seconds"])
            speed = {f"{px}px": throughput(
                work, Path(tmp) / f"p{px}", px,
                max(train_steps, round(train_steps * (size / px) ** 2)), repeats)
                for px in sorted({28, size})}
            extra = _point(repo, Path(tmp) / "second", second, size, classes, train_steps) \
                if second else None
    finally:
        signal.signal(signal.SIGTERM, stop)
    from dcgan.core.seeding import resolve_precision  # TF, in this process only at the end

    precision = resolve_precision(yaml.safe_load((repo / "params.yaml").read_text())
                                  ["train"]["precision"])
    return _figures(main, extra, scaling, speed,
                    {"size": size, "classes": classes, "precision": precision})


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _figures(main: dict, extra: dict | None, scaling: dict, speed: dict, about: dict) -> dict:
    """The record: the figures, a boolean per target, `met` when all are."""
    from benchmarks.stages import _record

    points = [main, *([extra] if extra else [])]
    targets = {
        "stage_rss": all(p["peak_rss_mb"] <= LIMITS["stage_rss"] for p in points),
        "disk": all(p["disk"]["ratio"] <= LIMITS["disk"] for p in points),
        "preprocess_scaling": scaling["speedup"] >= LIMITS["preprocess_scaling"],
        "train_from_disk": all(s["disk_over_memory"] >= LIMITS["train_from_disk"]
                               for s in speed.values())}
    return _record("data", TARGET, all(targets.values()), **main, **about,
                   train_steps=main["stages"]["train"]["steps"], preprocess=scaling,
                   train_throughput=speed, second=extra, targets=targets)
