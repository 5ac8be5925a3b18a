"""Fetch's output as a stream of decoded images of one size: the sources of preprocess.

`open_raw` gives an `ArraySource` (a dataset fetched as arrays, images.npz) or a
`FolderSource` (the manifest of a folder or archive of image files, decoded by a pool of
processes, one per core), each read a block of images at a time.
"""

from __future__ import annotations

import mmap
import multiprocessing
import multiprocessing.pool
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from dcgan.core.errors import UserError
from dcgan.ingest import imagefiles, manifest
from dcgan.ingest.fetch import MANIFEST, RAW_NPZ, read_npz

# Images decoded per task of the process pool: enough to amortise the messages.
POOL_CHUNK = 32
# Images resized, checked and written at a time.
BLOCK = 1024


def _fit(im: Image.Image, size: int) -> np.ndarray:
    """Center-crop to square and resize to size x size; returns (size, size) or (.., 3)."""
    if im.size != (size, size):
        im = ImageOps.fit(im, (size, size), method=Image.Resampling.LANCZOS)
    return np.asarray(im)


def convert_channels(x: np.ndarray, channels: int | None) -> np.ndarray:
    if channels is None or x.shape[-1] == channels:
        return x
    if channels == 3:
        return np.repeat(x, 3, axis=-1)
    # ITU-R 601-2 luma, the weights Pillow's convert("L") uses.
    return np.rint(x @ np.array([0.299, 0.587, 0.114]))[..., None].astype(np.uint8)


class ArraySource:
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


class FolderSource:
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


def open_raw(raw_dir: Path, size: int, workers: int | None) -> ArraySource | FolderSource:
    if (raw_dir / MANIFEST).is_file():
        return FolderSource(raw_dir / MANIFEST, size, workers)
    if (raw_dir / RAW_NPZ).is_file():
        return ArraySource(raw_dir / RAW_NPZ, size)
    raise UserError(f"{raw_dir}: holds neither {RAW_NPZ} nor {MANIFEST}; run the fetch stage")
