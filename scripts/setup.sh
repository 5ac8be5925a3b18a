# shellcheck shell=bash
# Sourced by pipeline.sh and test.sh: make the virtual environment $VENV (default .venv) hold
# the pinned dependencies, then activate it. It is made once, and brought up to date whenever
# requirements.txt, constraints.txt or pyproject.toml's install settings change.
#
# The Python: $PYTHON, or the first of python3.11, python3.12, python3.13 and python3 that
# runs with a supported version (scripts/find_python.sh says which, or what to install).
# A finished environment (the stamp $VENV/.stamp, written last, marks one) of that Python's
# version is updated in place by pip, which installs nothing until it has every package: a
# failed download or build leaves it as it was, and the processes using it undisturbed.
# Otherwise a new one is built in place (a venv cannot be moved once made: its scripts
# hard-code its path) while the one it replaces, if any, waits beside it as $VENV.previous;
# on failure the new one is removed and the old one put back.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${VENV:-.venv}
# What the environment is made from: pyproject.toml less its pytest and ruff settings.
stamp=$(cat requirements.txt constraints.txt \
  <(awk '/^\[/ { skip = /^\[tool\.(pytest|ruff)/ } !skip' pyproject.toml) \
  | sha256sum | cut -c1-16)

# _setup_minor PYTHON: its "3.X", or nothing when it does not run.
_setup_minor() {
  "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true
}

# Whether $VENV is finished for these files and, where $PYTHON is set, of its version.
_setup_ready() {
  [ "$(cat "$VENV/.stamp" 2>/dev/null)" = "$stamp" ] || return 1
  [ -z "${PYTHON:-}" ] || [ "$(_setup_minor "$PYTHON")" = "$(_setup_minor "$VENV/bin/python")" ]
}

# Whether $VENV is a finished environment to update: of $PYTHON's version where that is set,
# and of a supported version.
_setup_updatable() {
  [ -f "$VENV/.stamp" ] && [ -n "$(_setup_minor "$VENV/bin/python")" ] || return 1
  if [ -n "${PYTHON:-}" ]; then
    [ "$(_setup_minor "$PYTHON")" = "$(_setup_minor "$VENV/bin/python")" ] || return 1
  fi
  PYTHON="$VENV/bin/python" bash scripts/find_python.sh >/dev/null 2>&1
}

# Install the pins into $VENV, its output going to file $1; the stamp comes last.
_setup_install() {
  # PIP_CONSTRAINT, unlike -c, also pins what pip installs to build a package (setuptools
  # for `pip install -e .` and for antlr4-python3-runtime, which has no wheel).
  PIP_CONSTRAINT="$PWD/constraints.txt" "$VENV/bin/python" -m pip install -q \
    --disable-pip-version-check -r requirements.txt >>"$1" 2>&1 &&
    PIP_CONSTRAINT="$PWD/constraints.txt" "$VENV/bin/python" -m pip install -q \
      --disable-pip-version-check --no-deps -e . >>"$1" 2>&1 &&
    echo "$stamp" >"$VENV/.stamp"
}

# Put the previous environment back in place of an unfinished one, if there is one.
_setup_restore() {
  [ -d "$VENV.previous" ] || return 0
  rm -rf "$VENV"
  mv "$VENV.previous" "$VENV"
}

# pip's output, file $1, less its warnings about the package directories this machine's
# pip.conf names but lacks.
_setup_pip_says() {
  sed '/is neither a file nor a directory/d' "$1"
}

# _setup_failed WHAT: say that WHAT failed, then the last lines of the output; exit 1.
_setup_failed() {
  echo "setup: $*; the last lines of its output:" >&2
  _setup_pip_says "$_setup_log" | tail -n 15 >&2
  rm -f "$_setup_log"
  exit 1
}

# Update $VENV in place; a failure leaves its stamp as it was, so the next run tries again.
_setup_update() {
  echo "updating $VENV (Python $(_setup_minor "$VENV/bin/python")) to the pinned" \
    "dependencies..."
  _setup_log=$(mktemp)
  trap 'rm -f "$_setup_log"; exit 130' INT
  trap 'rm -f "$_setup_log"; exit 143' TERM HUP
  _setup_install "$_setup_log" || _setup_failed "updating $VENV to the pinned dependencies" \
    "failed (a failed download or build leaves it as it was; the next run tries again)"
}

# Build $VENV afresh, keeping the one it replaces until it is finished.
_setup_build() {
  local choice name version executable
  choice=$(bash scripts/find_python.sh) || exit 1
  IFS=$'\t' read -r name version executable <<<"$choice"
  echo "setting up $VENV with $name (Python $version, $executable; pinned dependencies," \
    "a few minutes the first time)..."
  if [ -f "$VENV/.stamp" ]; then
    mv "$VENV" "$VENV.previous"
  elif [ -e "$VENV" ] && [ ! -f "$VENV/pyvenv.cfg" ] && [ -n "$(ls -A "$VENV")" ]; then
    echo "setup: $VENV exists but is not a virtual environment; move it away or set" \
      "VENV to another directory" >&2
    exit 1
  else
    rm -rf "$VENV"  # an unfinished one
  fi
  _setup_log=$(mktemp)
  # Interrupted (^C, a CI time-out's SIGTERM): the same as a failure, said by the shell.
  trap '_setup_restore; rm -f "$_setup_log"; exit 130' INT
  trap '_setup_restore; rm -f "$_setup_log"; exit 143' TERM HUP
  if ! { "$name" -m venv "$VENV" >"$_setup_log" 2>&1 && _setup_install "$_setup_log"; }; then
    if [ -d "$VENV.previous" ]; then
      _setup_restore
      _setup_failed "installing the pinned dependencies into $VENV with $name failed" \
        "(the previous $VENV is kept)"
    fi
    rm -rf "$VENV"
    _setup_failed "installing the pinned dependencies into $VENV with $name failed" \
      "(nothing was left behind)"
  fi
  rm -rf "$VENV.previous"
}

if ! _setup_ready; then
  # One set-up at a time (pipeline.sh and test.sh may start together): the lock is held on
  # the folder of $VENV, so no lock file is left behind.
  exec {_setup_lock}<"$(dirname "$VENV")"
  if command -v flock >/dev/null && ! flock -n "$_setup_lock"; then
    echo "setup: waiting for another set-up of $VENV to finish..."
    flock "$_setup_lock"
  fi
  # A build killed mid-way (no trap runs on SIGKILL) left the old environment aside.
  if [ -d "$VENV.previous" ] && [ -f "$VENV/.stamp" ]; then
    rm -rf "$VENV.previous"
  else
    _setup_restore
  fi
  if ! _setup_ready; then
    if _setup_updatable; then
      _setup_update
    else
      _setup_build
    fi
    trap - INT TERM HUP
    _setup_pip_says "$_setup_log"
    rm -f "$_setup_log"
  fi
  exec {_setup_lock}<&-
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
