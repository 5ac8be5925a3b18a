#!/usr/bin/env bash
# Set up .venv if needed, run the whole DVC pipeline on params.yaml, then make the MLflow
# store show its outputs (`dcgan sync`: in a fresh clone DVC reruns nothing it can skip,
# so the store would lack what the skipped stages measured).
# Extra arguments go to `dvc repro` (e.g. `scripts/pipeline.sh train`).
source "$(dirname "$0")/setup.sh"
dvc repro "$@"
dcgan sync
