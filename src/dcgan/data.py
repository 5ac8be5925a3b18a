"""Data: fetch a dataset into data/raw, then scale and split it into one npz.

The `fetch` and `preprocess` stage scripts (run by `dvc repro`) call `fetch()`
and `preprocess()`; training, sampling and evaluation read the result with
`load_processed()`.

Raw layout (fetch's out_dir):
    images.npz   x uint8 (N, H, W, C), y int64 (N,)   array datasets
    images/      the folder's PNG/JPEG files, sorted   dataset: folder (sizes may differ)
Processed layout (preprocess's out_file, plain np.savez):
    train_x, test_x   float32 (N, S, S, C) in [-1, 1]
    train_y, test_y   int64, -1 when the dataset has no labels
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from dcgan.config import FetchConfig, PreprocessConfig
from dcgan.errors import UserError
from dcgan.outputs import atomic_path, write_json
from dcgan.sources import Arrays, load_array_dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PROCESSED_KEYS = ("train_x", "train_y", "test_x", "test_y")


def fetch(cfg: FetchConfig, out_dir: Path, cache_dir: Path) -> dict:
    """Write the raw dataset to out_dir (layout in the module docstring).

    Args:
        cfg: the `fetch` params: dataset, folder, mirror.
        out_dir: the raw data directory, e.g. data/raw; created if missing.
        cache_dir: where downloads are kept between runs, e.g. data/cache.

    Returns:
        Summary: dataset, count, labelled, num_classes, shape ([H, W, C]; None for a folder).

    Raises:
        UserError: bad folder or unreadable image, failed download, or checksum mismatch.
    """
    out_dir = Path(out_dir)
    if cfg.dataset == "folder":
        files = _list_images(Path(cfg.folder))  # checks every file before writing anything
        _copy_images(files, out_dir)
        return {"dataset": "folder", "count": len(files), "labelled": False,
                "num_classes": 0, "shape": None}
    x, y = load_array_dataset(cfg, cache_dir)
    y = y.astype(np.int64)
    _write_npz(out_dir / "images.npz", x=x, y=y)
    shutil.rmtree(out_dir / "images", ignore_errors=True)
    return {"dataset": cfg.dataset, "count": len(x), "labelled": True,
            "num_classes": int(y.max()) + 1, "shape": list(x.shape[1:])}


def _copy_images(files: list[Path], out_dir: Path) -> None:
    """Copy into out_dir/images via a staging dir, so a failed copy leaves no partial set."""
    # Not mkdtemp: its mode 0700 would stick to images/ after the rename.
    staging = out_dir / f".images-{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed run
    staging.mkdir(parents=True)
    try:
        for path in files:
            shutil.copy2(path, staging / path.name)
    except BaseException:
        shutil.rmtree(staging)
        raise
    shutil.rmtree(out_dir / "images", ignore_errors=True)
    os.replace(staging, out_dir / "images")
    (out_dir / "images.npz").unlink(missing_ok=True)  # one layout at a time


def _list_images(folder: Path) -> list[Path]:
    """The folder's own image files (no symlinks, no subfolders), sorted, after checking
    that each one decodes."""
    hint = f"set fetch.folder to a directory of {'/'.join(IMAGE_SUFFIXES)} images"
    if not folder.exists():
        raise UserError(f"fetch.folder: {folder} does not exist; {hint}")
    if not folder.is_dir():
        raise UserError(f"fetch.folder: {folder} is not a directory; {hint}")
    with os.scandir(folder) as entries:
        # Regular files only, links not followed: a symlink could pull in a file from
        # outside the folder (another dataset's images, or /etc/passwd named x.png).
        files = sorted(Path(e.path) for e in entries if e.is_file(follow_symlinks=False)
                       and Path(e.name).suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"fetch.folder: {folder} holds no image files (subfolders and "
                        f"symlinks are not read); {hint}")
    for path in files:
        _open_image(path).close()
    return files


def _open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()  # decodes the whole file: a truncated image fails here, not later
            return ImageOps.exif_transpose(im)  # photos: apply the camera's rotation
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"{path}: not a readable image ({err}); fix or delete the file") from None


def _rgb(path: Path) -> Image.Image:
    im = _open_image(path)
    if im.mode.startswith("I;16"):  # 16-bit grey PNG: convert() would clip at 255, not rescale
        im = Image.fromarray((np.asarray(im) >> 8).astype(np.uint8))
    return im.convert("RGB")


def _fit(im: Image.Image, size: int) -> np.ndarray:
    """Center-crop to square and resize to size x size; returns (size, size) or (.., 3)."""
    if im.size != (size, size):
        im = ImageOps.fit(im, (size, size), method=Image.Resampling.LANCZOS)
    return np.asarray(im)


def _load_folder(images_dir: Path, size: int) -> np.ndarray:
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    x = np.stack([_fit(_rgb(p), size) for p in files])  # (N, S, S, 3)
    # Colour is judged on the pixels, not the file mode, so a grey photo saved as RGB stays
    # grey; 2 levels of slack absorb JPEG round-off.
    spread = np.abs(x.astype(np.int16) - x[..., :1]).max()
    return x[..., :1] if spread <= 2 else x


def _load_arrays(raw_npz: Path, size: int) -> Arrays:
    arrays = _read_npz(raw_npz, ("x", "y"), what="raw dataset", remedy="rerun the fetch stage")
    x, y = arrays["x"], arrays["y"]
    if x.shape[1:3] != (size, size):
        x = np.stack([_fit(Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img), size)
                      for img in x]).reshape(len(x), size, size, -1)
    return x, y


def _load_raw(raw_dir: Path, size: int) -> Arrays:
    """fetch's output at size x size: uint8 (N, S, S, C) and int64 labels (-1 for a folder)."""
    if (raw_dir / "images").is_dir():
        x = _load_folder(raw_dir / "images", size)
        return x, np.full(len(x), -1, np.int64)
    if (raw_dir / "images.npz").is_file():
        return _load_arrays(raw_dir / "images.npz", size)
    raise UserError(f"{raw_dir}: holds neither images.npz nor images/; run the fetch stage")


