"""Atomic outputs: every file a stage writes appears whole or not at all, with its floats
rounded alike on every machine.

A stage that fails or is killed mid-write must not leave half a file for DVC to cache
or for the next stage to read. Each writer here writes to a temporary file beside its
target and renames it over in one step (`os.replace`, atomic on one filesystem).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it goes.

    The temporary file sits beside `path` (same filesystem, so the rename is atomic) and
    keeps its name's suffix, which some writers (Keras) read the format from. Not
    mkstemp: its 0600 mode would stick to the output after the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# Significant digits of the floats in text outputs. The last digits of a float64 metric
# differ between machines (BLAS kernels, thread counts: 156.9513841453596 here,
# 156.95138423638707 there), which would make a fresh clone's repro change files in git.
# Six digits keep every figure the pipeline reports (float32 losses carry about seven)
# and a difference in the tenth digit rounds alike except within 1e-4 of a boundary.
DIGITS = 6


def rounded(obj: Any, digits: int = DIGITS) -> Any:
    """`obj` with every float (in dicts and lists too) rounded to `digits` significant
    digits; other values unchanged."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [rounded(v, digits) for v in obj]
    return obj


def write_json(obj: Any, path: Path) -> None:
    """Write `obj` as indented JSON with its floats `rounded`, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(rounded(obj), indent=2) + "\n")


def replace_dir(src: Path, dst: Path) -> None:
    """Make `dst` a copy of the directory `src`: copied beside `dst` first, then swapped in,
    so `dst` is at every moment either the old directory or the whole new one (but for the
    instant between removing the old and renaming the new)."""
    dst = Path(dst)
    tmp = dst.with_name(f".tmp-{os.getpid()}-{dst.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(src, tmp)
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def file_md5(path: Path) -> str:
    """The md5 hex digest of a file's bytes: what DVC 3 records in dvc.lock for a file out."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()
