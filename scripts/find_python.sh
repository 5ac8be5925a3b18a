#!/usr/bin/env bash
# Pick the Python that scripts/setup.sh builds a virtual environment with, and check that it
# can build one. Run by setup.sh (and tests/test_setup.py) as `bash scripts/find_python.sh`.
#
# The supported versions are read from pyproject.toml's requires-python (">=3.11,<3.14").
# $PYTHON, when set, is the only candidate; otherwise python3.11, python3.12, python3.13 and
# then python3, the first that runs (a pyenv shim for a version pyenv has not enabled is on
# PATH but does not run) with a supported version.
# Prints "NAME<tab>VERSION<tab>EXECUTABLE" and exits 0, or prints one line saying what is
# wrong and what to install to stderr and exits 1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

fail() {
  echo "setup: $*" >&2
  exit 1
}

# 1. The supported minor versions, from requires-python.
range=$(sed -nE 's/^requires-python *= *">=3\.([0-9]+) *, *<3\.([0-9]+)".*/\1 \2/p' pyproject.toml)
[ -n "$range" ] || fail "pyproject.toml's requires-python is not of the form \">=3.X,<3.Y\";" \
  "fix it there"
read -r lo hi <<<"$range"
hi=$((hi - 1))
supported="3.$lo to 3.$hi"

# probe NAME: "VERSION<tab>EXECUTABLE" of interpreter NAME, or nothing when it does not run.
probe() {
  "$1" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3], sys.executable, sep="\t")' \
    2>/dev/null || true
}

# in_range VERSION: whether X.Y.Z is a supported version.
in_range() {
  local minor
  minor=$(cut -d. -f2 <<<"$1")
  [ "${1%%.*}" = 3 ] && [ "$minor" -ge "$lo" ] && [ "$minor" -le "$hi" ]
}

# 2. The interpreter: $PYTHON, or the first supported candidate that runs.
name="" found=()
if [ -n "${PYTHON:-}" ]; then
  out=$(probe "$PYTHON")
  [ -n "$out" ] || fail "PYTHON=$PYTHON does not run; set PYTHON to a Python $supported" \
    "interpreter, or unset it to let setup pick one"
  in_range "${out%%$'\t'*}" || fail "PYTHON=$PYTHON is Python ${out%%$'\t'*}; this project" \
    "needs Python $supported: set PYTHON to one of those, or unset it to let setup pick one"
  name=$PYTHON
else
  for candidate in $(seq -f "python3.%g" "$lo" "$hi") python3; do
    out=$(probe "$candidate")
    [ -n "$out" ] || continue
    if in_range "${out%%$'\t'*}"; then
      name=$candidate
      break
    fi
    found+=("$candidate ${out%%$'\t'*}")
  done
  if [ -z "$name" ]; then
    found_text=$(IFS=,; echo "${found[*]:-none}")
    fail "no Python $supported runs here (tried python3.$lo to python3.$hi and python3;" \
      "found: ${found_text//,/, }); install one, e.g. apt-get install python3.$lo" \
      "python3.$lo-venv, or set PYTHON=/path/to/python3.X"
  fi
fi
version=${out%%$'\t'*}
minor=${version%.*}

# 3. It can build a virtual environment with pip in it: Debian ships the venv module's
# ensurepip, and the pip wheel it installs, only in its python3.X-venv package.
"$name" -c 'import ensurepip, venv; ensurepip.version()' >/dev/null 2>&1 ||
  fail "$name cannot create a virtual environment (no ensurepip); install it with:" \
    "apt-get install python$minor-venv"
printf '%s\t%s\n' "$name" "$out"
