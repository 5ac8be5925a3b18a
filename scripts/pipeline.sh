#!/usr/bin/env bash
# Set up .venv if needed, then run the whole DVC pipeline on params.yaml.
# Extra arguments go to `dvc repro` (e.g. `scripts/pipeline.sh train`).
source "$(dirname "$0")/setup.sh"
dvc repro "$@"
