"""Unit tests of dcgan.evaluation.probe: pooling, D features, subsets, the SVM probe and the probe
stage.

Run with `pytest tests/test_probe.py -q`. Discriminators are the package's own (paper D
with 4 filters, tutorial D) on 16x16 or 28x28 images, datasets a few dozen images, and
the stage runs against a real MLflow SQLite store in a temporary directory, on a dataset
directory in preprocess's layout. Every probe fit here must converge: a ConvergenceWarning
fails the test.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from test_evaluation import write_dataset

from dcgan.core.config import ProbeConfig, TrainConfig
from dcgan.core.errors import UserError
from dcgan.core.outputs import rounded
from dcgan.evaluation.probe import (
    adaptive_max_pool,
    discriminator_features,
    labelled_subset,
    linear_probe,
    probe,
    random_like,
    run_probe,
)
from dcgan.nets.architectures import Discriminator
from dcgan.nets.serialisation import save_model
from dcgan.processed import batches
from dcgan.processed.imagestore import Dataset, open_dataset, scale

pytestmark = pytest.mark.filterwarnings("error::sklearn.exceptions.ConvergenceWarning")

REPO = Path(__file__).resolve().parents[1]
SMALL = TrainConfig(d_filters=4)  # paper D: 4 then 8 channels at 16 and 28 px


def _paper_d(shape: tuple[int, int, int], seed: int = 1) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return Discriminator(SMALL, shape)


def _bright_vs_dark_pixels(n: int, seed: int, side: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Noisy side x side x 1 uint8 images; label 1 = bright (128..255), 0 = dark (0..127)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = 128 * y[:, None, None, None] + rng.integers(0, 128, size=(n, side, side, 1))
    return x.astype(np.uint8), y.astype(np.int64)


def _bright_vs_dark(n: int, seed: int, side: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The same images as float32 in [-1, 1], as the dataset reads them."""
    x, y = _bright_vs_dark_pixels(n, seed, side)
    return scale(x), y


def _dataset_pixels(n_train: int = 36, n_unlabelled: int = 6,
                    n_test: int = 20) -> dict[str, np.ndarray]:
    """Bright-vs-dark 16x16 uint8 data; the last `n_unlabelled` training labels are -1."""
    train_x, train_y = _bright_vs_dark_pixels(n_train, 0)
    test_x, test_y = _bright_vs_dark_pixels(n_test, 1)
    train_y[n_train - n_unlabelled:] = -1
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def _dataset(**sizes: int) -> Dataset:
    """`_dataset_pixels` in memory, images scaled to [-1, 1]."""
    data = _dataset_pixels(**sizes)
    return Dataset(scale(data["train_x"]), data["train_y"], test_x=scale(data["test_x"]),
                   test_y=data["test_y"])


def _same_weights(a: keras.Model, b: keras.Model) -> bool:
    return all(np.array_equal(wa, wb)
               for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True))


@pytest.fixture(scope="module")
def paper_d() -> keras.Model:
    return _paper_d((16, 16, 1))


# ---------------------------------------------------------------- the SVM


def test_probe_on_label_features_is_perfect_and_on_noise_is_chance():
    rng = np.random.default_rng(0)
    classes = 4
    # 100 training images, the paper's smallest probe; with 40 the strong regularisation
    # (C = 1e-3) lets the 20 noise dims flip about 2% of the test images.
    train_y, test_y = np.arange(100) % classes, rng.integers(0, classes, 400)

    def features(y: np.ndarray) -> np.ndarray:  # one-hot label beside 20 noise dims
        return np.hstack([np.eye(classes)[y], rng.normal(size=(len(y), 20))])

    assert linear_probe(features(train_y), train_y, features(test_y), test_y) == 1.0
    noise_acc = linear_probe(rng.normal(size=(100, 24)), train_y,
                             rng.normal(size=(400, 24)), test_y)
    assert abs(noise_acc - 1 / classes) < 0.1  # 400 test images: chance +- 5 sigma


# ---------------------------------------------------------------- pooling


def _loop_pool(maps: np.ndarray, grid: int) -> np.ndarray:
    """Adaptive max pooling written out with math.floor/ceil, cell by cell."""
    n, h, w, c = maps.shape
    out = np.empty((n, grid, grid, c), maps.dtype)
    for i in range(grid):
        r0, r1 = math.floor(i * h / grid), math.ceil((i + 1) * h / grid)
        for j in range(grid):
            c0, c1 = math.floor(j * w / grid), math.ceil((j + 1) * w / grid)
            out[:, i, j] = maps[:, r0:r1, c0:c1].max(axis=(1, 2))
    return out


def test_adaptive_max_pool_divisible_is_block_max():
    maps = np.random.default_rng(0).normal(size=(3, 8, 8, 5)).astype(np.float32)
    blocks = maps.reshape(3, 4, 2, 4, 2, 5).max(axis=(2, 4))
    np.testing.assert_array_equal(adaptive_max_pool(maps), blocks)


