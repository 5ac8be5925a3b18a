"""The evaluation classifier: a small CNN whose penultimate layer is the metric space.

No pip package ships Inception weights, so sample quality is measured in the
feature space of a classifier trained here on the real training split (TF-GAN's
"Fréchet classifier distance"; see `dcgan.evaluation.metrics`). The `classifier` DVC stage
calls `train_classifier` and saves the model as `.keras`; the `evaluate` stage
loads it with `keras.saving.load_model` (built-in layers only, so no custom
objects) and measures through `feature_extractor`.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from dcgan.core.config import ClassifierConfig
from dcgan.core.errors import UserError
from dcgan.core.seeding import seed_everything, set_precision
from dcgan.nets.serialisation import save_model
from dcgan.processed.batches import SeededBatches, predict_rows
from dcgan.processed.imagestore import ImageArray, open_dataset

FEATURES_LAYER = "features"
# Two 2x2 poolings must leave a spatial map of at least 2x2.
MIN_SIDE = 8
# From 32x32 up a third pooling keeps the flattened map (and the Dense after it) small.
THIRD_POOL_SIDE = 32
# Measured on 4000 MNIST images at batch 128: stride-1 convs with max pooling and
# Adam 2e-3 reach ~97% test accuracy in 5 epochs; stride-2 convs at 1e-3 reach ~93%.
LEARNING_RATE = 2e-3


def build_classifier(
    image_shape: tuple[int, int, int], num_classes: int, feature_dim: int
) -> keras.Model:
    """Build the (untrained) classifier: conv/max-pool blocks -> `features` -> logits.

    Args:
        image_shape: (height, width, channels) of the NHWC images, e.g. (28, 28, 1).
        num_classes: width of the logits layer.
        feature_dim: width of the penultimate ReLU layer named "features".

    Returns:
        A functional `keras.Model` from images in [-1, 1] to unnormalised logits.

    Raises:
        UserError: if the images are smaller than 8x8 or a width is below 1.
    """
    height, width, channels = image_shape
    if min(height, width) < MIN_SIDE:
        raise UserError(
            f"classifier needs images of at least {MIN_SIDE}x{MIN_SIDE}, got {height}x{width}"
        )
    if num_classes < 1 or feature_dim < 1 or channels < 1:
        raise UserError(
            f"classifier needs num_classes, feature_dim and channels >= 1, "
            f"got {num_classes}, {feature_dim}, {channels}"
        )
    conv = {"kernel_size": 3, "padding": "same", "activation": "relu"}
    inputs = keras.Input(shape=(height, width, channels), name="image")
    x = keras.layers.Conv2D(32, **conv)(inputs)
    x = keras.layers.MaxPooling2D()(x)  # (B, H/2, W/2, 32)
    x = keras.layers.Conv2D(64, **conv)(x)
    x = keras.layers.MaxPooling2D()(x)  # (B, H/4, W/4, 64)
    x = keras.layers.Conv2D(64, **conv)(x)
    if min(height, width) >= THIRD_POOL_SIDE:
        x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Conv2D(128, **conv)(x)  # (B, H/8, W/8, 128)
    # Flatten, not global pooling: where a stroke sits is what tells digits apart.
    x = keras.layers.Flatten()(x)
    features = keras.layers.Dense(feature_dim, activation="relu", name=FEATURES_LAYER)(x)
    x = keras.layers.Dropout(0.3)(features)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="eval_classifier")


def _labelled_rows(images: ImageArray | np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The rows whose label is not -1 (unlabelled)."""
    labels = np.asarray(labels).reshape(-1)
    if len(images) != len(labels):
        raise UserError(f"classifier got {len(images)} images but {len(labels)} labels")
    return np.flatnonzero(labels >= 0)


