"""Unit tests of dcgan.sampling.generate: pixel mapping, grids, slerp, GIFs, loading a generator,
and `generate()` end to end with a tiny saved generator and a real MLflow SQLite store.

Run with `pytest tests/test_sampling.py -q`.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest
from PIL import Image

from dcgan.core.config import GenerateConfig, TrainConfig
from dcgan.core.errors import UserError
from dcgan.nets.architectures import Generator
from dcgan.sampling.generate import generate, load_generator_file, slerp
from dcgan.sampling.images import image_grid, make_gif, save_image, to_uint8

LATENT, SIZE = 8, 16


# ---------------------------------------------------------------- pixels and grids


def test_to_uint8_maps_and_clips() -> None:
    x = np.array([-2.0, -1.0, -0.999, 0.0, 0.5, 1.0, 3.0])
    out = to_uint8(x)
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, 0, 128, 191, 255, 255]


def test_to_uint8_is_monotonic_and_keeps_shape() -> None:
    x = np.linspace(-1, 1, 1001).reshape(1, 7, 11, 13)
    out = to_uint8(x)
    assert out.shape == x.shape
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)
    assert set(np.unique(out)) == set(range(256))  # every level is reachable


def test_image_grid_grey_layout() -> None:
    images = np.stack([np.full((5, 4, 1), v) for v in np.linspace(-1, 1, 6)])  # (6, 5, 4, 1)
    grid = image_grid(images, rows=2, pad=2)
    assert grid.mode == "L"
    assert grid.size == (3 * (4 + 2) + 2, 2 * (5 + 2) + 2)  # (width, height) = (20, 16)
    pixels = np.asarray(grid)
    # tile 4 sits at row 1, column 1; its value is to_uint8(0.6)
    assert np.all(pixels[9:14, 8:12] == to_uint8(np.linspace(-1, 1, 6)[4]))
    assert np.all(pixels[2:7, 2:6] == 0)  # tile 0 is black (-1)
    assert np.all(pixels[:2, :] == 255) and np.all(pixels[:, 6:8] == 255)  # white padding


def test_image_grid_rgb_and_no_padding() -> None:
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (4, 3, 3, 3))
    grid = image_grid(images, rows=2, pad=0)
    assert grid.mode == "RGB"
    assert grid.size == (6, 6)
    pixels = np.asarray(grid)
    np.testing.assert_array_equal(pixels[:3, 3:], to_uint8(images[1]))
    np.testing.assert_array_equal(pixels[3:, :3], to_uint8(images[2]))


def test_image_grid_needs_full_rows() -> None:
    with pytest.raises(AssertionError, match="5 images do not fill 2 rows"):
        image_grid(np.zeros((5, 4, 4, 1)), rows=2)


def test_save_image_scales_with_nearest_neighbour(tmp_path: Path) -> None:
    image = Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8))
    path = tmp_path / "sub" / "x.png"
    save_image(image, path, scale=3)
    saved = np.asarray(Image.open(path))
    assert saved.shape == (6, 6)
    assert set(np.unique(saved)) == {0, 255}  # no interpolated greys
    assert [p.name for p in path.parent.iterdir()] == ["x.png"]  # no temp file left


# ---------------------------------------------------------------- slerp


def test_slerp_endpoints() -> None:
    rng = np.random.default_rng(1)
    z0, z1 = rng.standard_normal(LATENT), rng.standard_normal(LATENT)
    path = slerp(z0, z1, np.linspace(0, 1, 5))
    assert path.shape == (5, LATENT)
    np.testing.assert_allclose(path[0], z0, atol=1e-12)
    np.testing.assert_allclose(path[-1], z1, atol=1e-12)


def test_slerp_keeps_the_norm_of_equal_norm_endpoints() -> None:
    rng = np.random.default_rng(2)
    z0, z1 = rng.standard_normal(64), rng.standard_normal(64)
    z1 *= np.linalg.norm(z0) / np.linalg.norm(z1)
    norms = np.linalg.norm(slerp(z0, z1, np.linspace(0, 1, 11)), axis=1)
    np.testing.assert_allclose(norms, np.linalg.norm(z0), rtol=1e-9)
    # a straight line would dip in the middle: the test can tell the two apart
    assert np.linalg.norm((z0 + z1) / 2) < 0.9 * np.linalg.norm(z0)


def test_slerp_parallel_vectors_fall_back_to_a_line() -> None:
    z0 = np.arange(1.0, LATENT + 1)
    t = np.linspace(0, 1, 4)
    path = slerp(z0, 2 * z0, t)
    assert np.all(np.isfinite(path))
    np.testing.assert_allclose(path, (1 + t)[:, None] * z0)
    same = slerp(z0, z0.copy(), t)
    np.testing.assert_allclose(same, np.tile(z0, (4, 1)))


# ---------------------------------------------------------------- GIF


def test_make_gif_has_one_frame_per_png(tmp_path: Path) -> None:
    frames = []
    for i in range(3):
        frames.append(tmp_path / f"epoch_{i + 1:04d}.png")
        save_image(Image.fromarray(np.full((8, 8), 40 * (i + 1), np.uint8)), frames[-1])
    gif = tmp_path / "progress.gif"
    make_gif(frames, gif, ms_per_frame=100)
    with Image.open(gif) as im:
        assert im.format == "GIF"
        assert im.n_frames == 3
        assert im.info["loop"] == 0
        durations = []
        for k in range(im.n_frames):
            im.seek(k)
            durations.append(im.info["duration"])
    assert durations == [100, 100, 500]  # the last frame is held longer
    assert not list(tmp_path.glob(".*tmp"))


# ---------------------------------------------------------------- loading a generator


@pytest.fixture(scope="module")
def saved_generator(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A tiny untrained paper generator (16x16x1, latent 8) saved as .keras."""
    keras.utils.set_random_seed(0)
    model = Generator(TrainConfig(latent_dim=LATENT, g_filters=8), (SIZE, SIZE, 1))
    path = tmp_path_factory.mktemp("model") / "generator.keras"
    model.save(path)
    return SimpleNamespace(path=path, model=model)


