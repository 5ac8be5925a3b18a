# Sourced by pipeline.sh and test.sh: create .venv with the pinned dependencies
# (once, and again whenever requirements.txt or constraints.txt change), then activate it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
stamp=$(cat requirements.txt constraints.txt pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat .venv/.stamp 2>/dev/null)" != "$stamp" ]; then
  echo "setting up .venv (pinned dependencies; a few minutes the first time)..."
  "$PYTHON" -m venv .venv
  # sed drops pip's warnings about package directories this machine's pip.conf names but lacks.
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt \
    -c constraints.txt 2>&1 | sed '/is neither a file nor a directory/d'
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e . 2>&1 \
    | sed '/is neither a file nor a directory/d'
  echo "$stamp" > .venv/.stamp
fi
# shellcheck disable=SC1091
source .venv/bin/activate
