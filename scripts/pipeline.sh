#!/usr/bin/env bash
# Set up .venv if needed, then run the whole DVC pipeline on params.yaml. Its last stage,
# track, makes the MLflow store show the outputs; DVC reruns it wherever its output
# data/tracked.json is absent (a fresh clone, `dvc pull`, `dvc exp apply`), so nothing
# more is needed after `dvc repro`.
# Extra arguments go to `dvc repro` (e.g. `scripts/pipeline.sh train`).
source "$(dirname "$0")/setup.sh"
dvc repro "$@"
