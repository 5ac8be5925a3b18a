#!/usr/bin/env bash
# CI check of another supported Python: make the environment with it (scripts/setup.sh with
# VENV=.venv-pyX.Y, outside .venv), import the package, and run the README's pipeline command
# (scripts/pipeline.sh) on a tiny copy of this repo (tests/dvc_repo.py's make_clone: its tiny
# params). Run by .ci/run as `bash scripts/ci_python.sh python3.13`; the argument is an
# interpreter's name or path.
# A name pythonX.Y that does not run (pyenv puts shims on PATH for versions it has not
# enabled) is also looked for among pyenv's versions. Where none runs, it says so in one line
# and exits 0: the machine has no such Python, so there is nothing to check.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
[ $# = 1 ] || { echo "usage: bash scripts/ci_python.sh PYTHON (e.g. python3.13)" >&2; exit 2; }
want=$1

runs() { "$1" -c 'import sys' >/dev/null 2>&1; }

# 1. The interpreter.
interpreter=""
if runs "$want"; then
  interpreter=$want
elif [[ $want =~ ^python(3\.[0-9]+)$ ]] && command -v pyenv >/dev/null; then
  for candidate in $(printf '%s\n' "$(pyenv root)/versions/${BASH_REMATCH[1]}".*/bin/"$want" \
                     | sort -rV); do
    if runs "$candidate"; then
      interpreter=$candidate
      break
    fi
  done
fi
if [ -z "$interpreter" ]; then
  echo "ci_python: no $want runs on this machine; skipping its check"
  exit 0
fi
minor=$("$interpreter" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
venv=.venv-py$minor

# 2. The environment, and the package in it.
start=$SECONDS
PYTHON=$interpreter VENV=$venv source scripts/setup.sh
setup_s=$((SECONDS - start))
# TensorFlow's import prints notices on stderr: show the output only when this fails.
if ! out=$(python -c 'import sys, dcgan, tensorflow, keras, dvc, mlflow
print(f"ci_python: Python {sys.version.split()[0]}: dcgan imports (tensorflow",
      f"{tensorflow.__version__}, keras {keras.__version__}, mlflow {mlflow.__version__})")' \
      2>&1 && dcgan --help 2>&1); then
  echo "ci_python: the package does not import, or its dcgan command does not run, on" \
    "Python $minor:" >&2
  tail -n 20 <<<"$out" >&2
  exit 1
fi
grep '^ci_python: ' <<<"$out"

# 3. The pipeline, tiny, in a temporary git repo, with this environment and without the
# caller's MLflow and DVC settings.
repo=$(mktemp -d)
log=$(mktemp)
trap 'rm -rf "$repo" "$log"' EXIT
python -c 'import sys; sys.path.insert(0, "tests")
from pathlib import Path
from dvc_repo import make_clone
make_clone(Path(sys.argv[1]))' "$repo"
start=$SECONDS
unset_vars=$(compgen -e | grep -E '^(MLFLOW_|DVC_)' | sed 's/^/-u /' || true)
# shellcheck disable=SC2086
if ! (cd "$repo" && env $unset_vars VENV="$root/$venv" bash scripts/pipeline.sh) >"$log" 2>&1
then
  echo "ci_python: the tiny pipeline failed on Python $minor; its last lines:" >&2
  tail -n 30 "$log" >&2
  exit 1
fi
python - "$repo/data/metrics.json" <<'EOF'
import json, math, sys
metrics = json.load(open(sys.argv[1]))
bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
if not math.isfinite(metrics.get("frechet_distance", math.nan)) or bad:
    sys.exit(f"ci_python: data/metrics.json lacks a finite frechet_distance or has "
             f"non-finite values: {bad}")
EOF
echo "ci_python: Python $minor: set-up ${setup_s} s, tiny pipeline $((SECONDS - start)) s, ok"
