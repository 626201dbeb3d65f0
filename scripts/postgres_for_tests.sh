#!/usr/bin/env bash
# A local PostgreSQL server for the test of `--storage postgresql://...` (tests/test_study.py):
# installs Debian's postgresql if missing, starts its cluster, creates role and database `autoprune`,
# and prints the URL. Idempotent. Needs root or sudo, as scripts/setup.sh does for apt.
set -euo pipefail
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  $SUDO apt-get update -qq >&2
  $SUDO apt-get install -y -qq postgresql >&2
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -1)
pg_lsclusters -h | grep -q "^$version main" || $SUDO pg_createcluster "$version" main >&2
pg_lsclusters -h | grep -q "^$version main .* online" || $SUDO pg_ctlcluster "$version" main start >&2
if [ -z "$SUDO" ]; then AS_POSTGRES="runuser -u postgres --"; else AS_POSTGRES="sudo -u postgres"; fi
psql_as_postgres() { $AS_POSTGRES psql -qtAX "$@"; }
[ "$(psql_as_postgres -c "SELECT 1 FROM pg_roles WHERE rolname='autoprune'")" = 1 ] ||
  psql_as_postgres -c "CREATE ROLE autoprune LOGIN PASSWORD 'autoprune'" >&2
[ "$(psql_as_postgres -c "SELECT 1 FROM pg_database WHERE datname='autoprune'")" = 1 ] ||
  psql_as_postgres -c "CREATE DATABASE autoprune OWNER autoprune" >&2
echo "postgresql://autoprune:autoprune@localhost/autoprune"
