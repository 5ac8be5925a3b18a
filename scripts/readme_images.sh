#!/usr/bin/env bash
# Refresh the README's pictures from the latest pipeline outputs (run after `dvc repro`).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p docs
cp data/generated/grid.png docs/grid.png
cp data/generated/interpolation.png docs/interpolation.png
cp data/train/progress.gif docs/progress.gif
python scripts/quality_plot.py docs/quality.png
