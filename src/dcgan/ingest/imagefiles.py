"""Image files: find, hash and decode the user's images in a folder, .zip or .tar.

The fetch stage calls `list_images` and `content_md5` on `fetch.folder` and records the
result with `manifest.write_manifest`; preprocess reads it back with `read_manifest` and
decodes each image with an `ImageReader`, from a multiprocessing pool. Nothing is copied or
extracted: images are read in place, straight out of the archive.

Labels follow torchvision's ImageFolder: first-level subfolders are classes, unless the
root wraps everything in one folder (CelebA's img_align_celeba.zip), which is descended.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import os
import stat
import tarfile
import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dcgan.core.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
KINDS = ("folder", "zip", "tar")
_HINT = "set fetch.folder to a directory, .zip or .tar of images (" + " ".join(IMAGE_SUFFIXES) + ")"
_CHUNK = 256  # files per hashing task: one future per file would cost more than the hash
# Reading or decoding one file can fail in any of these ways; each becomes a BadImage.
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
                zipfile.BadZipFile, tarfile.TarError, KeyError, zlib.error,
                RuntimeError, NotImplementedError)  # zip: encrypted, unknown compression


class BadImage(Exception):
    """One image that cannot be read or decoded; the message is "<name>: <reason>"."""


@dataclass(frozen=True)
class Listing:
    """The images of one source, in a fixed order."""

    source: str  # the folder or archive path as given
    kind: str  # "folder" | "zip" | "tar"
    names: tuple[str, ...]  # relative posix paths (folder) or member names (archive), sorted
    labels: tuple[int, ...]  # one per name: class index, or -1 when unlabelled
    classes: tuple[str, ...]  # sorted class names; () when unlabelled

    def __post_init__(self) -> None:
        if self.kind not in KINDS or len(self.names) != len(self.labels):
            raise ValueError(f"inconsistent Listing: kind {self.kind!r}, "
                             f"{len(self.names)} names, {len(self.labels)} labels")


# ---------------------------------------------------------------- listing


def list_images(source: Path) -> Listing:
    """List the images of a folder, .zip or .tar, with ImageFolder-style labels.

    Args:
        source: a directory, or a .zip or plain .tar file.

    Returns:
        The sorted Listing, without hidden files, __MACOSX/, symlinks or other non-files.

    Raises:
        UserError: the source is missing, of another kind, unreadable, holds no images,
            or mixes loose images with class folders.
    """
    path = Path(source)
    if not path.exists():
        raise UserError(f"fetch.folder: {source} does not exist; {_HINT}")
    kind = "folder" if path.is_dir() else path.suffix.lower().lstrip(".")
    if kind not in KINDS:
        raise UserError(f"fetch.folder: {source} is not a directory, .zip or .tar; {_HINT}")
    try:
        found = {"folder": _walk_folder, "zip": _zip_names, "tar": _tar_names}[kind](path)
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as err:
        raise UserError(f"fetch.folder: {source} cannot be read as a {kind} ({err}); "
                        f"{_HINT} (a compressed tar: unpack it or repack it as .zip/.tar)"
                        ) from None
    names = sorted({name for name in found if _is_image(_parts(name))})
    if not names:
        raise UserError(f"fetch.folder: {source} holds no image files (hidden files, "
                        f"__MACOSX/ and symlinks are skipped); {_HINT}")
    labels, classes = _label(names, str(source))
    return Listing(str(source), kind, tuple(names), tuple(labels), tuple(classes))


def _parts(name: str) -> list[str]:
    """The path's parts, without the empty and "." parts of "./a//b" or "/a"."""
    return [p for p in name.split("/") if p not in ("", ".")]


def _is_image(parts: list[str]) -> bool:
    hidden = any(p.startswith(".") or p == "__MACOSX" for p in parts)
    return bool(parts) and not hidden and os.path.splitext(parts[-1])[1].lower() in IMAGE_SUFFIXES


def _walk_folder(root: Path) -> list[str]:
    """Every regular file under root, as a relative posix path; symlinks never followed
    (a link could pull in files from outside the folder), hidden folders not entered."""
    found, stack = [], [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(root, rel)) as entries:
            for e in entries:
                if e.name.startswith(".") or e.name == "__MACOSX":
                    continue
                if e.is_dir(follow_symlinks=False):
                    stack.append(rel + e.name + "/")
                elif e.is_file(follow_symlinks=False):
                    found.append(rel + e.name)
    return found


def _zip_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return [i.filename for i in zf.infolist()
                if not i.is_dir() and not stat.S_ISLNK(i.external_attr >> 16)]


def _tar_names(path: Path) -> list[str]:
    with tarfile.open(path, "r:") as tf:
        return [m.name for m in tf if m.isreg()]  # no links, devices or folders


def _label(names: list[str], source: str) -> tuple[list[int], list[str]]:
    """ImageFolder labels of the sorted names: (labels, classes); ([-1, ..], []) if flat."""
    rels = ["/".join(_parts(n)) for n in names]
    prefix = ""
    while True:
        loose = [r for r in rels if "/" not in r]
        classes = sorted({r.split("/", 1)[0] for r in rels if "/" in r})
        if loose or len(classes) != 1:
            break
        # 1. One wrapper folder and nothing beside it: its content is the real root.
        prefix += classes[0] + "/"
        rels = [r.split("/", 1)[1] for r in rels]
    if not classes:  # 2. Images only: one unlabelled set.
        return [-1] * len(names), []
    if loose:  # 3. Both: ambiguous, so refuse rather than guess.
        where = f"{source}/{prefix}".rstrip("/")
        raise UserError(f"fetch.folder: {where} mixes loose images ({_few(loose)}) with "
                        f"class folders ({_few(classes)}); move the loose images into a "
                        "class folder or remove them")
    index = {c: i for i, c in enumerate(classes)}  # 4. Class folders: label = sorted index.
    return [index[r.split("/", 1)[0]] for r in rels], classes


