"""Unit tests of dcgan.ingest.imagefiles: listing, labels, hashing, manifest and decoding of a
user's images in a folder, .zip or .tar.

Run with `pytest tests/test_imagefiles.py -q`. Every image is a real file of 8 to 16
pixels written under tmp_path.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import pickle
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dcgan.core.errors import UserError
from dcgan.ingest.imagefiles import (
    BadImage,
    ImageReader,
    Listing,
    content_md5,
    list_images,
)
from dcgan.ingest.manifest import read_manifest, write_manifest

RNG = np.random.default_rng(0)


def _write(path: Path, pixels: np.ndarray | tuple = (200, 40, 90), fmt: str | None = None,
           **save) -> Path:
    """Save an image (a solid 8 x 8 colour, or given pixels) at path, making its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(pixels, tuple):
        pixels = np.full((8, 8, len(pixels)), pixels, np.uint8)
    Image.fromarray(pixels).save(path, format=fmt, **save)
    return path


def _noise(h: int = 8, w: int = 8) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _classes_tree(root: Path) -> Path:
    """cat/ (with a nested folder), dog/, and a class folder with no images."""
    for name in ("cat/a.png", "cat/deep/er/b.png", "dog/c.png", "dog/d.png"):
        _write(root / name, _noise())
    (root / "empty").mkdir()
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not an image")
    return root