@pytest.mark.parametrize("side", [(7, 7), (3, 3), (14, 14), (7, 5)])
def test_adaptive_max_pool_matches_loops_and_keras(side):
    maps = np.random.default_rng(1).normal(size=(2, *side, 3)).astype(np.float32)
    pooled = adaptive_max_pool(maps)
    assert pooled.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(pooled, _loop_pool(maps, 4))
    # Keras 3's own layer uses the same windows: an independent implementation.
    np.testing.assert_array_equal(pooled, np.asarray(keras.layers.AdaptiveMaxPooling2D(4)(maps)))


def test_adaptive_max_pool_3x3_by_hand():
    maps = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1)  # value = 3 * row + col
    # Row windows for H=3: [0:1], [0:2], [1:3], [2:3], so the largest rows are 0, 1, 2, 2.
    top = np.array([0, 1, 2, 2])
    np.testing.assert_array_equal(adaptive_max_pool(maps)[0, ..., 0],
                                  3 * top[:, None] + top[None, :])


# ---------------------------------------------------------------- features


@pytest.mark.parametrize("side", [16, 28])
def test_paper_features_width_and_determinism(side):
    d = _paper_d((side, side, 1))
    channels = [layer.output.shape[-1] for layer in d.layers
                if isinstance(layer, keras.layers.LeakyReLU)]
    assert channels == [4, 8]
    x = _bright_vs_dark(7, 0, side)[0]
    feats = discriminator_features(d, x, batch_size=3)
    assert feats.shape == (7, sum(16 * c for c in channels)) == (7, 192)
    assert feats.dtype == np.float32 and np.ptp(feats) > 0
    np.testing.assert_array_equal(discriminator_features(d, x, batch_size=3), feats)
    # Batching changes only round-off (batch norm runs in inference mode).
    np.testing.assert_allclose(discriminator_features(d, x, batch_size=256), feats,
                               rtol=1e-5, atol=1e-6)


def test_features_match_keras_pooling_of_first_block(paper_d):
    x = _bright_vs_dark(5, 2)[0]
    first = next(lay for lay in paper_d.layers if isinstance(lay, keras.layers.LeakyReLU))
    pooled = keras.layers.AdaptiveMaxPooling2D(4)(first.output)  # (B, 4, 4, 4)
    reference = keras.Model(paper_d.inputs[0], pooled).predict(x, verbose=0).reshape(5, -1)
    np.testing.assert_allclose(discriminator_features(paper_d, x)[:, :64], reference,
                               rtol=1e-6, atol=1e-6)


def test_tutorial_features_and_keras_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    d = Discriminator(TrainConfig(arch="tutorial"), (16, 16, 1))
    x = _bright_vs_dark(4, 0)[0]
    feats = discriminator_features(d, x)
    assert feats.shape == (4, 16 * (64 + 128))
    save_model(d, tmp_path / "d.keras")
    loaded = keras.saving.load_model(tmp_path / "d.keras", compile=False)
    np.testing.assert_allclose(discriminator_features(loaded, x), feats, rtol=1e-6, atol=1e-6)


def test_model_without_leaky_relu_is_rejected():
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(1)])
    with pytest.raises(UserError, match="no LeakyReLU"):
        discriminator_features(model, np.zeros((2, 8, 8, 1), np.float32))


def test_random_like_is_a_fresh_seeded_copy(paper_d):
    fresh = random_like(paper_d, seed=0)
    assert [w.shape for w in fresh.get_weights()] == [w.shape for w in paper_d.get_weights()]
    assert fresh.output_shape == paper_d.output_shape
    assert not _same_weights(fresh, paper_d)
    assert _same_weights(fresh, random_like(paper_d, seed=0))
    assert not _same_weights(fresh, random_like(paper_d, seed=1))


# ---------------------------------------------------------------- subsets


@pytest.fixture(scope="module")
def uneven_labels() -> np.ndarray:
    """20 of class 0, 20 of class 1, 3 of class 2 and 10 unlabelled, shuffled."""
    labels = np.array([0] * 20 + [1] * 20 + [2] * 3 + [-1] * 10)
    return np.random.default_rng(5).permutation(labels)


def test_labelled_subset_is_balanced_and_skips_unlabelled(uneven_labels):
    idx = labelled_subset(uneven_labels, 10, seed=0)
    assert len(np.unique(idx)) == 10
    assert (uneven_labels[idx] >= 0).all()
    assert sorted(np.bincount(uneven_labels[idx])) == [3, 3, 4]  # 10 // 3 each, 1 spare
    # Class 2 has only 3 images: the other two share the rest evenly.
    counts = np.bincount(uneven_labels[labelled_subset(uneven_labels, 20, seed=0)])
    assert counts[2] == 3 and sorted(counts[:2]) == [8, 9]


def test_labelled_subset_is_seeded_and_nested(uneven_labels):
    small = labelled_subset(uneven_labels, 10, seed=0)
    np.testing.assert_array_equal(small, labelled_subset(uneven_labels, 10, seed=0))
    assert not np.array_equal(small, labelled_subset(uneven_labels, 10, seed=1))
    assert set(small) <= set(labelled_subset(uneven_labels, 30, seed=0))


