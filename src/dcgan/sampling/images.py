"""Pictures of generated images: grids, PNGs and GIFs, written atomically.

Used by the train stage (a fixed-noise grid every epoch, a GIF at the end) and the
generate stage (the sample grid and the latent walks).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dcgan.core.outputs import atomic_path


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Map images in [-1, 1] to uint8 in [0, 255]."""
    return np.clip(np.rint((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, rows: int, pad: int = 2) -> Image.Image:
    """Tile (N, H, W, C) images in [-1, 1] into one picture, `rows` rows, padded in white.

    Args:
        images: N images; N must be a multiple of `rows`.
        rows: number of rows; columns = N // rows.
        pad: pixels between tiles.

    Returns:
        A PIL image, mode "L" for one channel and "RGB" for three.
    """
    n, h, w, c = images.shape
    cols = n // rows
    assert cols * rows == n, f"{n} images do not fill {rows} rows"
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    tiles = to_uint8(images)
    for i in range(n):
        r, col = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        canvas[y:y + h, x:x + w] = tiles[i]
    return Image.fromarray(canvas[..., 0] if c == 1 else canvas)


def save_image(image: Image.Image, path: Path, scale: int = 1) -> None:
    """Write a PNG atomically, enlarged `scale` times with nearest neighbour."""
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def make_gif(frames: list[Path], path: Path, ms_per_frame: int = 200) -> None:
    """Assemble PNG frames into a looping GIF that holds the last frame a little longer."""
    images = [Image.open(f).convert("RGB") for f in frames]
    durations = [ms_per_frame] * (len(images) - 1) + [ms_per_frame * 5]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=durations, loop=0)
