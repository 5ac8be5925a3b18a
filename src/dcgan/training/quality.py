"""Quality over training: the Fréchet distance of a fixed sample, in the evaluation
classifier's features, which the per-epoch commit measures every `train.eval_every` epochs."""

from __future__ import annotations

import keras
import numpy as np

from dcgan.dataset.imagestore import ImageArray
from dcgan.evaluation.metrics import frechet_distance, gaussian_stats

# Images in the quality-over-training Fréchet distance: the evaluate stage's default N,
# so the last point compares with the evaluate stage's number (FD depends on N).
QUALITY_SAMPLES = 1000


class FixedSampleFD:
    """The Fréchet distance between a generator's samples from one fixed noise batch and
    real test images, in the evaluation classifier's features.

    Of `real_test` (the dataset's `ImageArray`, or float32 images), only the
    QUALITY_SAMPLES rows picked are read, once.
    """

    def __init__(self, features: keras.Model, real_test: ImageArray | np.ndarray,
                 latent_dim: int, seed: int, batch_size: int = 256):
        self.features, self.batch_size = features, batch_size
        rng = np.random.default_rng([seed, 1])  # a stream apart from the grid's noise
        self.n = n = min(QUALITY_SAMPLES, len(real_test))
        real = real_test[np.sort(rng.choice(len(real_test), size=n, replace=False))]
        self.real_stats = gaussian_stats(self._forward(self.features, real))
        self.noise = rng.standard_normal((n, latent_dim)).astype(np.float32)

    def _forward(self, model: keras.Model, x: np.ndarray) -> np.ndarray:
        # Direct calls, not predict(): inside fit(), predict's tf.data graph makes TF log a
        # spurious "E0000 ... node_def_util" line at every evaluation.
        return np.concatenate([np.asarray(model(x[i:i + self.batch_size], training=False))
                               for i in range(0, len(x), self.batch_size)])

    def __call__(self, generator: keras.Model) -> float:
        images = self._forward(generator, self.noise)
        return frechet_distance(*gaussian_stats(self._forward(self.features, images)),
                                *self.real_stats)