def test_labelled_subset_too_large(uneven_labels):
    with pytest.raises(ValueError, match="only 43"):
        labelled_subset(uneven_labels, 44, seed=0)


# ---------------------------------------------------------------- run_probe


def test_run_probe_skips_sizes_above_the_labelled_count(paper_d):
    result = run_probe(paper_d, _dataset(), sizes=[1000, 20, 8], seed=0)
    assert list(result["probe"]) == ["8", "20"]
    assert result["probe_train_size"] == 20
    assert result["probe_accuracy"] == result["probe"]["20"]["discriminator"]
    for scores in result["probe"].values():
        assert set(scores) == {"discriminator", "random_discriminator", "pixels"}
        assert all(0.0 <= acc <= 1.0 for acc in scores.values())
    assert result["probe"]["20"]["pixels"] >= 0.9  # brightness is linear in the pixels


def test_run_probe_falls_back_to_all_labelled_images(paper_d):
    result = run_probe(paper_d, _dataset(n_train=36, n_unlabelled=6), sizes=[100], seed=0)
    assert list(result["probe"]) == ["30"] and result["probe_train_size"] == 30


@pytest.mark.parametrize("split", ["train_y", "test_y"])
def test_run_probe_without_labels_returns_none(paper_d, caplog, split):
    data = _dataset()
    unlabelled = Dataset(**{**vars(data), split: np.full_like(getattr(data, split), -1)})
    result = run_probe(paper_d, unlabelled, sizes=[8], seed=0)
    assert result == {"probe_accuracy": None, "probe_train_size": None, "probe": {}}
    assert "probe skipped" in caplog.text


def test_run_probe_on_disk_in_blocks_matches_memory(paper_d, tmp_path, monkeypatch):
    pixels = _dataset_pixels(n_train=40, n_unlabelled=4, n_test=30)
    pixels["test_y"][[2, 11, 25]] = -1  # unlabelled test images are not scored
    on_disk = open_dataset(write_dataset(tmp_path / "dataset", **pixels))
    in_memory = Dataset(scale(pixels["train_x"]), pixels["train_y"],
                        test_x=scale(pixels["test_x"]), test_y=pixels["test_y"])
    expected = run_probe(paper_d, in_memory, sizes=[8, 20], seed=0, batch_size=4)
    # 27 labelled test images in blocks of 8: four blocks, the last one partial.
    monkeypatch.setattr(batches, "READ_ROWS", 8)
    reads: list[int] = []
    test_pixels = on_disk.test_x.pixels
    monkeypatch.setattr(on_disk.test_x, "pixels",
                        lambda rows: reads.append(len(rows)) or test_pixels(rows))
    assert run_probe(paper_d, on_disk, sizes=[8, 20], seed=0, batch_size=4) == expected
    assert reads == [8, 8, 8, 3]  # read once, for all three feature sets


# ---------------------------------------------------------------- the stage


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A fresh SQLite MLflow store in tmp_path; no store settings from the caller's shell."""
    for name in ("MLFLOW_EXPERIMENT_NAME", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    yield uri
    while mlflow.active_run():  # a failing test must not leave a run open for the next
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def _stage_inputs(tmp_path: Path, d_shape: tuple[int, int, int]) -> dict[str, Path]:
    data_file = write_dataset(tmp_path / "dataset", **_dataset_pixels())
    save_model(_paper_d(d_shape), tmp_path / "discriminator.keras")
    return {"data_file": data_file,
            "discriminator_path": tmp_path / "discriminator.keras",
            "metrics_file": tmp_path / "out" / "probe.json"}


def test_probe_stage_writes_json(tmp_path):
    paths = _stage_inputs(tmp_path, (16, 16, 1))
    result = probe(ProbeConfig(train_sizes=[8, 1000], seed=0), **paths)
    assert json.loads(paths["metrics_file"].read_text()) == rounded(result)
    assert list(result["probe"]) == ["8"]  # 1000 > the 30 labelled images: skipped
    assert os.listdir(paths["metrics_file"].parent) == ["probe.json"]  # no temp file left


def test_probe_stage_rejects_d_for_other_images(store, tmp_path):
    paths = _stage_inputs(tmp_path, (16, 16, 3))
    with pytest.raises(UserError) as info:
        probe(ProbeConfig(), **paths)
    message = str(info.value)
    assert "(16, 16, 3)" in message and "(16, 16, 1)" in message and "\n" not in message
    assert not paths["metrics_file"].exists()


@pytest.mark.slow
def test_stage_script_reports_a_bad_path_in_one_line(tmp_path):
    args = ["--params", str(REPO / "params.yaml"), "--data", str(tmp_path / "missing"),
            "--discriminator", str(tmp_path / "d.keras"), "--metrics",
            str(tmp_path / "probe.json")]
    proc = subprocess.run([sys.executable, str(REPO / "stages/probe.py"), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    # TensorFlow's C++ start-up lines also go to stderr; ours is the one "error:" line.
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {tmp_path / 'missing'}: not found; "
                      "run the preprocess stage first"]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "probe.json").exists()
