"""Input pipelines over the processed dataset: tf.data batches read from disk, and
batch-wise forward passes for the metrics.

Training (`training.train`) and the evaluation classifier (`evaluation.classifier`) fit on
`SeededBatches`; the metrics (`evaluation.evaluate`, `evaluation.probe`, the quality
monitor) run models over images with `predict_rows`. Both read only the rows of a batch
from the dataset's `ImageArray`, so memory depends on the batch size, never on the number
of images.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from dcgan.core.errors import UserError
from dcgan.processed.imagestore import ImageArray

# Rows read from disk per forward pass in `predict_rows`.
READ_ROWS = 1024


def scale(pixels: tf.Tensor) -> tf.Tensor:
    """uint8 to float32 in [-1, 1]: bitwise `imagestore.scale`, in the graph."""
    return tf.cast(pixels, tf.float32) / 127.5 - 1.0


def _reader(images: ImageArray | np.ndarray) -> Callable[[tf.Tensor], tf.Tensor]:
    """A function from row indices (B,) to float32 images (B, H, W, C) in [-1, 1]."""
    if isinstance(images, np.ndarray):  # in memory (benchmarks, tests): uint8, or scaled
        pixels = tf.constant(images)
        if images.dtype == np.uint8:
            return lambda rows: scale(tf.gather(pixels, rows))
        return lambda rows: tf.cast(tf.gather(pixels, rows), tf.float32)

    def read(rows: tf.Tensor) -> tf.Tensor:
        # stateful=False: a pure read, so tf.data may read batches in parallel.
        batch = tf.numpy_function(images.pixels, [rows], tf.uint8, stateful=False)
        # The batch size too, where it is static (drop_remainder), as for a gather from
        # memory: traced with an unknown batch dimension, the train step ran 5-8% slower.
        return scale(tf.ensure_shape(batch, (rows.shape[0], *images.image_shape)))

    return read


class SeededBatches(keras.callbacks.Callback):
    """Shuffled batches of images (and labels), as `self.dataset`, in an order that is a
    pure function of (seed, epoch); fit it with `steps_per_epoch=self.steps`.

    `shuffle(reshuffle_each_iteration=True)` would restart its sequence in a resumed
    process, replaying epoch 1's order; a stateless permutation of the epoch number
    (`index_shuffle`) gives the resumed epoch the batches it would have had. Use it
    as a callback of the same `fit()`: it sets the epoch the dataset starts at.

    The dataset never ends: batch k of a `fit()` is batch k % steps of epoch
    first + k // steps, where `first` is the fit's first epoch (a resumed one's is the
    checkpoint's). So fit() keeps one iterator over all its epochs. A dataset of one epoch
    made fit() drop its iterator and open a new one at every epoch's end; on 64 px images
    read from disk that paused the next epoch by up to 10 s.

    Args:
        images: the processed images on disk (`ImageArray`: each batch's rows are read
            with pread), or in memory: uint8 pixels, scaled to [-1, 1] here, or floats.
        batch_size: images per batch.
        seed: seed of the order.
        rows: which rows to use (default all), e.g. the labelled ones.
        labels: (len(rows),) labels to pair with the images, or None for images alone.
        drop_remainder: full batches only (training: a tiny last batch would skew
            batch-norm statistics; each epoch leaves out a different remainder).

    Raises:
        UserError: if there are fewer images than one batch.
    """

    def __init__(self, images: ImageArray | np.ndarray, batch_size: int, seed: int,
                 rows: np.ndarray | None = None, labels: np.ndarray | None = None,
                 drop_remainder: bool = True):
        super().__init__()
        n = len(images) if rows is None else len(rows)
        if n < batch_size and drop_remainder:
            raise UserError(f"train.batch_size = {batch_size} exceeds the {n} training images; "
                            "lower train.batch_size or use more data")
        self.steps = n // batch_size if drop_remainder else -(-n // batch_size)
        self.first = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._first_pending = True
        read = _reader(images)
        table = None if rows is None else tf.constant(rows, tf.int64)
        targets = None if labels is None else tf.constant(labels)
        steps = tf.constant(self.steps, tf.int64)

        def gather(k: tf.Tensor) -> tf.Tensor | tuple[tf.Tensor, tf.Tensor]:
            start = (k % steps) * batch_size
            # drop_remainder: a static batch size, as `batch(drop_remainder=True)` gives.
            positions = (start + tf.range(batch_size, dtype=tf.int64) if drop_remainder
                         else tf.range(start, tf.minimum(start + batch_size, n)))
            seed_pair = tf.stack([tf.constant(seed, tf.int64), self.first + k // steps])
            picked = tf.random.experimental.index_shuffle(positions, seed=seed_pair,
                                                          max_index=n - 1)
            x = read(picked if table is None else tf.gather(table, picked))
            return x if targets is None else (x, tf.gather(targets, picked))

        # Under tf.distribute, fit() splits each batch over the replicas; with several
        # workers, each takes its part of every batch (sharding by data: the source is a
        # counter, not files).
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA)
        self.dataset = (tf.data.Dataset.counter()
                        .map(gather, num_parallel_calls=tf.data.AUTOTUNE)
                        .prefetch(tf.data.AUTOTUNE).with_options(options))

    def epoch(self, epoch: int) -> tf.data.Dataset:
        """The batches of one epoch, as a finite dataset (outside `fit()`)."""
        self.first.assign(epoch)
        return self.dataset.take(self.steps)

    def on_train_begin(self, logs: dict | None = None) -> None:
        # The stream never ends, so fit() without steps_per_epoch would not either.
        if (self.params or {}).get("steps") is None:
            raise ValueError("fit() got SeededBatches.dataset without steps_per_epoch; pass "
                             "steps_per_epoch=batches.steps")
        self._first_pending = True

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        # Once per fit(), before it opens its iterator: the dataset reads the variable
        # in its own threads, so it must not change while the iterator runs.
        if self._first_pending:
            self.first.assign(epoch)
            self._first_pending = False


def images_at(images: ImageArray | np.ndarray, rows: np.ndarray | slice) -> np.ndarray:
    """float32 images in [-1, 1] at `rows`, from disk or from an array already scaled."""
    return images[rows] if isinstance(images, ImageArray) else np.asarray(images[rows],
                                                                           np.float32)


def predict_rows(fn: Callable[[np.ndarray], np.ndarray | list[np.ndarray]],
                 images: ImageArray | np.ndarray, rows: np.ndarray | None = None,
                 batch_size: int = 256) -> np.ndarray | list[np.ndarray]:
    """`fn` over the images at `rows` (default all), READ_ROWS read at a time and
    `batch_size` per call; the outputs concatenated in row order (a list of arrays when
    `fn` returns several). Memory: one read block plus the outputs."""
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    outs: list = []
    for start in range(0, len(rows), READ_ROWS):
        block = images_at(images, rows[start:start + READ_ROWS])
        for i in range(0, len(block), batch_size):
            out = fn(block[i:i + batch_size])
            outs.append([np.asarray(o) for o in out] if isinstance(out, list | tuple)
                        else [np.asarray(out)])
    if not outs:
        raise ValueError("predict_rows: no rows")
    joined = [np.concatenate(parts) for parts in zip(*outs, strict=True)]
    return joined if len(joined) > 1 else joined[0]

