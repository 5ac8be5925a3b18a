#!/usr/bin/env bash
# Render the charts of `dvc plots show` (dvc_plots/index.html) to docs/plots.png, the README
# picture, in headless Chromium with no network: in a network namespace of its own
# (`unshare -rn`), so the picture shows what the offline page draws. The window holds the
# three charts; the image plots below them are in the README already.
# Run after `dvc repro`, with .venv active: bash scripts/plots_picture.sh [out.png]
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-docs/plots.png}")
dvc plots show >/dev/null
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
unshare -rn chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --virtual-time-budget=10000 --hide-scrollbars \
  --window-size=1280,788 --screenshot="$out" "file://$PWD/dvc_plots/index.html" 2>/dev/null
echo "$out"
