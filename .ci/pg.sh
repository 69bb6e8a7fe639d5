#!/usr/bin/env bash
# Start/stop a throwaway PostgreSQL server on loopback for the test suite.
#   .ci/pg.sh start   -> prints the URL to use as NYXNB_TEST_PG_URL
#   .ci/pg.sh stop
set -euo pipefail
PGPORT="${PGPORT:-54329}"
PGROOT="${PGROOT:-/tmp/nyxnb-pg}"
PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"

ensure_installed() {
  if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/initdb" ]; then
    echo "installing postgresql (Debian package)..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
    PGBIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
  fi
}

as_postgres() {
  if [ "$(id -u)" = "0" ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  ensure_installed
  if [ -f "$PGROOT/data/postmaster.pid" ] && as_postgres "$PGBIN/pg_ctl" -D "$PGROOT/data" status >/dev/null 2>&1; then
    echo "postgresql+psycopg://postgres@127.0.0.1:$PGPORT/postgres"; return
  fi
  rm -rf "$PGROOT"; mkdir -p "$PGROOT/data" "$PGROOT/sock"
  if [ "$(id -u)" = "0" ]; then chown -R postgres "$PGROOT"; fi
  as_postgres "$PGBIN/initdb" -D "$PGROOT/data" -U postgres --auth=trust -E UTF8 >/dev/null
  as_postgres "$PGBIN/pg_ctl" -D "$PGROOT/data" -l "$PGROOT/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PGPORT -k $PGROOT/sock -c fsync=off -c max_connections=200" start >/dev/null
  echo "postgresql+psycopg://postgres@127.0.0.1:$PGPORT/postgres"
}

stop() {
  [ -n "$PGBIN" ] && [ -d "$PGROOT/data" ] && as_postgres "$PGBIN/pg_ctl" -D "$PGROOT/data" -m fast stop >/dev/null 2>&1 || true
}

"${1:-start}"
