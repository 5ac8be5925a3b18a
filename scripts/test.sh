#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite, slow end-to-end tests included
# (under 10 minutes on 2 cores: two pytest-xdist workers, pyproject's addopts).
# Extra arguments go to pytest:
#   bash scripts/test.sh -m "not slow"    the quick tier, for local work: the unit tests
#                                         (about a minute on 2 cores)
#   bash scripts/test.sh tests/test_config.py -n 0    one file, in one process
source "$(dirname "$0")/setup.sh"
python -m pytest "$@"
