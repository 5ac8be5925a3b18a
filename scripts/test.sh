#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite (slow end-to-end tests included).
# Extra arguments go to pytest (e.g. `scripts/test.sh -m "not slow"`).
source "$(dirname "$0")/setup.sh"
python -m pytest "$@"
