"""Tests of dcgan.evaluation.evaluate: which sets are scored against which, the ceilings, the
dataset read from disk at constant memory, and the evaluate stage end to end with a real
MLflow SQLite store.

Run with `pytest tests/test_evaluation.py`. The classifier is a tiny real Keras model
(`build_classifier`, untrained: its features are a fixed random map, which is all the
bookkeeping here needs; the maths is tested in test_metrics.py). Datasets on disk are
written in preprocess's layout with `write_dataset`.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import keras
import numpy as np
import pytest

from dcgan.core.config import EvaluateConfig
from dcgan.core.errors import UserError
from dcgan.core.outputs import file_md5, rounded
from dcgan.evaluation import neighbours
from dcgan.evaluation.classifier import build_classifier
from dcgan.evaluation.evaluate import blurred, evaluate, evaluate_generator, pixel_shuffled
from dcgan.nets.serialisation import save_model
from dcgan.processed.imagestore import ImageArray, NpyWriter, open_dataset, scale
from dcgan.tracking.runlog import flatten_metrics

METRICS = {"frechet_distance", "kid", "kid_std", "precision", "recall", "memorisation_ratio",
           "classifier_score", "modes_covered", "mode_kl"}
ROWS = ("floor", "ceiling_blur", "ceiling_shuffle")
CFG = EvaluateConfig(batch_size=16, kid_subsets=5, kid_subset_size=20)


@pytest.fixture(scope="module")
def classifier() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_classifier((8, 8, 1), 3, 6)


def _images(n: int, seed: int, shape: tuple[int, ...] = (8, 8, 1)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, *shape)).astype(np.float32)


def _pixels(n: int, seed: int, shape: tuple[int, ...] = (8, 8, 1)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def write_dataset(root: Path, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                  test_y: np.ndarray) -> Path:
    """A processed dataset directory in preprocess's layout: uint8 images, int64 labels, and
    no validation image (`preprocess.val_size: 0`)."""
    root.mkdir(parents=True, exist_ok=True)
    for split, x, y in (("train", train_x, train_y), ("val", train_x[:0], train_y[:0]),
                        ("test", test_x, test_y)):
        writer = NpyWriter(root / f"{split}_x.npy", x.shape[1:])
        writer.append(x)
        writer.close()
        np.save(root / f"{split}_y.npy", np.asarray(y, np.int64))
    return root


def test_rejects_shape_mismatch(classifier):
    real = _images(20, 0)
    with pytest.raises(UserError, match=r"generator output shape \(8, 8, 3\) does not match"):
        evaluate_generator(classifier, _images(20, 1, (8, 8, 3)), real, real, CFG)


def test_rejects_classifier_for_other_images(classifier):
    real = _images(20, 0, (16, 16, 1))
    with pytest.raises(UserError, match="retrain the classifier"):
        evaluate_generator(classifier, real, real, real, CFG)


def test_rejects_too_few_images(classifier):
    with pytest.raises(UserError, match="at least 4 images .* got 3"):
        evaluate_generator(classifier, _images(3, 1), _images(20, 0), _images(20, 2), CFG)


def test_rows_keys_and_common_n(classifier):
    samples, train, test = _images(30, 2) * 0.5, _images(50, 0), _images(40, 1)
    result = evaluate_generator(classifier, samples, train, test, CFG)
    assert set(result) == METRICS | {"frechet_samples", *ROWS}
    assert result["frechet_samples"] == 30
    for row in ROWS:
        assert set(result[row]) == METRICS, row
    assert 1 <= result["modes_covered"] <= 3
    # The shrunken samples are further from the test set than real training images are.
    assert result["frechet_distance"] > result["floor"]["frechet_distance"]
    assert result == evaluate_generator(classifier, samples, train, test, CFG)  # seeded


def test_samples_equal_to_the_reference_score_perfectly(classifier):
    train, test = _images(60, 0), _images(40, 1)
    result = evaluate_generator(classifier, test.copy(), train, test, CFG)
    assert result["frechet_distance"] == pytest.approx(0.0, abs=1e-6)
    assert result["precision"] == result["recall"] == 1.0
    assert result["mode_kl"] == pytest.approx(0.0, abs=1e-12)
    # Samples that are the test images are exactly as far from train as the test images.
    assert result["memorisation_ratio"] == pytest.approx(1.0)


def test_floor_excludes_each_training_image_from_its_own_neighbours(classifier):
    train, test = _images(60, 0), _images(40, 1)
    floor = evaluate_generator(classifier, _images(40, 5), train, test, CFG)["floor"]
    # Without leave-one-out every floor image would find itself: a ratio of exactly 0.
    assert 0.5 < floor["memorisation_ratio"] < 2.0
    copies = evaluate_generator(classifier, train[:40].copy(), train, test, CFG)
    assert copies["memorisation_ratio"] == 0.0  # generated samples that copy train images


def test_unlabelled_data_has_no_class_metrics(classifier):
    result = evaluate_generator(classifier, _images(30, 2), _images(50, 0), _images(40, 1), CFG,
                                labelled=False)
    for row in (result, *(result[r] for r in ROWS)):
        assert row["classifier_score"] is row["modes_covered"] is row["mode_kl"] is None
        assert np.isfinite(row["kid"])


def test_blur_ceiling_smooths_and_keeps_the_mean():
    images = _images(4, 3, (16, 16, 2))
    out = blurred(images)
    assert out.shape == images.shape and out.dtype == np.float32
    assert np.abs(np.diff(out, axis=1)).mean() < 0.5 * np.abs(np.diff(images, axis=1)).mean()
    np.testing.assert_allclose(out.mean(axis=(1, 2)), images.mean(axis=(1, 2)), atol=0.05)


def test_shuffle_ceiling_permutes_pixels_per_image():
    images = _images(3, 4, (8, 8, 3))
    out = pixel_shuffled(images, np.random.default_rng(0))
    assert not np.array_equal(out, images)
    for a, b in zip(images, out, strict=True):
        # Same pixels (RGB triples kept together), different places.
        assert sorted(map(tuple, a.reshape(-1, 3))) == sorted(map(tuple, b.reshape(-1, 3)))
    again = pixel_shuffled(images, np.random.default_rng(0))
    np.testing.assert_array_equal(out, again)


# ---------------------------------------------------------------- the dataset on disk


def test_disk_and_memory_give_the_same_metrics(classifier, tmp_path, monkeypatch):
    train, test = _pixels(60, 0), _pixels(45, 1)
    labels = np.random.default_rng(0).integers(0, 3, 105)
    data = open_dataset(write_dataset(tmp_path / "dataset", train, labels[:60], test,
                                      labels[60:]))
    samples = _images(50, 2) * 0.7
    samples[:5] = scale(train[10:15])  # a few copies, so the copy check has work
    in_memory = evaluate_generator(classifier, samples, scale(train), scale(test), CFG)
    assert evaluate_generator(classifier, samples, data.train_x, data.test_x, CFG) == in_memory
    # The copy check's database read in blocks of 7 rows, not one: the same numbers.
    monkeypatch.setattr(neighbours, "DATABASE_ELEMENTS", 7 * 64)
    assert evaluate_generator(classifier, samples, data.train_x, data.test_x, CFG) == in_memory


def test_memory_does_not_grow_with_the_training_set(tmp_path, monkeypatch):
    keras.utils.set_random_seed(0)
    model = build_classifier((16, 16, 1), 3, 6)
    big = 20_000  # as float32 20 MB, float64 41 MB; 5 MB of bytes on disk
    data = open_dataset(write_dataset(tmp_path / "dataset", _pixels(big, 0, (16, 16, 1)),
                                      np.arange(big) % 3, _pixels(30, 1, (16, 16, 1)),
                                      np.arange(30) % 3))
    block = 1000
    monkeypatch.setattr(neighbours, "DATABASE_ELEMENTS", block * 16 * 16)
    reads: list[tuple[str, int]] = []
    pixels = ImageArray.pixels

    def spy(self: ImageArray, index: np.ndarray | slice) -> np.ndarray:
        out = pixels(self, index)
        reads.append((self.path.name, len(out)))
        return out

    monkeypatch.setattr(ImageArray, "pixels", spy)
    samples = _images(40, 2, (16, 16, 1))
    tracemalloc.start()
    try:
        result = evaluate_generator(model, samples, data.train_x, data.test_x, CFG)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    n = result["frechet_samples"]
    train_reads = [rows for name, rows in reads if name == "train_x.npy"]
    assert n == 30 and max(train_reads) == block
    # The N picked rows, then every row once (one pass for all five sets).
    assert sum(train_reads) == big + n
    # One block's arrays (about 5 MB here) and the N-image sets, never the whole set.
    assert peak < 10e6, f"peak {peak / 1e6:.1f} MB: a whole-train array (20 MB) was built"


# ---------------------------------------------------------------- the stage end to end


@pytest.fixture
def stage_files(tmp_path: Path, classifier, monkeypatch: pytest.MonkeyPatch):
    for name in ("MLFLOW_EXPERIMENT_NAME", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    rng = np.random.default_rng(0)
    data_file = write_dataset(tmp_path / "dataset", _pixels(50, 0), rng.integers(0, 3, 50),
                              _pixels(30, 1), rng.integers(0, 3, 30))
    samples = tmp_path / "samples.npy"
    np.save(samples, _images(40, 2) * 0.7)
    save_model(classifier, tmp_path / "classifier.keras")
    return {"data_file": data_file, "samples_file": samples,
            "classifier_path": tmp_path / "classifier.keras",
            "metrics_file": tmp_path / "out" / "metrics.json"}


def test_stage_writes_json_with_floats_rounded(stage_files):
    files = stage_files
    result = evaluate(CFG, **files)
    written = json.loads(files["metrics_file"].read_text())
    assert written == json.loads(json.dumps(rounded(result)))
    assert written["frechet_samples"] == 30
    assert 0 <= written["classifier_accuracy"] <= 1
    assert written["floor"]["frechet_distance"] == pytest.approx(
        result["floor"]["frechet_distance"], rel=1e-5)
    assert all(v == float(f"{v:.6g}") for v in flatten_metrics(written).values())
    assert any(v != float(f"{v:.5g}") for v in flatten_metrics(written).values())


def test_metrics_carry_their_protocol_and_the_kept_generator(stage_files, tmp_path: Path):
    files = stage_files
    selection = tmp_path / "selection.json"
    selection.write_text(json.dumps({"generator": "ema", "kept": "best", "epoch": 35,
                                     "frechet_distance": 9.5, "stopped_early": None,
                                     "last_epoch": 40}))
    written = evaluate(CFG, **files, selection_file=selection)
    assert written["protocol"] == {"classifier_md5": file_md5(files["classifier_path"]),
                                   "n": 30, "reference": "test", "seed": CFG.seed}
    assert written["kept"] == {"generator": "ema", "kept": "best", "epoch": 35,
                               "frechet_distance": 9.5, "stopped_early": None}
    selection.write_text("{not json")
    with pytest.raises(UserError, match="selection.json: cannot read it .*dvc repro train"):
        evaluate(CFG, **files, selection_file=selection)


def test_stage_error_leaves_no_json(stage_files):
    files = stage_files
    np.save(files["samples_file"], _images(40, 2, (8, 8, 3)))
    with pytest.raises(UserError, match=r"samples.npy: samples of shape \(8, 8, 3\) do not match "
                       r"the data's \(8, 8, 1\)"):
        evaluate(CFG, **files)
    assert not files["metrics_file"].parent.exists()
