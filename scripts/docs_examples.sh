#!/usr/bin/env bash
# Regenerate the example outputs the docs quote (docs/examples/NAME.txt) from real runs, then
# render them into README.md and docs/ (scripts/render_docs.py). Run after `dvc repro` of the
# default pipeline, from the repo root: bash scripts/docs_examples.sh [NAME ...]
# Each file holds the command line, then what it printed (stdout and stderr, with this
# checkout's path taken out). With NAMEs, only those examples run.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
set +e  # setup.sh sets -e; the examples of mistakes exit non-zero on purpose
mkdir -p docs/examples
only=" $* "

# example NAME COMMAND...: run COMMAND (a shell line) and write docs/examples/NAME.txt.
example() {
  local name=$1
  shift
  [ "$only" = "  " ] || [[ "$only" == *" $name "* ]] || return 0
  echo "example $name: $*"
  {
    echo "\$ $*"
    bash -c "$*" 2>&1 | sed -e "s#sqlite:///$PWD/#sqlite:///#g" -e "s#$PWD/##g" -e "s#$PWD#.#g"
  } > "docs/examples/$name.txt"
}

# Sampling, export and their mistakes (docs/serving.md).
example sample-numbered dcgan sample models/generator.keras --n 64 --seed 0 --numbered \
  --out docs/sample_grid.png
example sample-arithmetic dcgan sample models/generator.keras --n 64 --seed 0 \
  --arithmetic "'15,32 - 29,45 + 62'" --out docs/arithmetic.png
example sample-bad-alias dcgan sample models:/dcgan-generator@best-cifar10
example export-discriminator dcgan export models/discriminator.keras --format onnx
# Comparing runs (README, docs/experiments.md).
example compare dcgan compare
# The MLflow store (docs/tracking.md): a sync of a complete store adds nothing.
example sync dcgan sync
# Rebuilding a run (docs/reproducibility.md): the commands for the best run in the store.
example rebuild 'id=$(dcgan compare --csv --limit 1 2>/dev/null | tail -1 | grep -o "[0-9a-f]*$"); dcgan rebuild $id'

# docs/serving.md: export to each format, a latent walk, more mistakes.
example export-formats 'for f in saved_model tflite onnx; do dcgan export models/generator.keras --format $f --no-log; done'
example sample-walk dcgan sample "models:/dcgan-generator@best-mnist-5k" --n 64 --seed 0 \
  --interpolate 17,48 --steps 8 --out exports/walk.png --npy exports/walk.npy
example sample-bad-version dcgan sample models:/dcgan-generator/99
example export-torchscript dcgan export models/generator.keras --format torchscript
# docs/metrics.md: an untrained generator's metrics (same arch and init seed), as JSON.
example untrained 'python scripts/untrained_baseline.py > docs/examples/untrained.json'

python scripts/render_docs.py
