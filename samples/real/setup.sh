#!/usr/bin/env bash
# Installs and starts what samples/real/catalog.py runs against: Debian's
# Redis and PostgreSQL servers and a Python venv with the stock
# OpenTelemetry packages of requirements.txt. Idempotent. Prints the
# environment the real-instrumentation test reads (`REAL_OTEL_*`, not
# `HERDWATCH_*`: herdwatch refuses unknown variables of its own prefix);
# source it:
#   eval "$(bash samples/real/setup.sh)"
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${REAL_OTEL_VENV:-/var/tmp/herdwatch-py}"
redis_port="${REAL_OTEL_REDIS_PORT:-6391}"

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

if [ ! -x "$venv/bin/python" ] || ! cmp -s "$here/requirements.txt" "$venv/requirements.txt"; then
  echo "python venv: $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q -r "$here/requirements.txt" >&2
  cp "$here/requirements.txt" "$venv/requirements.txt"
fi

# Redis: a private instance without persistence.
if ! redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
  redis-server --port "$redis_port" --bind 127.0.0.1 --daemonize yes --save '' --appendonly no >&2
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

# PostgreSQL: Debian's cluster, a superuser role for whoever runs the test
# (peer authentication over the socket) and the shop database.
read -r pg_version pg_cluster _ < <(pg_lsclusters -h | head -1)
if ! pg_lsclusters -h | head -1 | grep -q online; then
  pg_ctlcluster "$pg_version" "$pg_cluster" start >&2
fi
me="$(id -un)"
runuser -u postgres -- psql -qtAc "SELECT 1 FROM pg_roles WHERE rolname='$me'" | grep -q 1 \
  || runuser -u postgres -- createuser -s "$me" >&2
psql -d postgres -qtAc "SELECT 1 FROM pg_database WHERE datname='shop'" | grep -q 1 \
  || createdb shop >&2

echo "export REAL_OTEL_PYTHON=$venv/bin/python"
echo "export REAL_OTEL_REDIS_PORT=$redis_port"
echo "export REAL_OTEL_PG_DSN='dbname=shop'"