def train_classifier(train_x: ImageArray | np.ndarray, train_y: np.ndarray,
                     test_x: ImageArray | np.ndarray, test_y: np.ndarray,
                     cfg: ClassifierConfig) -> tuple[keras.Model, float | None]:
    """Train the evaluation classifier on the labelled real training images.

    Images labelled -1 are ignored. If no training image has a label (e.g. a
    folder of unlabelled images) there is nothing to classify: the result is a
    randomly initialised network of the same shape with `num_classes=1`, seeded by
    `cfg.seed`, and accuracy None; no image is read. Random convolutional features are a
    documented fallback metric space (weaker than trained ones, but fixed and
    reproducible), so distances measured through it compare only with each other.
    Batches are read from disk in a seeded order (`batches.SeededBatches`), so memory
    does not grow with the dataset.

    Args:
        train_x: training images: the dataset's `ImageArray`, or float32 NHWC in [-1, 1].
        train_y: their int labels, -1 meaning unlabelled.
        test_x: held-out images of the same shape.
        test_y: their labels, -1 meaning unlabelled.
        cfg: epochs, batch size, feature width and seed.

    Returns:
        (model, accuracy on the labelled test images), accuracy None when there are
        no labels to train on or to test against.

    Raises:
        UserError: if train and test image shapes differ or labels do not match images.
    """
    if tuple(train_x.shape[1:]) != tuple(test_x.shape[1:]):
        raise UserError(
            f"classifier train images {tuple(train_x.shape[1:])} and test images "
            f"{tuple(test_x.shape[1:])} differ in shape; re-run preprocess"
        )
    # Seeds Python, NumPy and TF, so weights and dropout repeat.
    seed_everything(cfg.seed)
    set_precision("float32")  # the metric network is float32 whatever train.precision says
    image_shape = tuple(train_x.shape[1:])
    rows, test_rows = _labelled_rows(train_x, train_y), _labelled_rows(test_x, test_y)
    if len(rows) == 0:
        return build_classifier(image_shape, 1, cfg.feature_dim), None

    y = np.asarray(train_y, np.int64)[rows]
    num_classes = int(max(y.max(), np.asarray(test_y)[test_rows].max(initial=0))) + 1
    model = _compiled(build_classifier(image_shape, num_classes, cfg.feature_dim))
    batches = SeededBatches(train_x, cfg.batch_size, cfg.seed, rows=rows, labels=y,
                            drop_remainder=False)
    model.fit(batches.dataset, epochs=cfg.epochs, steps_per_epoch=batches.steps,
              callbacks=[batches], shuffle=False, verbose=2)
    return model, accuracy(model, test_x, test_y, cfg.batch_size)


def _compiled(model: keras.Model) -> keras.Model:
    """`model` compiled for training on integer labels: Adam, cross-entropy on logits."""
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def accuracy(model: keras.Model, x: ImageArray | np.ndarray, y: np.ndarray,
             batch_size: int) -> float | None:
    """Share of the labelled images in `x` whose predicted class is their label, read
    from disk a block at a time.

    Returns:
        The accuracy, or None when no image is labelled.
    """
    rows = _labelled_rows(x, y)
    if len(rows) == 0:
        return None
    logits = predict_rows(model.predict_on_batch, x, rows, batch_size)
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(y)[rows]))


def fit_classifier(cfg: ClassifierConfig, data_file: Path, model_path: Path) -> dict:
    """The classifier stage: train on the processed data and save to `model_path`.

    Returns:
        {"classifier_accuracy": test accuracy, or None for unlabelled data}.

    Raises:
        UserError: if the processed data is missing or unusable.
    """
    data = open_dataset(data_file)
    model, acc = train_classifier(data.train_x, data.train_y, data.test_x, data.test_y, cfg)
    save_model(model, model_path)
    return {"classifier_accuracy": acc}


def feature_extractor(model: keras.Model) -> keras.Model:
    """A model from the classifier's input to its "features" layer (the metric space).

    Args:
        model: a model from `build_classifier`/`train_classifier`, or one loaded from `.keras`.

    Returns:
        A `keras.Model` mapping images to (B, feature_dim) float32 features.

    Raises:
        UserError: if the model has no layer named "features".
    """
    try:
        layer = model.get_layer(FEATURES_LAYER)
    except ValueError:
        raise UserError(
            f"model {model.name!r} has no {FEATURES_LAYER!r} layer; retrain the classifier"
        ) from None
    return keras.Model(model.input, layer.output, name="eval_features")
