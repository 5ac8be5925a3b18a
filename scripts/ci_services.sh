#!/usr/bin/env bash
# Install what the end-to-end tests start themselves but pip cannot provide: PostgreSQL, for
# tests/test_postgres.py (`mlflow server` with a PostgreSQL backend store). Run by .ci/run
# before scripts/test.sh, as root on Debian/Ubuntu. Idempotent, and never fails the build:
# when PostgreSQL cannot be installed it says why, and that test skips with the reason.
set -uo pipefail

installed() {
  command -v initdb >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

if installed; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "ci_services: PostgreSQL is not installed and cannot be (needs root and apt-get);" \
    "tests/test_postgres.py will skip" >&2
  exit 0
fi
echo "ci_services: installing PostgreSQL with apt-get..."
# The test runs its own throw-away server: keep the package from creating and starting the
# default cluster on port 5432 (postgresql-common reads this directory on first install).
mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/ci-no-main.conf
log=$(mktemp)
if DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$log" 2>&1 &&
   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql \
     >>"$log" 2>&1 && installed; then
  echo "ci_services: PostgreSQL installed ($(compgen -G '/usr/lib/postgresql/*/bin' | tr '\n' ' '))"
else
  echo "ci_services: could not install PostgreSQL; tests/test_postgres.py will skip." \
    "apt-get said:" >&2
  tail -n 15 "$log" >&2
fi
rm -f "$log"
