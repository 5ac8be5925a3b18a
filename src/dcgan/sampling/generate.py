"""The generate stage: sample arrays, a sample grid and latent walks from a saved generator.

`generate()` loads `generator.keras` on its own; the pictures are drawn by
sampling.images, which the train stage uses too (a grid every epoch, a GIF at the end).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from dcgan.core.config import GenerateConfig
from dcgan.core.outputs import atomic_path
from dcgan.nets.serialisation import load_model
from dcgan.sampling.images import image_grid, save_image


def slerp(z0: np.ndarray, z1: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation between latent vectors, which keeps the walk at the
    norm Gaussian noise has (White 2016, "Sampling Generative Networks").

    Args:
        z0, z1: (D,) endpoints; t: (T,) positions in [0, 1].

    Returns:
        (T, D) points from z0 (t=0) to z1 (t=1).
    """
    cos = np.dot(z0, z1) / (np.linalg.norm(z0) * np.linalg.norm(z1))
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    t = t[:, None]
    if omega < 1e-6:  # parallel: fall back to a straight line
        return (1 - t) * z0 + t * z1
    return (np.sin((1 - t) * omega) * z0 + np.sin(t * omega) * z1) / np.sin(omega)


def load_generator_file(path: Path) -> keras.Model:
    """Load a saved generator.

    Raises:
        UserError: if the file is missing or is not a Keras model.
    """
    return load_model(path, remedy="run the train stage first (dvc repro train)")


def draw_samples(generator: keras.Model, num_samples: int,
                 rng: np.random.Generator) -> np.ndarray:
    """`num_samples` images from noise z ~ N(0, I) drawn from `rng`: the generate stage's
    samples (and what `python -m benchmarks generate` times).

    Returns:
        (num_samples, H, W, C) float32 in [-1, 1].
    """
    z = rng.standard_normal((num_samples, generator.input_shape[-1])).astype(np.float32)
    # In batches, so a large num_samples stays within memory.
    return generator.predict(z, batch_size=256, verbose=0).astype(np.float32)


def generate(cfg: GenerateConfig, generator_path: Path, out_dir: Path) -> dict:
    """Write samples, a sample grid and a latent-interpolation grid from a saved generator.

    Writes `samples.npy` (N, H, W, C) float32 in [-1, 1], `grid.png` and
    `interpolation.png` (grid_rows walks of interp_steps images) in `out_dir` (the sync
    step copies the two pictures to the generator's MLflow run).

    Returns:
        A summary: number of samples and their shape.

    Raises:
        UserError: if the generator cannot be loaded.
    """
    return _write_samples(load_generator_file(generator_path), cfg, out_dir)


def _write_samples(generator: keras.Model, cfg: GenerateConfig, out_dir: Path) -> dict:
    latent_dim = generator.input_shape[-1]
    # One independent stream each, so the grid and the walks do not change with num_samples.
    rng, grid_rng, walk_rng = map(np.random.default_rng, np.random.SeedSequence(cfg.seed).spawn(3))
    # 1. Samples.
    samples = draw_samples(generator, cfg.num_samples, rng)
    # 2. Grid.
    z_grid = grid_rng.standard_normal((cfg.grid_rows**2, latent_dim)).astype(np.float32)
    grid = generator.predict(z_grid, verbose=0)
    # 3. Latent walks: each row goes from one random z to another.
    ends = walk_rng.standard_normal((cfg.grid_rows, 2, latent_dim))
    t = np.linspace(0.0, 1.0, cfg.interp_steps)
    walks = np.concatenate([slerp(a, b, t) for a, b in ends]).astype(np.float32)
    interp = generator.predict(walks, verbose=0)

    with atomic_path(out_dir / "samples.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, samples)
    scale = max(1, 512 // (grid.shape[1] * cfg.grid_rows))
    save_image(image_grid(grid, cfg.grid_rows), out_dir / "grid.png", scale)
    save_image(image_grid(interp, cfg.grid_rows), out_dir / "interpolation.png", scale)
    return {"num_samples": int(len(samples)), "shape": list(samples.shape[1:])}
