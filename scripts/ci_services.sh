#!/usr/bin/env bash
# Install what the end-to-end tests start themselves but pip cannot provide: PostgreSQL, for
# tests/test_postgres.py (`mlflow server` with a PostgreSQL backend store), and Chromium, for
# tests/test_plots.py (opens the pages of `dvc plots show` and `dvc plots diff` headless, with
# no network). Run by .ci/run before scripts/test.sh, as root on Debian/Ubuntu. Idempotent,
# and never fails the build: what cannot be installed is said, with why, and its test skips
# with the reason.
set -uo pipefail

postgres_installed() {
  command -v initdb >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

chromium_installed() {
  command -v chromium >/dev/null && chromium --version >/dev/null 2>&1
}

updated=""

# apt_install NAME TEST CHECK PACKAGE...: install the packages with apt-get (one `apt-get
# update` per run), then CHECK; on any failure say why and that TEST will skip.
apt_install() {
  local name=$1 test=$2 check=$3 log
  shift 3
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "ci_services: $name is not installed and cannot be (needs root and apt-get);" \
      "$test will skip" >&2
    return 0
  fi
  echo "ci_services: installing $name with apt-get..."
  log=$(mktemp)
  if { [ -n "$updated" ] || DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$log" 2>&1; } &&
     updated=1 &&
     DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
       >>"$log" 2>&1 && "$check"; then
    echo "ci_services: $name installed"
  else
    echo "ci_services: could not install $name; $test will skip. apt-get said:" >&2
    tail -n 15 "$log" >&2
  fi
  rm -f "$log"
}

if ! postgres_installed; then
  # The test runs its own throw-away server: keep the package from creating and starting the
  # default cluster on port 5432 (postgresql-common reads this directory on first install).
  if [ "$(id -u)" = 0 ]; then
    mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/ci-no-main.conf
  fi
  apt_install PostgreSQL tests/test_postgres.py postgres_installed postgresql
fi
if ! chromium_installed; then
  apt_install Chromium tests/test_plots.py chromium_installed chromium
fi
exit 0
