"""Datasets of any size (issue 15): memory, disk and speed of the streamed data path, on a
synthetic folder of N images. `dcgan bench data` prints one JSON record and appends it to
benchmarks/results.jsonl; all in a temporary directory, deleted afterwards (Ctrl-C too).

1. N JPEGs, SIZE wide, SIZE*78/64 tall (cropped, as CelebA's 178x218), colour fields
   tinted by class (learnable labels), in K class folders, drawn on every core.
2. A DVC repo: git and dvc init, the project's .dvc/config, stages/, src/dcgan, dvc.yaml,
   params.yaml on that folder (`fetch.dataset: folder`), one epoch, eval_every 1.
3. Peak RSS of each stage with its children (`bench_stages.peak_rss`): fetch, preprocess
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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from dcgan import manifest
from dcgan.config import paper_start_size
from dcgan.errors import UserError
from dcgan.imagefiles import Listing

# TensorFlow (bench, bench_stages, the model) is imported where needed: the processes that
# draw images or preprocess import this module and fork, which TF's threads forbid.

MB = 1e6  # decimal, as bench_stages
SUBSET, WARMUP = 50_000, 10  # images of the scaling runs; untimed train steps
LIMITS = {"stage_rss": 3000, "disk": 1.5, "preprocess_scaling": 1.8, "train_from_disk": 0.95}
TARGET = ("every stage <= 3000 MB peak RSS; data/, models/, .dvc/cache <= 1.5x the uint8 "
          "array; preprocess all cores >= 1.8x one; train from disk >= 0.95x in memory")
MODES = ("memory", "disk", "disk_cold")


def _say(message: str) -> None:
    print(f"[bench data {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


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
            "seconds": round(time.perf_counter() - start, 1)}


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
    n_train = n - round(n * params["preprocess"]["test_fraction"])
    for key, value in {"fetch.dataset": "folder", "fetch.folder": str(folder.resolve()),
                       "preprocess.image_size": size, "train.epochs": 1,
                       "classifier.epochs": 1, "train.eval_every": 1,
                       "train.batch_size": min(params["train"]["batch_size"], n_train)}.items():
        section, name = key.split(".")
        params[section][name] = value
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _stage_peaks(work: Path, steps: int, array_bytes: int) -> tuple[dict, dict]:
    """Steps 3 and 4: ({stage: {"peak_rss_mb", "seconds"}}, the disk figures)."""
    from dcgan.bench_stages import peak_rss, stage_commands

    commands = stage_commands(work / "dvc.yaml")
    train = commands["train"]
    paths = {k.replace("-", "_"): train[train.index(f"--{k}") + 1]
             for k in ("data", "classifier", "generator", "discriminator", "run-file")}
    entry = ("import json, sys; from dcgan.bench_data import train_steps; "
             "print(json.dumps(train_steps(**json.loads(sys.argv[1]))))")
    runs = {**{s: ["python", "-m", "dvc", "repro", "-s", s] for s in ("fetch", "preprocess")},
            "classifier": commands["classifier"],
            "train": ["python", "-c", entry, json.dumps({"steps": steps, **paths})],
            **{name: commands[name] for name in ("generate", "evaluate", "probe")}}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    stages, disk = {}, {}
    for name, cmd in runs.items():
        _say(f"stage {name}")
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
    from dcgan.bench import in_fresh_process

    _say(f"{n} images of {size} px: drawing the folder")
    folder = in_fresh_process("dcgan.bench_data", "make_folder", {
        "root": str(root / "images"), "n": n, "size": size, "classes": classes})
    _workspace(repo, root / "work", root / "images", n, size)
    stages, disk = _stage_peaks(root / "work", steps, n * size * size * 3)
    peak = max(s["peak_rss_mb"] for s in stages.values())
    return {"images": n, "folder": folder, "stages": stages, "peak_rss_mb": peak, "disk": disk}


def train_steps(steps: int, data: str, classifier: str, generator: str, discriminator: str,
                run_file: str) -> dict:
    """The train stage's data, model and quality monitor for `steps` steps; saves G and D
    and writes the MLflow run and run file, as train does. Run in the workspace."""
    from dcgan import batches, callbacks, config, imagestore, model, seeding, tracking
    from dcgan.classifier import feature_extractor
    from dcgan.data import file_md5

    params = config.load_params("params.yaml")
    cfg, dataset = params.train, imagestore.open_dataset(Path(data))
    seeding.seed_everything(cfg.seed, cfg.precision)
    seeded = batches.SeededBatches(dataset.train_x, cfg.batch_size, cfg.seed)
    gan = model.build_gan(cfg, dataset.image_shape)
    features = feature_extractor(model.load_model(Path(classifier), remedy="run classifier"))
    score = callbacks.FixedSampleFD(features, dataset.test_x, cfg.latent_dim, cfg.seed)
    gan.fit(seeded.dataset.repeat(), epochs=1, steps_per_epoch=steps, callbacks=[seeded],
            shuffle=False, verbose=2)
    fd = score(gan.generator)  # what the quality monitor scores at the epoch's end
    tags = {"dataset": "folder", "data_md5": imagestore.dataset_md5(Path(data)),
            "arch": cfg.arch}
    logged = config.flatten(params, ("fetch", "preprocess", "train"))
    with tracking.start_run(logged, tags, "bench-data") as run_id:
        model.save_model(gan.generator, Path(generator))
        model.save_model(gan.discriminator, Path(discriminator))
        tags["generator_md5"] = file_md5(Path(generator))
        tracking.log_generator(gan.generator, tags)
        tracking.write_run_file(Path(run_file), tags["generator_md5"])
    return {"run_id": run_id, "frechet_distance": fd}


def preprocess_rate(params: str, raw: str, out: str, size: int, cores: str) -> float:
    """Images/s of `preprocessing.preprocess` of `raw` into `out` at `size` px, on one core
    (pinned, one worker) or all. Pins this process: run it in a fresh one."""
    from dcgan.config import load_params
    from dcgan.preprocessing import preprocess

    if cores == "one":
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # the pool inherits it
    cfg = load_params(params).preprocess.model_copy(update={"image_size": size})
    start = time.perf_counter()
    stats = preprocess(cfg, Path(raw), Path(out) / "dataset", Path(out) / "stats.json",
                       workers=1 if cores == "one" else None)
    return sum(stats["counts"].values()) / (time.perf_counter() - start)


def train_rate(params: str, data: str, where: str, steps: int) -> float:
    """Images/s of `steps` train steps after WARMUP, batches from disk or memory, with the
    workspace's train params. Sets TF state: run it in a fresh process."""
    from dcgan import batches, config, imagestore, model, seeding
    from dcgan.bench import _Clock

    cfg, dataset = config.load_params(params).train, imagestore.open_dataset(Path(data))
    images = dataset.train_x
    if where == "memory":  # a block at a time: one pread stops at 2 GiB
        images = np.empty(dataset.train_x.shape, np.uint8)
        for start in range(0, len(images), 4096):
            images[start:start + 4096] = dataset.train_x.pixels(slice(start, start + 4096))
    seeding.seed_everything(cfg.seed, cfg.precision)
    seeded = batches.SeededBatches(images, cfg.batch_size, cfg.seed)
    gan, clock = model.build_gan(cfg, dataset.image_shape), _Clock(WARMUP)
    gan.fit(seeded.dataset.repeat(), epochs=1, steps_per_epoch=WARMUP + steps,
            callbacks=[seeded, clock], shuffle=False, verbose=0)
    return cfg.batch_size * steps / clock.seconds


