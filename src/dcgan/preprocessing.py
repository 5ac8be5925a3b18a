"""Preprocess: decode, resize and split the raw dataset into uint8 arrays, streaming.

The `preprocess` stage script (run by `dvc repro`) calls `preprocess()`. It reads fetch's
output (data.py: an images.npz, or the manifest of a folder or archive) and writes the
processed dataset (imagestore.py: train_x.npy, test_x.npy uint8 in split order, and
their labels) a block of images at a time, so its memory does not grow with the number of
images. Folder and archive images are decoded by a pool of processes, one per core.
"""

from __future__ import annotations

import logging
import mmap
import multiprocessing
import multiprocessing.pool
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from dcgan import imagefiles, manifest
from dcgan.config import PreprocessConfig
from dcgan.data import MANIFEST, RAW_NPZ, read_npz
from dcgan.errors import UserError
from dcgan.imagestore import ImageArray, NpyWriter, scale
from dcgan.outputs import write_json

log = logging.getLogger(__name__)

# Images decoded per task of the process pool: enough to amortise the messages.
POOL_CHUNK = 32
# Images resized, checked and written at a time.
BLOCK = 1024
# Unreadable files named in the error line; the rest are counted.
NAMED_BAD_FILES = 5


def _fit(im: Image.Image, size: int) -> np.ndarray:
    """Center-crop to square and resize to size x size; returns (size, size) or (.., 3)."""
    if im.size != (size, size):
        im = ImageOps.fit(im, (size, size), method=Image.Resampling.LANCZOS)
    return np.asarray(im)


def _convert_channels(x: np.ndarray, channels: int | None) -> np.ndarray:
    if channels is None or x.shape[-1] == channels:
        return x
    if channels == 3:
        return np.repeat(x, 3, axis=-1)
    # ITU-R 601-2 luma, the weights Pillow's convert("L") uses.
    return np.rint(x @ np.array([0.299, 0.587, 0.114]))[..., None].astype(np.uint8)


class _ArraySource:
    """fetch's images.npz, resized a block at a time."""

    def __init__(self, raw_npz: Path, size: int):
        arrays = read_npz(raw_npz, ("x", "y"), what="raw dataset", remedy="rerun the fetch stage")
        self.x, self.y, self.size = arrays["x"], arrays["y"].astype(np.int64), size
        self.where = str(raw_npz)

    def blocks(self, order: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
        """(uint8 (k, S, S, C) images, their labels, unreadable names) in `order`."""
        for start in range(0, len(order), BLOCK):
            rows = order[start:start + BLOCK]
            x = self.x[rows]
            if x.shape[1:3] != (self.size, self.size):
                x = np.stack([_fit(Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1
                                                   else img), self.size)
                              for img in x]).reshape(len(x), self.size, self.size, -1)
            yield x, self.y[rows], []


_READER: imagefiles.ImageReader | None = None  # one per pool process
_SLOTS: np.ndarray | None = None  # (2, BLOCK, S, S, 3) uint8, shared with the parent


def _set_reader(reader: imagefiles.ImageReader, slots: np.ndarray) -> None:
    global _READER, _SLOTS
    _READER, _SLOTS = reader, slots


def _decode(task: tuple[int, int, str, int]) -> str | None:
    """A pool task: decode one image into its place in the shared slots; None, or the
    reason it cannot be read."""
    slot, place, name, size = task
    try:
        _SLOTS[slot, place] = _READER.square_rgb(name, size)
    except imagefiles.BadImage as err:
        return str(err)
    return None


