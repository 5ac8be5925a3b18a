"""Unit tests of dcgan.evaluation.inception: loading InceptionV3 weights, its outputs, FID/IS keys.

Run with `pytest tests/test_inception.py -q`. The official weights cannot be
downloaded here, so the code runs on a randomly initialised InceptionV3 saved to
disk; "download" goes to a real `http.http_server` on 127.0.0.1 and a Keras cache
($KERAS_HOME) in tmp_path. Nothing leaves the machine.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from dcgan.core.errors import UserError
from dcgan.core.outputs import file_md5
from dcgan.evaluation import inception

RNG = np.random.default_rng(0)
UNVERIFIED = {"inception_fd_unverified", "inception_score_unverified",
              "inception_score_std_unverified"}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A random InceptionV3 (built once: it takes seconds), saved in both formats, reloaded."""
    folder = tmp_path_factory.mktemp("weights")
    original = keras.applications.InceptionV3(weights=None)
    keras3 = folder / "random.weights.h5"
    original.save_weights(keras3)
    legacy = folder / "random.h5"  # the official file's layout: layer_names at the root
    with h5py.File(legacy, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, original)
    model, _ = inception.load_inception(str(keras3))
    return SimpleNamespace(original=original.get_weights(), keras3=keras3, legacy=legacy,
                           model=model)


@pytest.fixture
def keras_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The Keras cache for "download", in tmp_path: the user's ~/.keras stays untouched."""
    home = tmp_path / "keras"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


def _images(n: int, size: int = 8, channels: int = 1) -> np.ndarray:
    return RNG.uniform(-1, 1, (n, size, size, channels)).astype(np.float32)


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("fmt", ["keras3", "legacy"])
def test_load_weights_file_in_both_formats_is_unverified(weights, fmt):
    model, verified = inception.load_inception(str(getattr(weights, fmt)))
    assert not verified  # random weights: not the official md5
    loaded = model.get_weights()
    assert len(loaded) == len(weights.original)
    assert all(np.array_equal(a, b) for a, b in zip(loaded, weights.original, strict=True))
    assert model.output_shape == (None, 1000)


@pytest.mark.slow
def test_official_md5_makes_the_file_verified(weights, monkeypatch, caplog):
    monkeypatch.setattr(inception, "WEIGHTS_MD5", file_md5(weights.legacy))
    _, verified = inception.load_inception(str(weights.legacy))
    assert verified
    with caplog.at_level(logging.WARNING, logger="dcgan.evaluation.inception"):
        result = inception.inception_metrics(weights.model, verified, _images(6), _images(6),
                                             batch_size=6, splits=2)
    assert set(result) == {"fid", "inception_score", "inception_score_std"}
    assert all(math.isfinite(v) for v in result.values()) and result["fid"] > 0
    assert not caplog.records


@pytest.mark.parametrize("kind", ["missing", "random bytes", "other model"])
def test_bad_weights_file_is_a_one_line_user_error(tmp_path, kind, recwarn):
    path = tmp_path / ("w.weights.h5" if kind == "other model" else "w.h5")
    if kind == "random bytes":
        path.write_bytes(RNG.bytes(4096))
    elif kind == "other model":
        keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save_weights(path)
    with pytest.raises(UserError, match="evaluate.inception") as err:
        inception.load_inception(str(path))
    message = str(err.value)
    assert str(path) in message and "\n" not in message and "null" in message
    assert not [w for w in recwarn if "Skipping" in str(w.message)]  # one error, no spam


# ---------------------------------------------------------------- outputs and metrics


def test_outputs_shapes_probabilities_channels_and_batching(weights):
    grey = _images(6)
    features, probs = inception.inception_outputs(weights.model, grey, batch_size=6)
    assert features.shape == (6, 2048) and probs.shape == (6, 1000)
    assert features.dtype == probs.dtype == np.float64
    assert np.all(np.isfinite(features)) and np.all(probs >= 0)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert not np.allclose(features[0], features[1])  # different images, different features
    # batches of 4 + 2 give what one batch of 6 gives
    features4, probs4 = inception.inception_outputs(weights.model, grey, batch_size=4)
    assert np.allclose(features4, features, rtol=1e-4, atol=1e-5)
    assert np.allclose(probs4, probs, rtol=1e-4, atol=1e-6)
    # grey is tiled to RGB: the RGB copy of a grey image has the same outputs
    rgb_features, _ = inception.inception_outputs(weights.model, np.repeat(grey, 3, -1), 6)
    assert np.allclose(rgb_features, features, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("images, words", [
    (_images(2, channels=2), "1 or 3"), (_images(2)[0], "1 or 3"),
    (np.full((2, 8, 8, 3), 255.0, np.float32), r"\[-1, 1\], got values in \[255, 255\]"),
])
def test_outputs_reject_bad_images(weights, images, words):
    with pytest.raises(ValueError, match=words):
        inception.inception_outputs(weights.model, images, batch_size=2)


@pytest.mark.slow
def test_unverified_metrics_have_their_own_keys_and_a_warning(weights, caplog):
    # One Fréchet distance per test: in 2048 dimensions it takes seconds on 2 cores.
    samples = _images(6)
    with caplog.at_level(logging.WARNING, logger="dcgan.evaluation.inception"):
        result = inception.inception_metrics(weights.model, False, samples, samples,
                                             batch_size=6, splits=2)
    assert set(result) == UNVERIFIED and "fid" not in result
    assert all(math.isfinite(v) for v in result.values())
    assert 1.0 <= result["inception_score_unverified"] <= 1000.0
    assert any("not the official ImageNet InceptionV3" in r.getMessage() for r in caplog.records)
    # FD of a set with itself is ~0 on the scale of the set's spread (FD to its mean)
    features, _ = inception.inception_outputs(weights.model, samples, batch_size=6)
    spread = np.trace(np.cov(features, rowvar=False))
    assert spread > 0 and result["inception_fd_unverified"] < 1e-6 * spread


# ---------------------------------------------------------------- download


def test_download_verifies_caches_and_loads(weights, http_server, keras_home, monkeypatch):
    monkeypatch.setattr(inception, "WEIGHTS_MD5", file_md5(weights.legacy))
    (http_server.root / "w.h5").write_bytes(weights.legacy.read_bytes())
    model, verified = inception.load_inception("download", origin=http_server.url + "w.h5")
    assert verified and http_server.hits == ["/w.h5"]
    assert _files(keras_home) == [keras_home / "models" / inception.WEIGHTS_FILE]
    assert np.array_equal(model.get_weights()[-1], weights.original[-1])


def test_download_of_a_wrong_file_is_a_user_error_and_leaves_nothing(http_server, keras_home):
    (http_server.root / "w.h5").write_bytes(b"not the weights" * 100)
    with pytest.raises(UserError, match=r"does not match the official md5 9a0d5805.*null"):
        inception.load_inception("download", origin=http_server.url + "w.h5")
    assert http_server.hits == ["/w.h5"] and not _files(keras_home)


def test_download_from_a_closed_port_fails_fast(keras_home):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/w.h5"
    start = time.monotonic()
    with pytest.raises(UserError, match=r"could not download .*refused.*null") as err:
        inception.load_inception("download", origin=url)
    assert time.monotonic() - start < 10 and url in str(err.value)
    assert not _files(keras_home)