def page_cache(files: list[Path], action: str) -> float | None:
    """Read `files` through ("warm") or drop their clean pages ("cold"; no root needed),
    then the share of their bytes in the page cache (util-linux fincore; None without)."""
    for path in files:
        if action == "warm":
            with open(path, "rb", buffering=0) as f:
                while f.read(1 << 24):
                    pass
        else:
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE",
                              *map(str, files)], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    cached, size = np.array([line.split() for line in out.stdout.splitlines()], int).sum(0)
    return round(min(1.0, cached / size), 3)  # RES counts whole pages


def _alternate(function: str, variants: dict[str, dict], repeats: int,
               before: Callable[[str], object] = lambda name: None) -> tuple[dict, dict]:
    """This module's `function(**variants[name])` in a fresh process per variant in turn,
    `repeats` rounds, `before(name)` first: ({name: [results]}, {name: [befores]})."""
    from dcgan.bench import in_fresh_process

    runs: dict[str, list] = {name: [] for name in variants}
    notes: dict[str, list] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, args in variants.items():
            notes[name].append(before(name))
            _say(f"{function} {name}: {args.get('data', args.get('raw'))}")
            runs[name].append(round(in_fresh_process("dcgan.bench_data", function, args), 1))
    return runs, notes


def _preprocess_scaling(work: Path, root: Path, size: int, repeats: int) -> dict:
    """Step 5, on the first SUBSET images of the workspace's manifest."""
    listing, md5 = manifest.read_manifest(work / "data/raw/manifest.json")
    count = min(len(listing.names), SUBSET)
    manifest.write_manifest(Listing(listing.source, listing.kind, listing.names[:count],
                                    listing.labels[:count], listing.classes),
                            md5, root / "raw/manifest.json")
    args = {"params": str(work / "params.yaml"), "raw": str(root / "raw"), "out": str(root),
            "size": size}
    runs, _ = _alternate("preprocess_rate", {c: {**args, "cores": c} for c in ("one", "all")},
                         repeats)
    one, every = (statistics.median(runs[c]) for c in ("one", "all"))
    return {"images": count, "cores": len(os.sched_getaffinity(0)),
            "one_core_images_per_sec": one, "all_cores_images_per_sec": every,
            "speedup": round(every / one, 3), "runs": runs}