def _convert_channels(x: np.ndarray, channels: int | None) -> np.ndarray:
    if channels is None or x.shape[-1] == channels:
        return x
    if channels == 3:
        return np.repeat(x, 3, axis=-1)
    # ITU-R 601-2 luma, the weights Pillow's convert("L") uses.
    return np.rint(x @ np.array([0.299, 0.587, 0.114]))[..., None].astype(np.uint8)


def preprocess(cfg: PreprocessConfig, raw_dir: Path, out_file: Path, stats_file: Path) -> dict:
    """Resize, scale to [-1, 1] float32 NHWC and split train/test by seed.

    Folder images are center-cropped to square. Without `cfg.channels`, a folder
    becomes RGB if any image has a coloured pixel, else grey; arrays keep theirs.
    Stats (min, max, per-channel mean) cover train and test together.

    Args:
        cfg: the `preprocess` params: image_size, channels, test_fraction, seed.
        raw_dir: fetch's out_dir.
        out_file: the processed npz (layout in the module docstring).
        stats_file: JSON with counts, shape, min, max, per-channel mean, labelled, num_classes.

    Returns:
        The stats written to stats_file.

    Raises:
        UserError: raw data missing or unreadable, or a split with an empty side.
    """
    x, y = _load_raw(Path(raw_dir), cfg.image_size)
    x = _convert_channels(x, cfg.channels).astype(np.float32)  # (N, S, S, C)
    x /= 127.5  # in place: a 64x64 RGB dataset is gigabytes as float32
    x -= 1.0
    n = len(x)
    n_test = round(n * cfg.test_fraction)
    if not 1 <= n_test <= n - 1:
        raise UserError(f"preprocess.test_fraction = {cfg.test_fraction} splits {n} images "
                        f"into {n - n_test} train / {n_test} test; each side needs at least 1 "
                        "image, so change test_fraction or add images")
    order = np.random.default_rng(cfg.seed).permutation(n)
    test, train = order[:n_test], order[n_test:]
    _write_npz(Path(out_file), train_x=x[train], train_y=y[train],
                  test_x=x[test], test_y=y[test])
    labelled = bool((y >= 0).any())
    stats = {
        "counts": {"train": len(train), "test": len(test)},
        "shape": list(x.shape[1:]),
        "min": float(x.min()),
        "max": float(x.max()),
        "mean": [round(float(m), 6) for m in x.mean(axis=(0, 1, 2), dtype=np.float64)],
        "labelled": labelled,
        "num_classes": int(y.max()) + 1 if labelled else 0,  # labels are 0..num_classes-1
    }
    write_json(stats, Path(stats_file))
    return stats


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write arrays as an npz, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)  # to a file object: no ".npz" appended to the name


@dataclass(frozen=True)
class Dataset:
    """The processed split: images float32 (N, H, W, C) in [-1, 1], labels int64 (-1: none)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    @property
    def labelled(self) -> bool:
        """False when every label is -1 (a folder of images)."""
        return bool((self.train_y >= 0).any() or (self.test_y >= 0).any())

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(int(d) for d in self.train_x.shape[1:])


def load_processed(path: Path) -> Dataset:
    """Read preprocess's npz.

    Raises:
        UserError: the file is missing or is not a processed dataset.
    """
    if not Path(path).exists():
        raise UserError(f"{path}: not found; run the preprocess stage first")
    return Dataset(**_read_npz(path, PROCESSED_KEYS, what="processed dataset",
                               remedy="rerun preprocess"))


def _read_npz(path: Path, keys: tuple[str, ...], what: str, remedy: str) -> dict[str, np.ndarray]:
    """The arrays `keys` of an npz file, read without pickle: an object array can run code.

    Raises:
        UserError: one line naming the file, when it cannot be read, is not an npz
            (truncated, corrupt), lacks a key or holds pickled (object) arrays.
    """
    try:
        # Our own handle: numpy leaks the one it opens when a zip turns out truncated.
        with open(path, "rb") as f:
            loaded = np.load(f, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):  # a .npy: one bare array
                raise ValueError("one bare .npy array, not an .npz archive")
            with loaded:
                return {key: loaded[key] for key in keys}
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"{path}: not a {what} ({_npz_problem(err)}); {remedy}") from None


def _npz_problem(err: Exception) -> str:
    """What is wrong with an npz, in words; numpy's own advice for pickles is to allow them."""
    if isinstance(err, zipfile.BadZipFile | EOFError):
        return f"truncated or corrupt: {err}"
    if "Object arrays cannot be loaded" in str(err):
        return "it holds pickled (object) arrays, which are never loaded"
    if "contains pickled" in str(err):  # numpy reads anything else as a pickle
        return "not an .npz archive"
    return str(err)


def file_md5(path: Path) -> str:
    """The md5 hex digest of a file's bytes: what DVC 3 records in dvc.lock for a file out."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()
