"""Draw the quality-over-training curves, G's moving average (delivered) and G itself, with
the metric's floor and ceilings and the kept epoch, for the README.

Run from the repo root after `dvc repro` (scripts/readme_images.sh calls it):
    python scripts/quality_plot.py docs/quality.png
Reads data/train/quality.csv (train.eval_every), data/train/selection.json (train) and
data/metrics.json (evaluate).
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

out = sys.argv[1] if len(sys.argv) > 1 else "docs/quality.png"
quality = pd.read_csv("data/train/quality.csv")
metrics = json.loads(Path("data/metrics.json").read_text())
selection = json.loads(Path("data/train/selection.json").read_text())
fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
ema = selection["generator"] == "ema"
ax.plot(quality["epoch"], quality["frechet_distance_raw"], marker=".", color="tab:orange",
        alpha=0.8, label="raw G")
if ema:
    ax.plot(quality["epoch"], quality["frechet_distance"], marker=".", color="tab:blue",
            label="EMA of G (delivered)")
if selection["frechet_distance"] is not None:
    ax.plot([selection["epoch"]], [selection["frechet_distance"]], marker="*", markersize=14,
            color="black", linestyle="none",
            label=f"kept: epoch {selection['epoch']} ({selection['kept']})")
for row, style, name, dy in (("ceiling_shuffle", ":", "pixel-shuffled test images", 4),
                             ("ceiling_blur", "-.", "blurred test images", -11),
                             ("floor", "--", "real train images (floor)", 4)):
    ax.axhline(metrics[row]["frechet_distance"], linestyle=style, color="grey")
    ax.annotate(name, (quality["epoch"].iloc[0], metrics[row]["frechet_distance"]),
                textcoords="offset points", xytext=(0, dy), fontsize=8, color="dimgrey")
ax.set_yscale("log")
ax.set_xlabel("epoch")
ax.set_ylabel("Fréchet distance to real test images\n(classifier features, log scale)")
ax.set_title("Quality over training (lower is better)")
ax.grid(alpha=0.3)
ax.legend(loc="upper right", fontsize=8)
fig.tight_layout()
fig.savefig(out)
print(out)
