"""Pictures from any generator: a numbered grid, latent walks, and the paper's latent
arithmetic (Radford et al. 2015, section 6.3 and figure 7).

Everything starts from the same grid of z vectors, `latents(n, seed)`: the grid `dcgan
sample MODEL --n 64 --seed 0 --numbered` draws. Its cell numbers (0 at the top left, row
by row) are what `--interpolate A,B` and `--arithmetic "A,B,C - D,E,F + G,H,I"` refer to,
so a user looks at the grid, picks cells, and reruns with the same --n and --seed.
"""

from __future__ import annotations

import math
import re

import keras
import numpy as np
from PIL import Image, ImageDraw

from dcgan.core.errors import UserError
from dcgan.sampling.generate import slerp
from dcgan.sampling.images import image_grid

# The paper adds uniform noise of +-0.25 to the result vector to show its neighbourhood.
ARITHMETIC_NOISE = 0.25
ARITHMETIC_VARIANTS = 8  # the result and 7 noisy neighbours


def latents(n: int, latent_dim: int, seed: int) -> np.ndarray:
    """The grid's z vectors: (n, latent_dim) standard normal float32 from `seed`."""
    return np.random.default_rng(seed).standard_normal((n, latent_dim)).astype(np.float32)


def images_of(generator: keras.Model, z: np.ndarray) -> np.ndarray:
    """G(z) as float32 in [-1, 1], in batches."""
    return generator.predict(z, batch_size=256, verbose=0).astype(np.float32)


def grid(images: np.ndarray, numbered: bool) -> Image.Image:
    """The images in a near-square grid (blank cells fill the last row), with each cell's
    number in its corner when `numbered`."""
    return picture(images, math.ceil(math.sqrt(len(images))), numbered)


def picture(images: np.ndarray, rows: int, numbered: bool = False) -> Image.Image:
    """The images in `rows` rows (blank white cells fill the last), enlarged to about
    512 px wide, numbered 0, 1, ... row by row when `numbered`."""
    cols = math.ceil(len(images) / rows)
    blank = np.ones((rows * cols - len(images), *images.shape[1:]), np.float32)  # white
    tiled = image_grid(np.concatenate([images, blank]), rows)
    scale = max(1, 512 // (images.shape[2] * cols))
    tiled = tiled.convert("RGB").resize((tiled.width * scale, tiled.height * scale),
                                        Image.NEAREST)
    if numbered:
        draw, step = ImageDraw.Draw(tiled), (images.shape[1] + 2) * scale
        for i in range(len(images)):
            r, c = divmod(i, cols)
            x, y = 2 * scale + c * step, 2 * scale + r * step
            draw.rectangle((x, y, x + 7 * len(str(i)), y + 11), fill=(255, 255, 255))
            draw.text((x + 1, y), str(i), fill=(220, 0, 0))
    return tiled


def walks(generator: keras.Model, z: np.ndarray, pair: tuple[int, int] | None, steps: int,
          seed: int) -> np.ndarray:
    """Latent walks by spherical interpolation: one row from cell A to cell B of the grid
    when `pair` is given, else 8 rows between random z (seeded, as the generate stage's).

    Returns:
        (rows * steps, H, W, C) images, row by row.
    """
    t = np.linspace(0.0, 1.0, steps)
    if pair is not None:
        a, b = (cell(i, len(z)) for i in pair)
        ends = [(z[a], z[b])]
    else:
        rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
        ends = list(rng.standard_normal((8, 2, z.shape[1])))
    path = np.concatenate([slerp(a, b, t) for a, b in ends]).astype(np.float32)
    return images_of(generator, path)


def parse_arithmetic(expression: str, n: int) -> list[tuple[int, list[int]]]:
    """`"3,17,22 - 5,9,40 + 11,12,60"` as [(+1, [3, 17, 22]), (-1, [5, 9, 40]), (+1, ...)].

    Raises:
        UserError: on a malformed expression or a cell outside the grid of `n`.
    """
    parts = re.split(r"\s*([+-])\s*", " + " + expression.strip())
    terms = []
    for sign, group in zip(parts[1::2], parts[2::2], strict=True):
        if not re.fullmatch(r"\d+(\s*,\s*\d+)*", group):
            raise UserError(f"--arithmetic {expression!r}: {group!r} is not a list of grid "
                            "cells; write e.g. \"3,17,22 - 5,9,40 + 11,12,60\" (cells of the "
                            "--numbered grid)")
        terms.append((1 if sign == "+" else -1, [cell(int(i), n) for i in group.split(",")]))
    return terms


def arithmetic(generator: keras.Model, z: np.ndarray, terms: list[tuple[int, list[int]]],
               seed: int) -> np.ndarray:
    """The paper's vector arithmetic on mean z vectors (figure 7).

    Each term's z is the mean of its cells' z; the result is their signed sum.

    Returns:
        Two rows of images: the terms' mean images (blank cells after them), then the
        result and ARITHMETIC_VARIANTS - 1 neighbours with uniform noise of
        +-ARITHMETIC_NOISE added to its z.
    """
    means = np.stack([z[cells].mean(axis=0) for _, cells in terms])
    result = sum(sign * m for (sign, _), m in zip(terms, means, strict=True))
    noise = np.random.default_rng(seed).uniform(
        -ARITHMETIC_NOISE, ARITHMETIC_NOISE, (ARITHMETIC_VARIANTS - 1, z.shape[1]))
    cols = max(ARITHMETIC_VARIANTS, len(terms))
    top = images_of(generator, means)
    bottom = images_of(generator, np.concatenate([result[None], result + noise]).astype(np.float32))
    return np.concatenate([_fill(top, cols), _fill(bottom, cols)])


def describe(terms: list[tuple[int, list[int]]]) -> str:
    """`mean(3,17,22) - mean(5,9,40) + mean(11,12,60)`."""
    text = " ".join(f"{'+' if sign > 0 else '-'} mean({','.join(map(str, cells))})"
                    for sign, cells in terms)
    return text.removeprefix("+ ")


def _fill(images: np.ndarray, cols: int) -> np.ndarray:
    """`images` followed by blank (white) cells up to `cols`."""
    return np.concatenate([images, np.ones((cols - len(images), *images.shape[1:]), np.float32)])


def cell(i: int, n: int) -> int:
    if not 0 <= i < n:
        raise UserError(f"cell {i} is not in the grid of {n} samples (cells 0 to {n - 1}); "
                        "pick cells from the --numbered grid of the same --n and --seed")
    return i