def _archives(root: Path, out: Path) -> dict[str, Path]:
    """root's files in a .zip and a .tar, named relative to root, plus a symlink entry and
    a directory entry in each, which must be skipped."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    out.mkdir()
    with zipfile.ZipFile(out / "x.zip", "w") as zf:
        zf.writestr("cat/", b"")
        for p in files:
            zf.write(p, p.relative_to(root).as_posix())
        link = zipfile.ZipInfo("cat/link.png")
        link.external_attr = 0o120777 << 16  # a unix symlink whose bytes are its target
        zf.writestr(link, "../../etc/passwd")
    with tarfile.open(out / "x.tar", "w") as tf:
        tf.add(root, arcname=".", recursive=False)
        for p in files:
            tf.add(p, arcname=p.relative_to(root).as_posix())
        link = tarfile.TarInfo("cat/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "a.png"
        tf.addfile(link)
    return {"zip": out / "x.zip", "tar": out / "x.tar"}


# ---------------------------------------------------------------- listing


def test_flat_folder_is_unlabelled_and_sorted(tmp_path: Path) -> None:
    for name in ("b.png", "a.jpg", "C.PNG", "d.webp"):
        _write(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    listing = list_images(tmp_path)
    assert listing == Listing(str(tmp_path), "folder", ("C.PNG", "a.jpg", "b.png", "d.webp"),
                              (-1, -1, -1, -1), ())


def test_class_folders_are_labelled_like_imagefolder(tmp_path: Path) -> None:
    listing = list_images(_classes_tree(tmp_path))
    assert listing.classes == ("cat", "dog")  # empty/ and notes/ hold no images
    assert dict(zip(listing.names, listing.labels, strict=True)) == {
        "cat/a.png": 0, "cat/deep/er/b.png": 0, "dog/c.png": 1, "dog/d.png": 1}


def test_single_wrapper_folder_is_descended(tmp_path: Path) -> None:
    for i in range(3):  # CelebA's zip: one folder of images, plus macOS debris beside it
        _write(tmp_path / "flat" / "img_align_celeba" / f"{i:06d}.jpg")
    _write(tmp_path / "flat" / "__MACOSX" / "img_align_celeba" / "._000000.jpg")
    flat = list_images(tmp_path / "flat")
    assert flat.names[0] == "img_align_celeba/000000.jpg"
    assert (len(flat.names), set(flat.labels), flat.classes) == (3, {-1}, ())

    _classes_tree(tmp_path / "wrapped" / "outer" / "inner")
    wrapped = list_images(tmp_path / "wrapped")
    assert wrapped.classes == ("cat", "dog")
    assert wrapped.names[0] == "outer/inner/cat/a.png"
    assert wrapped.labels == (0, 0, 1, 1)


def test_loose_images_beside_class_folders_are_refused(tmp_path: Path) -> None:
    _classes_tree(tmp_path / "w" / "data")
    _write(tmp_path / "w" / "data" / "stray.png")
    with pytest.raises(UserError, match=r"data mixes loose images \(stray.png\) with class "
                                        r"folders \(cat, dog\); move the loose images"):
        list_images(tmp_path / "w")


def test_hidden_files_and_macosx_are_skipped(tmp_path: Path) -> None:
    for name in ("a.png", ".b.png", ".git/c.png", "__MACOSX/._a.png", "sub/.d.png", "sub/e.png"):
        _write(tmp_path / "root" / name, fmt="PNG")
    # Only sub/ holds visible images beside a.png, so this mixes: prove the rest is unseen.
    with pytest.raises(UserError, match=r"loose images \(a.png\) with class folders \(sub\)"):
        list_images(tmp_path / "root")
    (tmp_path / "root" / "a.png").unlink()
    assert list_images(tmp_path / "root").names == ("sub/e.png",)


def test_symlinks_are_not_followed(tmp_path: Path) -> None:
    _write(tmp_path / "outside" / "secret.png")
    _write(tmp_path / "outside" / "cls" / "more.png")
    root = tmp_path / "root"
    _write(root / "real.png")
    (root / "link.png").symlink_to(tmp_path / "outside" / "secret.png")
    (root / "linkdir").symlink_to(tmp_path / "outside" / "cls", target_is_directory=True)
    assert list_images(root).names == ("real.png",)


@pytest.mark.parametrize("name, why", [
    ("missing", "does not exist"),
    ("x.txt", "is not a directory, .zip or .tar"),
    ("x.tgz", "is not a directory, .zip or .tar"),
    ("bad.zip", "cannot be read as a zip"),
    ("empty", "holds no image files"),
    ("textonly", "holds no image files"),
])
def test_bad_sources_are_user_errors(tmp_path: Path, name: str, why: str) -> None:
    (tmp_path / "x.txt").write_text("hello")
    (tmp_path / "x.tgz").write_bytes(b"\x1f\x8b")
    (tmp_path / "bad.zip").write_bytes(b"PK not really")
    (tmp_path / "empty").mkdir()
    (tmp_path / "textonly" / "sub").mkdir(parents=True)
    (tmp_path / "textonly" / "sub" / "a.txt").write_text("x")
    with pytest.raises(UserError, match=f"^fetch.folder: .*{name} {why}.*; set fetch.folder"):
        list_images(tmp_path / name)


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize("suffix, tolerance", [
    (".png", 0), (".bmp", 0), (".webp", 0), (".gif", 0), (".jpg", 6)])
def test_every_format_decodes_to_square_rgb(tmp_path: Path, suffix: str, tolerance: int) -> None:
    colour = (200, 40, 90)
    save = {"lossless": True} if suffix == ".webp" else {}
    path = _write(tmp_path / f"a{suffix}", np.full((12, 16, 3), colour, np.uint8), **save)
    for size in (8, 12):  # resized (and cropped from 16 x 12) both ways
        x = ImageReader("folder", str(tmp_path)).square_rgb(path.name, size)
        assert (x.shape, x.dtype) == ((size, size, 3), np.uint8)
        assert np.abs(x.astype(int) - colour).max() <= tolerance


def test_gif_first_frame_alpha_dropped_and_16_bit_rescaled(tmp_path: Path) -> None:
    red, blue = (Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255)))
    red.save(tmp_path / "two.gif", save_all=True, append_images=[blue])
    assert Image.open(tmp_path / "two.gif").n_frames == 2
    _write(tmp_path / "alpha.png", (10, 20, 30, 0))  # fully transparent: dropped, not blended
    grey = np.full((8, 8), 65535, np.uint16)
    grey[:, 4:] = 32768
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    reader = ImageReader("folder", str(tmp_path))
    assert (reader.square_rgb("two.gif", 8) == (255, 0, 0)).all()
    assert (reader.square_rgb("alpha.png", 8) == (10, 20, 30)).all()
    x = reader.square_rgb("grey16.png", 8)
    assert (x[:, :4] == 255).all() and (x[:, 4:] == 128).all()  # >> 8, not clipped to 255


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    pixels = np.zeros((8, 16, 3), np.uint8)  # 16 wide: red left half, blue right half
    pixels[:, :8, 0] = 255
    pixels[:, 8:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    _write(tmp_path / "photo.png", pixels, exif=exif)
    x = ImageReader("folder", str(tmp_path)).square_rgb("photo.png", 8)
    # Upright it is 8 wide and 16 high, red on top; the center crop keeps half of each.
    assert (x[:4, :, 0] == 255).all() and (x[4:, :, 2] == 255).all()


@pytest.mark.parametrize("name", ["bad.png", "cut.jpg"])
def test_undecodable_files_raise_bad_image_naming_them(tmp_path: Path, name: str) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(RNG.integers(0, 256, 64)))
    jpeg = io.BytesIO()
    Image.fromarray(_noise(16, 16)).save(jpeg, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    assert list_images(tmp_path).names == ("bad.png", "cut.jpg")  # listing does not decode
    with pytest.raises(BadImage, match=f"^{name}: not a readable image"):
        ImageReader("folder", str(tmp_path)).square_rgb(name, 8)


# ---------------------------------------------------------------- archives


def test_zip_and_tar_match_the_folder_pixel_for_pixel(tmp_path: Path) -> None:
    root = _classes_tree(tmp_path / "root")
    folder = list_images(root)
    for kind, path in _archives(root, tmp_path / "archives").items():
        listing = list_images(path)
        assert listing.kind == kind
        assert (listing.names, listing.labels, listing.classes) == (
            folder.names, folder.labels, folder.classes)
        reader, direct = ImageReader(kind, str(path)), ImageReader("folder", str(root))
        for name in folder.names:
            assert reader.read_bytes(name) == (root / name).read_bytes()
            np.testing.assert_array_equal(reader.square_rgb(name, 8),
                                          direct.square_rgb(name, 8))
        with pytest.raises(BadImage, match="^cat/nope.png: cannot be read"):
            reader.read_bytes("cat/nope.png")


def test_tar_of_dot_is_labelled_by_its_folders(tmp_path: Path) -> None:
    root = _classes_tree(tmp_path / "root")
    with tarfile.open(tmp_path / "dot.tar", "w") as tf:  # what `tar -cf dot.tar .` makes
        tf.add(root, arcname=".")
    listing = list_images(tmp_path / "dot.tar")
    assert listing.names[0] == "./cat/a.png"
    assert (listing.labels, listing.classes) == ((0, 0, 1, 1), ("cat", "dog"))
    reader = ImageReader("tar", str(tmp_path / "dot.tar"))
    assert reader.read_bytes("./dog/c.png") == (root / "dog/c.png").read_bytes()


def test_reader_works_in_a_spawned_pool_after_use(tmp_path: Path) -> None:
    root = _classes_tree(tmp_path / "root")
    names = list_images(root).names
    expected = [ImageReader("folder", str(root)).square_rgb(n, 8) for n in names]
    readers = [ImageReader(kind, str(path))
               for kind, path in _archives(root, tmp_path / "archives").items()]
    for reader in readers:
        reader.square_rgb(names[0], 8)  # opens the archive: pickling must drop the handle
        assert len(pickle.dumps(reader)) < 200
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        for reader in readers:
            got = pool.starmap(reader.square_rgb, [(n, 8) for n in names])
            for a, b in zip(got, expected, strict=True):
                np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- content md5


def test_content_md5_follows_contents_not_paths(tmp_path: Path) -> None:
    a = _classes_tree(tmp_path / "a")
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)
    md5 = content_md5(list_images(a))
    assert content_md5(list_images(b), workers=1) == md5

    def changed(edit) -> str:
        shutil.rmtree(b)
        shutil.copytree(a, b)
        edit(b)
        return content_md5(list_images(b))

    def flip_byte(root: Path) -> None:
        data = bytearray((root / "dog/c.png").read_bytes())
        data[-20] ^= 1
        (root / "dog/c.png").write_bytes(bytes(data))

    edits = [flip_byte,
             lambda root: (root / "dog/c.png").rename(root / "dog/e.png"),
             lambda root: (root / "dog/c.png").rename(root / "cat/c.png")]
    md5s = [changed(edit) for edit in edits]
    assert len({md5, *md5s}) == 4


def test_archive_md5_follows_the_archive_bytes(tmp_path: Path) -> None:
    root = _classes_tree(tmp_path / "root")
    path = _archives(root, tmp_path / "archives")["zip"]
    md5 = content_md5(list_images(path))
    copy = tmp_path / "copy.zip"
    shutil.copy(path, copy)
    assert content_md5(list_images(copy)) == md5
    with zipfile.ZipFile(copy, "a") as zf:
        zf.writestr("dog/new.png", (root / "dog/c.png").read_bytes())
    assert content_md5(list_images(copy)) != md5
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1  # same names and labels, different bytes
    path.write_bytes(bytes(data))
    assert content_md5(list_images(path)) != md5


# ---------------------------------------------------------------- manifest


def test_manifest_round_trip(tmp_path: Path) -> None:
    listing = list_images(_classes_tree(tmp_path / "root"))
    md5 = content_md5(listing)
    write_manifest(listing, md5, tmp_path / "out" / "manifest.json")
    assert read_manifest(tmp_path / "out" / "manifest.json") == (listing, md5)
    assert os.listdir(tmp_path / "out") == ["manifest.json"]  # no temporary file left


@pytest.mark.parametrize("edit, reason", [
    (None, "file does not exist"),
    ("{not json", "unreadable"),
    ({"extra": 1}, "keys must be"),
    ({"count": 5}, "count 5, 4 names, 4 labels"),
    ({"labels": [0, 0, 1, 2]}, "labels must be integers in"),
    ({"labels": [0, 0, 1, True]}, "labels must be integers in"),
    ({"md5": "xyz"}, "md5 is not 32 hex digits"),
    ({"kind": "rar"}, "kind 'rar' is not one of"),
    ({"names": "abc"}, "wrong type for names"),
])
def test_bad_manifest_says_rerun_fetch(tmp_path: Path, edit, reason: str) -> None:
    path = tmp_path / "manifest.json"
    listing = list_images(_classes_tree(tmp_path / "root"))
    write_manifest(listing, "0" * 32, path)
    if edit is None:
        path.unlink()
    elif isinstance(edit, str):
        path.write_text(edit)
    else:
        path.write_text(json.dumps(json.loads(path.read_text()) | edit))
    with pytest.raises(UserError, match=f"not a fetch manifest \\({reason}.*\\); rerun the "
                                        "fetch stage$"):
        read_manifest(path)
