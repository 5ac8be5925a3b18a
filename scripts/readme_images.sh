#!/usr/bin/env bash
# Refresh the README's pictures from the latest pipeline outputs (run after `dvc repro`).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p docs
cp data/generated/grid.png docs/grid.png
cp data/generated/interpolation.png docs/interpolation.png
cp data/train/progress.gif docs/progress.gif
python scripts/quality_plot.py docs/quality.png
# "Use the generator": a numbered grid to pick cells from, and the paper's latent arithmetic
# on cells of that grid (bold zeros - thin zeros + a thin seven, for the default generator).
dcgan sample models/generator.keras --n 64 --seed 0 --numbered --out docs/sample_grid.png
dcgan sample models/generator.keras --n 64 --seed 0 \
  --arithmetic "15,32 - 29,45 + 62" --out docs/arithmetic.png
