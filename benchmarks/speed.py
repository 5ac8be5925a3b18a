"""The speed half of `python -m benchmarks data` (benchmarks.data): preprocess on one core and on
all, and train throughput with batches from memory, from disk and from a cold disk, each
in fresh processes, alternating (steps 5 and 6 of benchmarks.data's list).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from dcgan.ingest import manifest
from dcgan.ingest.imagefiles import Listing

SUBSET, WARMUP = 50_000, 10  # images of the scaling runs; untimed train steps
MODES = ("memory", "disk", "disk_cold")


def say(message: str) -> None:
    print(f"[bench data {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def preprocess_rate(params: str, raw: str, out: str, size: int, cores: str) -> float:
    """Images/s of `preprocessing.preprocess` of `raw` into `out` at `size` px, on one core
    (pinned, one worker) or all. Pins this process: run it in a fresh one."""
    from dcgan.core.config import load_params
    from dcgan.ingest.preprocessing import preprocess

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
    from benchmarks.step import _Clock
    from dcgan.core import config, seeding
    from dcgan.nets import model
    from dcgan.processed import batches, imagestore

    cfg, dataset = config.load_params(params).train, imagestore.open_dataset(Path(data))
    images = dataset.train_x
    if where == "memory":  # a block at a time: one pread stops at 2 GiB
        images = np.empty(dataset.train_x.shape, np.uint8)
        for start in range(0, len(images), 4096):
            images[start:start + 4096] = dataset.train_x.pixels(slice(start, start + 4096))
    seeding.seed_everything(cfg.seed)
    seeding.set_precision(cfg.precision)
    seeded = batches.SeededBatches(images, cfg.batch_size, cfg.seed)
    gan, clock = model.build_gan(cfg, dataset.image_shape), _Clock(WARMUP)
    gan.fit(seeded.dataset, epochs=1, steps_per_epoch=WARMUP + steps,
            callbacks=[seeded, clock], shuffle=False, verbose=0)
    return cfg.batch_size * steps / clock.seconds


def page_cache(files: list[Path], action: str) -> float | None:
    """Read `files` through ("warm") or drop their clean pages ("cold"; no root needed),
    then the share of their bytes in the page cache (util-linux fincore; None without).
    Under memory pressure other processes can evict a page between the read and the count:
    "warm" then reads the files again, up to twice."""
    for _ in range(3 if action == "warm" else 1):
        for path in files:
            if action == "warm":
                _read(path)
            else:
                fd = os.open(path, os.O_RDONLY)
                os.fsync(fd)  # dirty pages cannot be dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
        share = _cached_share(files)
        if share is None or share == 1.0 or action != "warm":
            break
    return share


def _cached_share(files: list[Path]) -> float | None:
    """The share of `files`' bytes in the page cache (fincore), or None without fincore."""
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE",
                              *map(str, files)], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    cached, size = np.array([line.split() for line in out.stdout.splitlines()], int).sum(0)
    return round(min(1.0, cached / size), 3)  # RES counts whole pages


def _read(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 24):
            pass


def _alternate(function: str, variants: dict[str, dict], repeats: int,
               before: Callable[[str], object] = lambda name: None) -> tuple[dict, dict]:
    """This module's `function(**variants[name])` in a fresh process per variant in turn,
    `repeats` rounds, `before(name)` first: ({name: [results]}, {name: [befores]})."""
    from benchmarks.records import in_fresh_process

    runs: dict[str, list] = {name: [] for name in variants}
    notes: dict[str, list] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, args in variants.items():
            notes[name].append(before(name))
            say(f"{function} {name}: {args.get('data', args.get('raw'))}")
            runs[name].append(round(in_fresh_process("benchmarks.speed", function, args), 1))
    return runs, notes


def preprocess_scaling(work: Path, root: Path, size: int, repeats: int) -> dict:
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


def throughput(work: Path, root: Path, px: int, steps: int, repeats: int) -> dict:
    """Step 6 at `px`: from memory, warm disk and cold disk, alternating; at another size
    than the workspace's, its folder is preprocessed again into `root`."""
    params = work / "params.yaml"
    data = work / "data/processed/dataset"
    if px != yaml.safe_load(params.read_text())["preprocess"]["image_size"]:
        from benchmarks.records import in_fresh_process

        say(f"preprocess the folder again at {px} px")
        in_fresh_process("benchmarks.speed", "preprocess_rate", {
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