def test_load_generator_round_trip(saved_generator) -> None:
    loaded = load_generator_file(saved_generator.path)
    z = np.random.default_rng(0).standard_normal((3, LATENT)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(loaded(z)), np.asarray(saved_generator.model(z)))


def test_load_generator_missing(tmp_path: Path) -> None:
    path = tmp_path / "generator.keras"
    with pytest.raises(UserError, match="run the train stage first") as info:
        load_generator_file(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", ["generator.keras", "generator.h5", "generator"])
def test_load_generator_junk(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"this is not a model\n")
    with pytest.raises(UserError, match="cannot be loaded as a Keras model") as info:
        load_generator_file(path)
    assert str(path) in str(info.value)


def test_load_generator_zip_that_is_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "generator.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "not a model")
    with pytest.raises(UserError, match="cannot be loaded as a Keras model"):
        load_generator_file(path)


# ---------------------------------------------------------------- generate() end to end


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module (creating one takes over a second)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


CFG = GenerateConfig(num_samples=10, seed=5, grid_rows=2, interp_steps=3)


def test_generate_writes_samples_and_pictures(saved_generator, tmp_path: Path) -> None:
    out = tmp_path / "generated"
    summary = generate(CFG, saved_generator.path, out)
    assert summary == {"num_samples": 10, "shape": [SIZE, SIZE, 1]}

    samples = np.load(out / "samples.npy")
    assert samples.shape == (10, SIZE, SIZE, 1) and samples.dtype == np.float32
    assert samples.min() >= -1 and samples.max() <= 1 and samples.std() > 0
    assert len(np.unique(samples.reshape(10, -1), axis=0)) == 10  # ten different images

    scale = 512 // (SIZE * CFG.grid_rows)  # 16: pictures are enlarged to about 512 px
    tile = SIZE + 2
    with Image.open(out / "grid.png") as grid:
        assert grid.mode == "L"
        assert grid.size == ((2 * tile + 2) * scale, (2 * tile + 2) * scale)
    with Image.open(out / "interpolation.png") as interp:  # grid_rows walks of interp_steps
        assert interp.size == ((3 * tile + 2) * scale, (2 * tile + 2) * scale)
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "interpolation.png",
                                                     "samples.npy"]


def test_generate_same_seed_same_samples(saved_generator, tmp_path: Path) -> None:
    generate(CFG, saved_generator.path, tmp_path / "a")
    generate(CFG, saved_generator.path, tmp_path / "b")
    other = CFG.model_copy(update={"seed": 6})
    generate(other, saved_generator.path, tmp_path / "c")
    a, b, c = (np.load(tmp_path / d / "samples.npy") for d in "abc")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (tmp_path / "a" / "grid.png").read_bytes() == (tmp_path / "b" / "grid.png").read_bytes()


def test_generate_without_a_generator_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    with pytest.raises(UserError, match="run the train stage first"):
        generate(CFG, tmp_path / "missing.keras", out)
    assert not out.exists()


def test_grid_and_walks_do_not_depend_on_num_samples(saved_generator,
                                                      tmp_path: Path) -> None:
    generate(CFG, saved_generator.path, tmp_path / "a")
    more = CFG.model_copy(update={"num_samples": CFG.num_samples + 5})
    generate(more, saved_generator.path, tmp_path / "b")
    for name in ("grid.png", "interpolation.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    a, b = (np.load(tmp_path / d / "samples.npy") for d in "ab")
    np.testing.assert_array_equal(a, b[: len(a)])  # the first samples stay the same too
