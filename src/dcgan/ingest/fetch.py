"""Data: fetch a dataset into data/raw, and the raw npz format both data stages read.

The `fetch` stage script (run by `dvc repro`) calls `fetch()`; `preprocessing.preprocess()`
turns its output into the processed dataset that every later stage opens with
`imagestore.open_dataset()`.

Raw layout (fetch's out_dir), one of:
    images.npz      x uint8 (N, H, W, C), y int64 (N,)        array datasets (mnist, cifar10...)
    manifest.json   the folder's or archive's image names,    dataset: folder
                    labels and content md5 (imagefiles.py)
A folder is never copied: the manifest's md5 changes when any image does, so DVC reruns
preprocess exactly then (DVC hashes the folder, `fetch.folder`, as a dependency of fetch).
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np

from dcgan.core.config import FetchConfig
from dcgan.core.errors import UserError
from dcgan.core.outputs import atomic_path
from dcgan.ingest import imagefiles, manifest
from dcgan.ingest.sources import load_array_dataset

MANIFEST = "manifest.json"
RAW_NPZ = "images.npz"


def fetch(cfg: FetchConfig, out_dir: Path, cache_dir: Path) -> dict:
    """Write the raw dataset to out_dir (layout in the module docstring).

    Args:
        cfg: the `fetch` params: dataset, folder, mirror.
        out_dir: the raw data directory, e.g. data/raw; created if missing.
        cache_dir: where downloads are kept between runs, e.g. data/cache.

    Returns:
        Summary: dataset, count, labelled, num_classes, shape ([H, W, C]; None for a folder).

    Raises:
        UserError: bad folder or archive, failed download, or checksum mismatch.
    """
    out_dir = Path(out_dir)
    if cfg.dataset == "folder":
        listing = imagefiles.list_images(Path(cfg.folder))
        md5 = imagefiles.content_md5(listing)
        manifest.write_manifest(listing, md5, out_dir / MANIFEST)
        (out_dir / RAW_NPZ).unlink(missing_ok=True)  # one layout at a time
        return {"dataset": "folder", "count": len(listing.names), "labelled": bool(listing.classes),
                "num_classes": len(listing.classes), "shape": None, "md5": md5}
    x, y = load_array_dataset(cfg, cache_dir)
    y = y.astype(np.int64)
    _write_npz(out_dir / RAW_NPZ, x=x, y=y)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(out_dir / "images", ignore_errors=True)  # an older version's folder copy
    return {"dataset": cfg.dataset, "count": len(x), "labelled": True,
            "num_classes": int(y.max()) + 1, "shape": list(x.shape[1:])}


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write arrays as an npz, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)  # to a file object: no ".npz" appended to the name


def read_npz(path: Path, keys: tuple[str, ...], what: str, remedy: str) -> dict[str, np.ndarray]:
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
