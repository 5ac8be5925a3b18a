"""Unit tests of dcgan.processed.imagestore: the processed dataset's uint8 .npy files, written
in one pass and read by row.

Run with `pytest tests/test_imagestore.py -q`.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml
from dvc_repo import run

from dcgan.core.errors import UserError
from dcgan.processed import imagestore
from dcgan.processed.imagestore import ImageArray, NpyWriter, open_dataset, scale

RNG = np.random.default_rng(0)


def write_dataset(path: Path, train: np.ndarray, test: np.ndarray,
                  train_y: np.ndarray | None = None, test_y: np.ndarray | None = None) -> Path:
    """A processed dataset directory as preprocess writes it, with no validation image."""
    path.mkdir(parents=True, exist_ok=True)
    for split, x, y in (("train", train, train_y), ("val", train[:0], None),
                        ("test", test, test_y)):
        writer = NpyWriter(path / f"{split}_x.npy", x.shape[1:])
        writer.append(x)
        writer.close()
        np.save(path / f"{split}_y.npy", np.full(len(x), -1, np.int64) if y is None else y)
    return path


def test_scale_is_the_old_float32_arithmetic_bitwise() -> None:
    pixels = np.arange(256, dtype=np.uint8)
    old = pixels.astype(np.float32)
    old /= 127.5
    old -= 1.0
    assert np.array_equal(scale(pixels).view(np.uint32), old.view(np.uint32))
    assert scale(pixels)[0] == -1.0 and scale(pixels)[255] == 1.0


def test_writer_appends_blocks_and_numpy_reads_the_file(tmp_path: Path) -> None:
    x = RNG.integers(0, 256, (37, 5, 4, 3), dtype=np.uint8)
    writer = NpyWriter(tmp_path / "a.npy", (5, 4, 3))
    for start in range(0, 37, 10):
        writer.append(x[start:start + 10])
    assert writer.close() == 37
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), x)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy", mmap_mode="r"), x)
    with pytest.raises(ValueError, match="expected"):
        NpyWriter(tmp_path / "b.npy", (5, 4, 3)).append(x[:, :4])


def test_image_array_reads_only_asked_rows_in_any_order(tmp_path: Path) -> None:
    x = RNG.integers(0, 256, (20, 3, 3, 1), dtype=np.uint8)
    write_dataset(tmp_path, x, x[:4])
    images = ImageArray(tmp_path / "train_x.npy")
    assert len(images) == 20 and images.shape == (20, 3, 3, 1) and images.image_shape == (3, 3, 1)
    rows = np.array([7, 2, 19, 2])
    np.testing.assert_array_equal(images.pixels(rows), x[rows])
    np.testing.assert_array_equal(images[rows], scale(x[rows]))
    np.testing.assert_array_equal(images[5:9], scale(x[5:9]))
    np.testing.assert_array_equal(np.concatenate([b for _, b in images.chunks(6)]), scale(x))
    with pytest.raises(IndexError):
        images.pixels(np.array([20]))
    again = pickle.loads(pickle.dumps(images))  # crosses into pool and tf.data workers
    np.testing.assert_array_equal(again.pixels(rows), x[rows])


def test_open_dataset_and_its_md5_is_dvcs(tmp_path: Path) -> None:
    x = RNG.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    path = write_dataset(tmp_path / "d", x[:8], x[8:], np.arange(8), np.arange(2))
    ds = open_dataset(path)
    assert ds.labelled and ds.image_shape == (4, 4, 3) and ds.train_y.dtype == np.int64
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "add", "-q", "d"]):
        run(cmd, tmp_path)  # this venv's dvc (clean_env), whatever the caller's PATH
    by_dvc = yaml.safe_load((tmp_path / "d.dvc").read_text())["outs"][0]["md5"]
    assert imagestore.dataset_md5(path) == by_dvc and by_dvc.endswith(".dir")
    unlabelled = open_dataset(write_dataset(tmp_path / "u", x[:8], x[8:]))
    assert not unlabelled.labelled


def _damage(path: Path, kind: str) -> None:
    x = RNG.integers(0, 256, (6, 4, 4, 1), dtype=np.uint8)
    write_dataset(path, x[:4], x[4:])
    target = path / "train_x.npy"
    if kind == "missing dir":
        for f in path.iterdir():
            f.unlink()
        path.rmdir()
    elif kind == "missing file":
        target.unlink()
    elif kind == "truncated":
        target.write_bytes(target.read_bytes()[:-10])
    elif kind == "float32":
        np.save(target, x[:4].astype(np.float32))
    elif kind == "not npy":
        target.write_bytes(b"PK\x03\x04 a zip, not an npy")
    elif kind == "pickled labels":
        np.save(path / "train_y.npy", np.array([object()] * 4, dtype=object), allow_pickle=True)
    elif kind == "label count":
        np.save(path / "train_y.npy", np.zeros(3, np.int64))
    elif kind == "shapes differ":
        write_dataset(path, x[:4], x[4:, :2])


@pytest.mark.parametrize("kind, words", [
    ("missing dir", "run the preprocess stage"), ("missing file", "train_x.npy: not found"),
    ("truncated", "truncated or padded"), ("float32", "not uint8 images"),
    ("not npy", "not a processed image array"), ("pickled labels", "not a label array"),
    ("label count", "labels for 4 images"), ("shapes differ", "differ in shape"),
])
def test_a_damaged_dataset_is_one_user_error(tmp_path: Path, kind: str, words: str) -> None:
    path = tmp_path / "d"
    _damage(path, kind)
    with pytest.raises(UserError, match=words) as err:
        open_dataset(path)
    assert "\n" not in str(err.value)
    assert "rerun preprocess" in str(err.value) or "run the preprocess stage" in str(err.value)


def test_dataset_md5_changes_with_any_byte(tmp_path: Path) -> None:
    x = RNG.integers(0, 256, (6, 4, 4, 1), dtype=np.uint8)
    path = write_dataset(tmp_path / "d", x[:4], x[4:])
    before = imagestore.dataset_md5(path)
    data = bytearray((path / "test_x.npy").read_bytes())
    data[-1] ^= 1
    (path / "test_x.npy").write_bytes(bytes(data))
    assert imagestore.dataset_md5(path) != before
    assert len(before) == len(hashlib.md5().hexdigest()) + len(".dir")


def test_open_dataset_opens_only_the_splits_named(tmp_path: Path) -> None:
    x = RNG.integers(0, 256, (6, 4, 4, 1), dtype=np.uint8)
    path = write_dataset(tmp_path / "d", x[:4], x[4:])
    (path / "test_x.npy").unlink()  # train's view never touches it
    data = open_dataset(path, splits=("train", "val"))
    assert len(data.train_x) == 4 and len(data.val_x) == 0
    assert data.test_x is None and data.test_y is None
    with pytest.raises(UserError, match="test_x.npy: not found"):
        open_dataset(path)
