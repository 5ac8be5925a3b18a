"""The processed dataset on disk: uint8 images in `.npy` files, written in one pass and
read a batch at a time.

`ingest.preprocessing.preprocess` writes it with `NpyWriter`; every later stage opens it with
`open_dataset()` and reads only the rows it uses, so memory depends on the batch, not on
the dataset (a 200,000-image 64 px set is 2.46 GB on disk and never in RAM).

Layout (a directory, one DVC out):
    train_x.npy, val_x.npy, test_x.npy   uint8 (N, S, S, C), in split order
    train_y.npy, val_y.npy, test_y.npy   int64 (N,), -1 when the dataset has no labels
The GAN trains on train, scores its epochs on val (validation) and is scored by the evaluate
stage on test; train opens no test file.
Images are stored as bytes (1 byte a channel, 4x smaller than float32) and scaled to
[-1, 1] on reading by `scale`, with the same float32 operations preprocess used to apply
once, so the values are bitwise those of the old float32 arrays.

Rows are read with `os.pread`, not a memory map: a map's touched pages count in the
process's resident memory, so one epoch would map the whole file in; pread's pages stay in
the OS page cache, which the kernel can drop.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcgan.core.errors import UserError

SPLITS = ("train", "val", "test")
FILES = tuple(sorted(f"{split}_{part}.npy" for split in SPLITS for part in "xy"))  # as DVC lists
# A fixed header size: written before the row count is known, patched to it at the end.
HEADER_BYTES = 128
_MAGIC = b"\x93NUMPY\x01\x00"


def scale(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels to float32 in [-1, 1] (0 -> -1, 255 -> 1); the input pipeline's step."""
    x = pixels.astype(np.float32)
    x /= 127.5
    x -= 1.0
    return x


def _header(count: int, row_shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """An .npy version 1.0 header of exactly HEADER_BYTES for (count, *row_shape)."""
    meta = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
            "shape": (count, *row_shape)}
    text = repr(meta).encode("latin1")
    pad = HEADER_BYTES - len(_MAGIC) - 2 - len(text) - 1
    return _MAGIC + (HEADER_BYTES - 10).to_bytes(2, "little") + text + b" " * pad + b"\n"