def _throughput(work: Path, root: Path, px: int, steps: int, repeats: int) -> dict:
    """Step 6 at `px`: from memory, warm disk and cold disk, alternating; at another size
    than the workspace's, its folder is preprocessed again into `root`."""
    params = work / "params.yaml"
    data = work / "data/processed/dataset"
    if px != yaml.safe_load(params.read_text())["preprocess"]["image_size"]:
        from dcgan.bench import in_fresh_process

        _say(f"preprocess the folder again at {px} px")
        in_fresh_process("dcgan.bench_data", "preprocess_rate", {
            "params": str(params), "raw": str(work / "data/raw"), "out": str(root),
            "size": px, "cores": "all"})
        data = root / "dataset"
    files = sorted(data.glob("*_x.npy"))
    variants = {m: {"params": str(params), "data": str(data), "where": m.split("_")[0],
                    "steps": steps} for m in MODES}
    runs, cached = _alternate("train_rate", variants, repeats, lambda mode: None if mode ==
                              "memory" else page_cache(files, "cold" if "cold" in mode else "warm"))
    rate = {m: statistics.median(r) for m, r in runs.items()}
    return {"steps": steps, **{f"{m}_images_per_sec": v for m, v in rate.items()},
            "disk_over_memory": round(rate["disk"] / rate["memory"], 3),
            "cold_over_memory": round(rate["disk_cold"] / rate["memory"], 3),
            "cached_share_before": {m: cached[m] for m in MODES[1:]}, "runs": runs}


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
            scaling = _preprocess_scaling(work, Path(tmp) / "scaling", size, repeats)
            scaling["full_images_per_sec"] = round(images / main["stages"]["preprocess"]["seconds"])
            speed = {f"{px}px": _throughput(
                work, Path(tmp) / f"p{px}", px,
                max(train_steps, round(train_steps * (size / px) ** 2)), repeats)
                for px in sorted({28, size})}
            extra = _point(repo, Path(tmp) / "second", second, size, classes, train_steps) \
                if second else None
    finally:
        signal.signal(signal.SIGTERM, stop)
    from dcgan.seeding import resolve_precision  # TF, in this process only at the end

    precision = resolve_precision(yaml.safe_load((repo / "params.yaml").read_text())
                                  ["train"]["precision"])
    return _figures(main, extra, scaling, speed,
                    {"size": size, "classes": classes, "precision": precision})


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _figures(main: dict, extra: dict | None, scaling: dict, speed: dict, about: dict) -> dict:
    """The record: the figures, a boolean per target, `met` when all are."""
    from dcgan.bench_stages import _record

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