class _FolderSource:
    """The folder or archive a manifest lists, decoded in parallel by a process pool.

    The workers write pixels straight into two block-sized slots of memory shared with
    the parent (an anonymous shared mapping, inherited by fork) and send back only None or
    an error: piping every 64 px image (12 KB) back to the parent cost more than decoding
    it. Block k+1 is decoding into one slot while the parent writes block k from the
    other; block k+2 is queued only once block k is written."""

    def __init__(self, path: Path, size: int, workers: int | None):
        listing, _ = manifest.read_manifest(path)
        self.names, self.size, self.where = listing.names, size, listing.source
        self.y = np.asarray(listing.labels, np.int64)
        self.reader = imagefiles.ImageReader(listing.kind, listing.source)
        self.workers = workers or len(os.sched_getaffinity(0))

    def blocks(self, order: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
        shape = (2, BLOCK, self.size, self.size, 3)
        slots = np.frombuffer(mmap.mmap(-1, int(np.prod(shape))), np.uint8).reshape(shape)
        starts = range(0, len(order), BLOCK)
        # fork: the parent holds no threads or TF, and workers start in milliseconds.
        with multiprocessing.get_context("fork").Pool(
                self.workers, initializer=_set_reader, initargs=(self.reader, slots)) as pool:

            def submit(k: int) -> tuple[np.ndarray, multiprocessing.pool.AsyncResult]:
                rows = order[starts[k]:starts[k] + BLOCK]
                tasks = [(k % 2, place, self.names[row], self.size)
                         for place, row in enumerate(rows)]
                return rows, pool.map_async(_decode, tasks, chunksize=POOL_CHUNK)

            pending = submit(0) if starts else None
            for k in range(len(starts)):
                rows, job = pending
                pending = submit(k + 1) if k + 1 < len(starts) else None
                got = job.get()
                ok = [i for i, err in enumerate(got) if err is None]
                yield slots[k % 2, ok], self.y[rows[ok]], [err for err in got if err]


def _open_raw(raw_dir: Path, size: int, workers: int | None) -> _ArraySource | _FolderSource:
    if (raw_dir / MANIFEST).is_file():
        return _FolderSource(raw_dir / MANIFEST, size, workers)
    if (raw_dir / RAW_NPZ).is_file():
        return _ArraySource(raw_dir / RAW_NPZ, size)
    raise UserError(f"{raw_dir}: holds neither {RAW_NPZ} nor {MANIFEST}; run the fetch stage")


class _Stats:
    """Running per-channel min, max and (exact, integer) sum of the pixels, and whether any
    pixel is coloured. The pool's parent process runs it on every block, so it works on
    contiguous channel planes: numpy reduces an (pixels, 3) array along its long axis about
    15x slower (425 ms a 1024-image 64 px block, about half the time two workers take to
    decode it, against 23 ms)."""

    def __init__(self) -> None:
        self.count, self.low, self.high, self.total = 0, None, None, None
        # The largest |channel - channel 0| of any pixel (0 for grey), tracked only up to
        # the 2 levels of JPEG slack: one coloured pixel settles it.
        self.spread = 0

    def add(self, x: np.ndarray) -> None:
        if not len(x):
            return
        planes = np.ascontiguousarray(x.reshape(-1, x.shape[-1]).T)  # (C, pixels)
        low, high = planes.min(axis=1), planes.max(axis=1)
        total = planes.sum(axis=1, dtype=np.uint64)
        if self.spread <= 2:
            self.spread = max([self.spread, *(int((np.maximum(p, planes[0])
                                                    - np.minimum(p, planes[0])).max())
                                              for p in planes[1:])])
        if self.total is None:
            self.low, self.high, self.total = low, high, total
        else:
            self.low, self.high = np.minimum(self.low, low), np.maximum(self.high, high)
            self.total = self.total + total
        self.count += planes.shape[1]

    def summary(self, channels: int) -> dict:
        """min, max and per-channel mean of the first `channels` channels, in [-1, 1]."""
        low, high = scale(self.low[:channels]), scale(self.high[:channels])
        means = self.total[:channels].astype(np.float64) / self.count / 127.5 - 1.0
        return {"min": float(low.min()), "max": float(high.max()),
                "mean": [round(float(m), 6) for m in means]}


def _bad_files(bad: list[str], total: int, where: str) -> str:
    named = "; ".join(bad[:NAMED_BAD_FILES])
    more = f" and {len(bad) - NAMED_BAD_FILES} more" if len(bad) > NAMED_BAD_FILES else ""
    return f"{len(bad)} of {total} images in {where} cannot be read: {named}{more}"


def _split(n: int, cfg: PreprocessConfig) -> dict[str, np.ndarray]:
    """Positions of the test and train images, a seeded permutation of range(n)."""
    n_test = round(n * cfg.test_fraction)
    if not 1 <= n_test <= n - 1:
        raise UserError(f"preprocess.test_fraction = {cfg.test_fraction} splits {n} images "
                        f"into {n - n_test} train / {n_test} test; each side needs at least 1 "
                        "image, so change test_fraction or add images")
    order = np.random.default_rng(cfg.seed).permutation(n)
    return {"train": order[n_test:], "test": order[:n_test]}


def _write_split(source: _ArraySource | _FolderSource, order: np.ndarray, tmp: Path,
                 split: str, cfg: PreprocessConfig, stats: _Stats, bad: list[str]) -> int:
    """Decode the images at `order` into tmp/<split>_x.npy and their labels into
    <split>_y.npy; returns how many were written."""
    size, writer, labels = cfg.image_size, None, []
    for x, y, unreadable in source.blocks(order):
        bad.extend(unreadable)
        x = _convert_channels(x, cfg.channels)
        if writer is None:
            writer = NpyWriter(tmp / f"{split}_x.npy", (size, size, x.shape[-1]))
        writer.append(x)
        stats.add(x)
        labels.append(y)
    np.save(tmp / f"{split}_y.npy", np.concatenate(labels))
    return writer.close()


def _keep_first_channel(tmp: Path) -> None:
    """Rewrite each RGB image file as its first channel (a folder of grey images)."""
    for split in ("train", "test"):
        path = tmp / f"{split}_x.npy"
        rgb = ImageArray(path)
        writer = NpyWriter(tmp / f"{split}_x.grey", (*rgb.image_shape[:2], 1))
        for start in range(0, len(rgb), BLOCK):
            writer.append(rgb.pixels(slice(start, start + BLOCK))[..., :1])
        writer.close()
        rgb.close()
        os.replace(tmp / f"{split}_x.grey", path)


def preprocess(cfg: PreprocessConfig, raw_dir: Path, out_dir: Path, stats_file: Path,
               workers: int | None = None) -> dict:
    """Decode, resize and split the raw data into uint8 arrays (layout in imagestore.py).

    Images stream through: memory depends on a block of images, not on their number.
    Folder images are center-cropped to square, decoded by a pool of `workers` processes.
    Without `cfg.channels` a folder becomes RGB if any image has a coloured pixel (2 levels
    of slack absorb JPEG round-off), else grey; arrays keep theirs. Stats (min, max,
    per-channel mean, in [-1, 1]) cover train and test together.

    Args:
        cfg: the `preprocess` params: image_size, channels, test_fraction, seed,
            skip_unreadable.
        raw_dir: fetch's out_dir.
        out_dir: the processed dataset directory; replaced whole, only on success.
        stats_file: JSON with counts, shape, min, max, mean, labelled, num_classes, skipped.
        workers: decoding processes for a folder; None = every core this process may use.

    Returns:
        The stats written to stats_file.

    Raises:
        UserError: raw data missing or unreadable; unreadable images (all named in one
            line, unless cfg.skip_unreadable); or a split with an empty side.
    """
    source = _open_raw(Path(raw_dir), cfg.image_size, workers)
    n = len(source.y)
    splits = _split(n, cfg)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".tmp-{os.getpid()}-{out_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        stats, bad = _Stats(), []
        counts = {split: _write_split(source, order, tmp, split, cfg, stats, bad)
                  for split, order in splits.items()}
        if bad and not cfg.skip_unreadable:
            raise UserError(f"preprocess: {_bad_files(bad, n, source.where)}; fix or delete "
                            "them, or set preprocess.skip_unreadable: true to leave them out")
        if bad:
            log.warning("preprocess: skipped %s", _bad_files(bad, n, source.where))
        if 0 in counts.values():
            empty = min(counts, key=counts.get)
            raise UserError(f"preprocess: no readable image left in the {empty} split; fix the "
                            "images or add more")
        channels = cfg.channels or 3
        if isinstance(source, _FolderSource) and cfg.channels is None:
            # Colour is judged on the pixels, not the file mode, so a grey photo saved as
            # RGB stays grey; 2 levels of slack absorb JPEG round-off.
            channels = 1 if stats.spread <= 2 else 3
            if channels == 1:
                _keep_first_channel(tmp)
        if isinstance(source, _ArraySource) and cfg.channels is None:
            channels = source.x.shape[-1]
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    labelled = bool((source.y >= 0).any())
    result = {
        "counts": counts,
        "shape": [cfg.image_size, cfg.image_size, channels],
        **stats.summary(channels),
        "labelled": labelled,
        "num_classes": int(source.y.max()) + 1 if labelled else 0,  # labels 0..num_classes-1
        **({"skipped": len(bad)} if bad else {}),
    }
    write_json(result, Path(stats_file))
    return result


