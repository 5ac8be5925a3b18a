"""Optional true FID and Inception score, in the official Keras ImageNet InceptionV3.

Off by default: no pip package ships InceptionV3 weights, so the pipeline's own
metrics (`dcgan.evaluation.metrics`) live in a classifier trained here. A user who has the
official weights file, or internet, sets `evaluate.inception` to the file's path
or to "download"; `dcgan.evaluation.evaluate` then calls

    model, verified = load_inception(cfg.inception)
    inception_metrics(model, verified, samples, real, batch_size)

Only the official file (md5 below, as Keras checks it) gives numbers named `fid`
and `inception_score`; other InceptionV3 weights give `*_unverified` keys, which
must not be compared with published FID/IS.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from pathlib import Path

import keras
import numpy as np

from dcgan.core.download import download
from dcgan.core.errors import UserError
from dcgan.core.outputs import file_md5
from dcgan.evaluation.metrics import classifier_score, frechet_distance_of

log = logging.getLogger(__name__)

# As in keras/src/applications/inception_v3.py (include_top=True, 1000 ImageNet classes).
WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/"
    "inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels.h5"
)
WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels.h5"
WEIGHTS_MD5 = "9a0d58056eeedaa3f26cb7ebd46da564"
INPUT_SIZE = 299  # InceptionV3's native resolution; FID is defined at it
POOL_LAYER = "avg_pool"  # the 2048-d global average pool before the classifier
_FIX = "set evaluate.inception to a local weights file, or null"


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _download(origin: str) -> Path:
    """The official weights in the Keras cache ($KERAS_HOME or ~/.keras, under models/).

    Raises:
        UserError: the download failed or its md5 is not the official one (file removed).
    """
    # Read KERAS_HOME now rather than at `import keras`, and create the directory:
    # get_file silently falls back to /tmp/.keras when it is missing.
    cache_dir = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    return download(origin, WEIGHTS_MD5, cache_dir, "models", owner="evaluate.inception",
                    fix=f"check your network, or {_FIX}", hash_name="the official md5",
                    fname=WEIGHTS_FILE,
                    mismatch_fix=f"It is not the official file; {_FIX}")


def load_inception(spec: str, origin: str = WEIGHTS_URL) -> tuple[keras.Model, bool]:
    """InceptionV3 (include_top, 1000-way softmax) with the weights `spec` names.

    Args:
        spec: "download" (fetch the official file from `origin` into the Keras cache),
            or the path of a weights file: the official legacy `.h5`, or a Keras 3
            `.weights.h5` saved from `keras.applications.InceptionV3`.
        origin: where "download" fetches from (a mirror of the official file).

    Returns:
        (model, verified): verified is True only when the file's md5 is the official one.

    Raises:
        UserError: the download failed, or the file is missing or is not InceptionV3
            weights.
    """
    if spec == "download":
        path, verified = _download(origin), True  # get_file checked the md5
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UserError(f"evaluate.inception: {path} is not a file; {_FIX}")
        verified = file_md5(path) == WEIGHTS_MD5
    model = keras.applications.InceptionV3(weights=None)
    # A wrong file warns once per layer before it raises; the error alone says it all.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(path)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(
                f"evaluate.inception: {path} does not load as InceptionV3 weights "
                f"({_first_line(err)}); give the official .h5 or a Keras 3 .weights.h5 "
                f"file, or set evaluate.inception to null"
            ) from None
    for warning in caught:
        log.warning("loading %s: %s", path, warning.message)
    return model, verified


@functools.lru_cache(maxsize=4)
def _extractor(model: keras.Model, channels: int) -> keras.Model:
    """Images in [-1, 1] of any size -> (pool features, probabilities), in one graph.

    Cached so that repeated calls reuse one traced predict function (tracing
    InceptionV3 takes seconds); this keeps the last few models alive.
    """
    images = keras.Input((None, None, channels))  # (B, H, W, C)
    x = images if channels == 3 else keras.ops.repeat(images, 3, axis=-1)  # (B, H, W, 3)
    # Inside the graph, so each batch is resized on its own: the resized set never exists.
    x = keras.layers.Resizing(INPUT_SIZE, INPUT_SIZE, interpolation="bilinear")(x)
    trunk = keras.Model(model.inputs, [model.get_layer(POOL_LAYER).output, model.outputs[0]])
    return keras.Model(images, trunk(x))  # (B, 2048), (B, 1000)


def inception_outputs(
    model: keras.Model, images: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pool features and class probabilities of images, from one forward pass.

    Args:
        model: an InceptionV3 from `load_inception`.
        images: float32 (N, H, W, C) in [-1, 1] (InceptionV3's own input scale), C 1 or
            3, any H and W; grey is tiled to RGB, then resized bilinearly to 299x299.
        batch_size: images per forward pass.

    Returns:
        (features, probs): (N, 2048) float64 "avg_pool" features and the (N, 1000)
        float64 softmax probabilities.

    Raises:
        ValueError: if images is not (N, H, W, 1 or 3), or not in [-1, 1].
    """
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"need (N, H, W, 1 or 3) images, got shape {images.shape}")
    # 0..255 or 0..1 pixels would run fine and give meaningless numbers.
    low, high = float(images.min()), float(images.max())
    if low < -1.001 or high > 1.001:
        raise ValueError(f"need images in [-1, 1], got values in [{low:g}, {high:g}]")
    features, probs = _extractor(model, images.shape[-1]).predict(
        np.asarray(images, np.float32), batch_size=batch_size, verbose=0
    )
    return features.astype(np.float64), probs.astype(np.float64)


def inception_metrics(
    model: keras.Model, verified: bool, samples: np.ndarray, real: np.ndarray,
    batch_size: int, splits: int = 10,
) -> dict:
    """FID of samples against real images, and the Inception score of the samples.

    Args:
        model, verified: from `load_inception`.
        samples, real: image sets as `inception_outputs` takes them; FID depends on
            their sizes, so compare values only at equal N.
        batch_size: images per forward pass.
        splits: splits of the Inception score (10 is customary).

    Returns:
        {"fid", "inception_score", "inception_score_std"} when verified; otherwise the
        same numbers as {"inception_fd_unverified", "inception_score_unverified",
        "inception_score_std_unverified"}, with a logged warning.
    """
    sample_features, sample_probs = inception_outputs(model, samples, batch_size)
    real_features, _ = inception_outputs(model, real, batch_size)
    fd = frechet_distance_of(sample_features, real_features)
    score, score_std = classifier_score(sample_probs, splits)
    if verified:
        return {"fid": fd, "inception_score": score, "inception_score_std": score_std}
    log.warning("evaluate.inception: these weights are not the official ImageNet InceptionV3 "
                "(md5 is not %s), so the numbers are not FID/IS and must not be compared "
                "with published ones", WEIGHTS_MD5)
    return {"inception_fd_unverified": fd, "inception_score_unverified": score,
            "inception_score_std_unverified": score_std}
