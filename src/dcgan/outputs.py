"""Atomic outputs: every file a stage writes appears whole or not at all.

A stage that fails or is killed mid-write must not leave half a file for DVC to cache
or for the next stage to read. Each writer here writes to a temporary file beside its
target and renames it over in one step (`os.replace`, atomic on one filesystem).
"""

from __future__ import annotations

import contextlib
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


def write_json(obj: Any, path: Path) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


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