def _few(items: list[str]) -> str:
    return ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")


# ---------------------------------------------------------------- hashing


def content_md5(listing: Listing, workers: int | None = None) -> str:
    """An md5 of the images and their labels, the same on any machine and path.

    A folder hashes every image file (in `workers` threads; hashlib releases the GIL); an
    archive hashes its own bytes. Neither includes the source path or mtimes.

    Args:
        listing: from `list_images`.
        workers: hashing threads for a folder; default os.cpu_count().

    Returns:
        The hex md5.

    Raises:
        UserError: an image file or the archive cannot be read.
    """
    h = hashlib.md5(f"dcgan.imagefiles v1 {listing.kind}\n".encode())
    h.update(json.dumps(listing.classes).encode() + b"\n")
    try:
        if listing.kind == "folder":
            chunks = [listing.names[i:i + _CHUNK] for i in range(0, len(listing.names), _CHUNK)]
            with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count()) as pool:
                digests = [d for part in pool.map(_hash_files, [listing.source] * len(chunks),
                                                  chunks) for d in part]
        else:
            digests = [""] * len(listing.names)
            with open(listing.source, "rb") as f:
                h.update(hashlib.file_digest(f, "md5").hexdigest().encode() + b"\n")
    except OSError as err:
        raise UserError(f"fetch.folder: cannot read {err.filename or listing.source} "
                        f"({err.strerror or err}); fix its permissions or remove it") from None
    for name, label, digest in zip(listing.names, listing.labels, digests, strict=True):
        h.update(json.dumps([name, label, digest]).encode() + b"\n")
    return h.hexdigest()


def _hash_files(root: str, names: tuple[str, ...]) -> list[str]:
    """md5 of each file's bytes, through one reused buffer (a file_digest per small file
    would allocate a fresh 256 KiB buffer each time)."""
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    out = []
    for name in names:
        h = hashlib.md5()
        with open(os.path.join(root, name), "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(view[:n])
        out.append(h.hexdigest())
    return out


# ---------------------------------------------------------------- decoding


class ImageReader:
    """Reads and decodes the images of one source, in any process.

    Holds only (kind, source) when pickled; the archive is opened on first use, once per
    process (a handle inherited through fork would share its file offset with the parent,
    so a pid change reopens it). Reads are serialised by a lock, so threads may share one.
    """

    def __init__(self, kind: str, source: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        self.kind, self.source = kind, str(source)
        self.__setstate__({"kind": self.kind, "source": self.source})

    def __getstate__(self) -> dict:
        return {"kind": self.kind, "source": self.source}

    def __setstate__(self, state: dict) -> None:
        self.kind, self.source = state["kind"], state["source"]
        self._pid: int | None = None
        self._archive: zipfile.ZipFile | tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        self._lock = threading.Lock()

    def read_bytes(self, name: str) -> bytes:
        """The raw bytes of image `name` (a Listing name).

        Raises:
            BadImage: the file or member is missing or cannot be read.
        """
        try:
            if self.kind == "folder":
                with open(os.path.join(self.source, name), "rb") as f:
                    return f.read()
            with self._lock:
                return self._read_member(name)
        except _READ_ERRORS as err:
            raise BadImage(f"{name}: cannot be read ({_reason(err)})") from None

    def _read_member(self, name: str) -> bytes:
        if self._pid != os.getpid():
            if self.kind == "zip":
                self._archive = zipfile.ZipFile(self.source)
            else:
                # Kept open for the life of the process, closed when it exits.
                self._archive = tarfile.open(self.source, "r:")  # noqa: SIM115
                self._members = {m.name: m for m in self._archive if m.isreg()}
            self._pid = os.getpid()
        if isinstance(self._archive, zipfile.ZipFile):
            return self._archive.read(name)
        return self._archive.extractfile(self._members[name]).read()

    def square_rgb(self, name: str, size: int) -> np.ndarray:
        """Image `name` as uint8 (size, size, 3): EXIF rotation applied, 16-bit grey
        rescaled, alpha dropped, GIFs' first frame, center-cropped and resized (LANCZOS).

        Raises:
            BadImage: the file cannot be read or decoded.
        """
        data = self.read_bytes(name)
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()  # decodes the whole file: a truncated image fails here, not later
                im = ImageOps.exif_transpose(im)  # photos: apply the camera's rotation
            if im.mode.startswith("I;16"):  # 16-bit grey: convert() would clip, not rescale
                im = Image.fromarray((np.asarray(im) >> 8).astype(np.uint8))
            im = im.convert("RGB")
            if im.size != (size, size):
                im = ImageOps.fit(im, (size, size), method=Image.Resampling.LANCZOS)
            return np.asarray(im)  # (size, size, 3)
        except _READ_ERRORS as err:
            raise BadImage(f"{name}: not a readable image ({_reason(err)})") from None


def _reason(err: Exception) -> str:
    if isinstance(err, UnidentifiedImageError):  # its message holds a BytesIO's address
        return "unknown image format"
    if isinstance(err, KeyError):
        return f"no member {err}"
    return str(err) or type(err).__name__