class NpyWriter:
    """Rows appended to an .npy file one block at a time; the header gets the final count
    on `close()`, so rows that turn out unreadable can be left out without a rewrite."""

    def __init__(self, path: Path, row_shape: tuple[int, ...], dtype: type = np.uint8):
        self.path, self.row_shape, self.dtype = Path(path), tuple(row_shape), np.dtype(dtype)
        self.count = 0
        self._file = open(self.path, "wb")  # noqa: SIM115 (closed by close())
        self._file.write(_header(0, self.row_shape, self.dtype))

    def append(self, rows: np.ndarray) -> None:
        """Write rows of shape (k, *row_shape)."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"rows of shape {rows.shape[1:]}, expected {self.row_shape}")
        self._file.write(rows.tobytes())
        self.count += len(rows)

    def close(self) -> int:
        """Write the header with the row count and close; returns the count."""
        self._file.seek(0)
        self._file.write(_header(self.count, self.row_shape, self.dtype))
        self._file.close()
        return self.count


class ImageArray:
    """A read-only uint8 (N, H, W, C) .npy file, read by row: indexing returns float32
    images scaled to [-1, 1], reading only the rows asked for."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.shape, self.offset = _read_header(self.path)
        if len(self.shape) != 4:
            raise UserError(f"{self.path}: holds an array of shape {self.shape}, not images "
                            "(N, H, W, C); rerun preprocess")
        self.row_bytes = int(np.prod(self.shape[1:]))
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(self.shape[1:])

    def __getstate__(self) -> dict:  # a file descriptor does not cross processes
        return {**self.__dict__, "_fd": None}

    def _pread(self, start: int, count: int) -> np.ndarray:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        size = count * self.row_bytes
        raw = os.pread(self._fd, size, self.offset + start * self.row_bytes)
        if len(raw) != size:
            raise UserError(f"{self.path}: truncated ({len(raw)} of {size} bytes at row "
                            f"{start}); rerun preprocess")
        return np.frombuffer(raw, np.uint8).reshape(count, *self.shape[1:])

    def pixels(self, index: np.ndarray | slice) -> np.ndarray:
        """uint8 rows: a slice (read in one call) or integer indices in any order."""
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            block = self._pread(start, max(0, stop - start))
            return block[::step] if step != 1 else block
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if len(index) and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} images")
        out = np.empty((len(index), *self.shape[1:]), np.uint8)
        for i, row in enumerate(index):
            out[i] = self._pread(int(row), 1)[0]
        return out

    def __getitem__(self, index: np.ndarray | slice) -> np.ndarray:
        """float32 images in [-1, 1] at `index` (a slice or integer indices)."""
        return scale(self.pixels(index))

    def chunks(self, size: int = 1024) -> Iterator[tuple[int, np.ndarray]]:
        """(start, float32 images) over the whole array, `size` rows at a time."""
        for start in range(0, len(self), size):
            yield start, self[start:start + size]

    def close(self) -> None:
        """Close the file descriptor (reopened on the next read)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_header(path: Path) -> tuple[tuple[int, ...], int]:
    """(shape, data offset) of a uint8 C-order .npy file, without reading its data."""
    try:
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if major == 1
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(f)
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run the preprocess stage first") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise UserError(f"{path}: not a processed image array ({err}); rerun preprocess") from None
    if dtype != np.uint8 or fortran:
        raise UserError(f"{path}: holds {dtype} {'Fortran' if fortran else 'C'}-order data, "
                        "not uint8 images; rerun preprocess")
    if size != offset + int(np.prod(shape)):
        raise UserError(f"{path}: {size - offset} data bytes for shape {shape} (truncated or "
                        "padded); rerun preprocess")
    return tuple(int(d) for d in shape), offset


@dataclass(frozen=True)
class Dataset:
    """The processed splits: images read by row (float32 in [-1, 1] when indexed), labels
    int64 in memory (-1: none). A split that was not opened is None."""

    train_x: ImageArray
    train_y: np.ndarray
    val_x: ImageArray | None = None
    val_y: np.ndarray | None = None
    test_x: ImageArray | None = None
    test_y: np.ndarray | None = None

    @property
    def labelled(self) -> bool:
        """False when every label is -1 (a folder of images without class folders)."""
        return any(bool((y >= 0).any()) for y in (self.train_y, self.val_y, self.test_y)
                   if y is not None)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return self.train_x.image_shape


def _labels(path: Path, count: int) -> np.ndarray:
    try:
        y = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run the preprocess stage first") from None
    except (OSError, ValueError, EOFError) as err:
        raise UserError(f"{path}: not a label array ({err}); rerun preprocess") from None
    if y.shape != (count,) or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{path}: {y.dtype} {y.shape} labels for {count} images; rerun preprocess")
    return y.astype(np.int64)


def open_dataset(path: Path, splits: tuple[str, ...] = SPLITS) -> Dataset:
    """Open preprocess's output directory (layout in the module docstring): the `splits`
    named (train always), the others left None and their files unread.

    Raises:
        UserError: the directory or one of its files is missing, truncated or not what
            preprocess writes; or the splits' images differ in shape.
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: not found; run the preprocess stage first")
    arrays = {}
    for split in dict.fromkeys(("train", *splits)):
        x = ImageArray(path / f"{split}_x.npy")
        if x.image_shape != (shape := arrays.get("train_x", x).image_shape):
            raise UserError(f"{path}: train images {shape} and {split} images "
                            f"{x.image_shape} differ in shape; rerun preprocess")
        arrays[f"{split}_x"], arrays[f"{split}_y"] = x, _labels(path / f"{split}_y.npy", len(x))
    return Dataset(**arrays)


def dataset_md5(path: Path) -> str:
    """The dataset directory's md5 as DVC computes it for a directory out (the value in
    dvc.lock, ending in ".dir"): the md5 of the sorted JSON list of its files' md5s."""
    entries = []
    for name in FILES:
        with open(Path(path) / name, "rb") as f:
            entries.append({"md5": hashlib.file_digest(f, "md5").hexdigest(), "relpath": name})
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"
