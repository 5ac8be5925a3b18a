"""Preprocess: decode, resize and split the raw dataset into uint8 arrays, streaming.

The `preprocess` stage script (run by `dvc repro`) calls `preprocess()`. It reads fetch's
output (ingest.fetch: an images.npz, or the manifest of a folder or archive, decoded by
ingest.decoding) and writes the
processed dataset (processed.imagestore: train_x.npy, val_x.npy, test_x.npy uint8 in split
order, and their labels) a block of images at a time, so its memory does not grow with the number of
images. Folder and archive images are decoded by a pool of processes, one per core.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np

from dcgan.core.config import PreprocessConfig
from dcgan.core.errors import UserError
from dcgan.core.outputs import write_json
from dcgan.ingest.decoding import BLOCK, ArraySource, FolderSource, convert_channels, open_raw
from dcgan.processed.imagestore import SPLITS, ImageArray, NpyWriter, scale
from dcgan.runtime.progress import ProgressBar

log = logging.getLogger(__name__)

# Unreadable files named in the error line; the rest are counted.
NAMED_BAD_FILES = 5


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
    """Positions of the train, validation and test images in a seeded permutation of
    range(n): its first images are the test split, the next `val_size` the validation one."""
    n_test = round(n * cfg.test_fraction)
    if not 1 <= n_test <= n - 1:
        raise UserError(f"preprocess.test_fraction = {cfg.test_fraction} splits {n} images "
                        f"into {n - n_test} train / {n_test} test; each side needs at least 1 "
                        "image, so change test_fraction or add images")
    if n - n_test - cfg.val_size < 1:
        raise UserError(f"preprocess.val_size = {cfg.val_size} leaves no training image of the "
                        f"{n - n_test} that the test split leaves; lower preprocess.val_size "
                        "or add images")
    order = np.random.default_rng(cfg.seed).permutation(n)
    end = n_test + cfg.val_size
    return {"train": order[end:], "val": order[n_test:end], "test": order[:n_test]}


def _write_split(source: ArraySource | FolderSource, order: np.ndarray, tmp: Path,
                 split: str, cfg: PreprocessConfig, stats: _Stats, bad: list[str],
                 bar: ProgressBar) -> int:
    """Decode the images at `order` into tmp/<split>_x.npy and their labels into
    <split>_y.npy, counting them on `bar`; returns how many were written."""
    size, writer, labels = cfg.image_size, None, []
    blocks = bar.over(source.blocks(order), size=lambda block: len(block[0]) + len(block[2]))
    for x, y, unreadable in blocks:
        bad.extend(unreadable)
        x = convert_channels(x, cfg.channels)
        if writer is None:
            writer = NpyWriter(tmp / f"{split}_x.npy", (size, size, x.shape[-1]))
        writer.append(x)
        stats.add(x)
        labels.append(y)
    np.save(tmp / f"{split}_y.npy", np.concatenate(labels))
    return writer.close()


def _write_splits(source: ArraySource | FolderSource, splits: dict[str, np.ndarray], tmp: Path,
                  cfg: PreprocessConfig, stats: _Stats, bad: list[str]) -> dict[str, int]:
    """Decode and write every split (`_write_split`) with one progress bar, check what was
    unreadable, and write an empty validation split for `val_size` 0; returns the counts."""
    # The long loop: decoding (a pool of processes for a folder) and writing, in blocks.
    with ProgressBar("preprocess: decoding", total=len(source.y)) as bar:
        counts = {split: _write_split(source, order, tmp, split, cfg, stats, bad, bar)
                  for split, order in splits.items() if len(order)}
        _check_readable(bad, counts, len(source.y), source.where, cfg.skip_unreadable)
    shape = ImageArray(tmp / "train_x.npy").image_shape
    return {split: counts[split] if split in counts else _write_empty(tmp, split, shape)
            for split in splits}


def _write_empty(tmp: Path, split: str, image_shape: tuple[int, int, int]) -> int:
    """A split of no images: a (0, S, S, C) image file and an empty label file."""
    np.save(tmp / f"{split}_y.npy", np.empty(0, np.int64))
    return NpyWriter(tmp / f"{split}_x.npy", image_shape).close()


def _keep_first_channel(tmp: Path) -> None:
    """Rewrite each RGB image file as its first channel (a folder of grey images)."""
    for split in SPLITS:
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
    """Decode, resize and split the raw data into uint8 arrays (processed.imagestore's):
    `cfg.test_fraction` of the images for the evaluate stage, `cfg.val_size` for train's
    in-training scores, and the rest to train on.

    Images stream through: memory depends on a block of images, not on their number.
    Their progress goes to stderr (dcgan.runtime.progress).
    Folder images are center-cropped to square, decoded by a pool of `workers` processes.
    Without `cfg.channels` a folder becomes RGB if any image has a coloured pixel, else
    grey (`_channels`). Stats (min, max, per-channel mean, in [-1, 1]) cover every split.

    Args:
        cfg, raw_dir: the `preprocess` params, and fetch's out_dir.
        out_dir: the processed dataset directory; replaced whole, only on success.
        stats_file: JSON with counts, shape, min, max, mean, labelled, num_classes, skipped.
        workers: decoding processes for a folder; None = every core this process may use.

    Returns:
        The stats written to stats_file.

    Raises:
        UserError: raw data missing or unreadable; unreadable images (all named in one
            line, unless cfg.skip_unreadable); or a split with an empty side, or no
            training image left beside the validation ones.
    """
    source = open_raw(Path(raw_dir), cfg.image_size, workers)
    n = len(source.y)
    splits = _split(n, cfg)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".tmp-{os.getpid()}-{out_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        stats, bad = _Stats(), []
        counts = _write_splits(source, splits, tmp, cfg, stats, bad)
        channels = _channels(source, cfg, stats, tmp)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = _summary(source.y, counts, [cfg.image_size, cfg.image_size, channels],
                      stats.summary(channels), skipped=len(bad))
    write_json(result, Path(stats_file))
    return result


def _summary(y: np.ndarray, counts: dict[str, int], shape: list[int], pixels: dict,
             skipped: int) -> dict:
    """The stats file's contents: counts, shape, pixel stats, labels, skipped images."""
    labelled = bool((y >= 0).any())
    return {
        "counts": counts, "shape": shape, **pixels, "labelled": labelled,
        "num_classes": int(y.max()) + 1 if labelled else 0,  # labels 0..num_classes-1
        **({"skipped": skipped} if skipped else {}),
    }


def _check_readable(bad: list, counts: dict[str, int], n: int, where: str,
                    skip_unreadable: bool) -> None:
    """Raise a UserError naming the unreadable images (or warn, with `skip_unreadable`),
    or when a split has no image left."""
    if bad and not skip_unreadable:
        raise UserError(f"preprocess: {_bad_files(bad, n, where)}; fix or delete "
                        "them, or set preprocess.skip_unreadable: true to leave them out")
    if bad:
        log.warning("preprocess: skipped %s", _bad_files(bad, n, where))
    if 0 in counts.values():
        empty = min(counts, key=counts.get)
        raise UserError(f"preprocess: no readable image left in the {empty} split; fix the "
                        "images or add more")


def _channels(source: FolderSource | ArraySource, cfg: PreprocessConfig, stats: _Stats,
              tmp: Path) -> int:
    """The channels the dataset keeps: `cfg.channels`, else an array's own, else 1 for a
    folder whose pixels are all grey (the written arrays then keep their first channel)."""
    if isinstance(source, ArraySource) and cfg.channels is None:
        return source.x.shape[-1]
    if isinstance(source, FolderSource) and cfg.channels is None:
        # Colour is judged on the pixels, not the file mode, so a grey photo saved as
        # RGB stays grey; 2 levels of slack absorb JPEG round-off.
        channels = 1 if stats.spread <= 2 else 3
        if channels == 1:
            _keep_first_channel(tmp)
        return channels
    return cfg.channels or 3


