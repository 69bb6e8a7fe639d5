#!/usr/bin/env bash
# Start/stop a throwaway PostgreSQL server on loopback for the test suite.
#   .ci/pg.sh start   -> prints the URL to use as NYXNB_TEST_PG_URL
#   .ci/pg.sh stop
# Each checkout has its own server by default: data in the checkout's ignored .pg/ folder
# (PGROOT), on a port derived from the checkout's path (PGPORT), so two checkouts never share
# or delete each other's server.  `start` reuses an existing data folder (starting it if it is
# stopped) and only runs initdb where there is none: it never deletes a server's data.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PGROOT="${PGROOT:-$REPO/.pg}"
PGPORT="${PGPORT:-$((54330 + $(printf '%s' "$REPO" | cksum | cut -d' ' -f1) % 1000))}"
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

running_port() {  # the port a running server of $PGROOT listens on (line 4 of postmaster.pid)
  sed -n 4p "$PGROOT/data/postmaster.pid" 2>/dev/null
}

start() {
  ensure_installed
  if [ -f "$PGROOT/data/postmaster.pid" ] && as_postgres "$PGBIN/pg_ctl" -D "$PGROOT/data" status >/dev/null 2>&1; then
    echo "postgresql+psycopg://postgres@127.0.0.1:$(running_port)/postgres"; return
  fi
  if [ ! -f "$PGROOT/data/PG_VERSION" ]; then
    mkdir -p "$PGROOT/data" "$PGROOT/sock"
    if [ "$(id -u)" = "0" ]; then chown -R postgres "$PGROOT"; fi
    as_postgres "$PGBIN/initdb" -D "$PGROOT/data" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  as_postgres "$PGBIN/pg_ctl" -D "$PGROOT/data" -l "$PGROOT/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PGPORT -k $PGROOT/sock -c fsync=off -c max_connections=200" start >/dev/null \
    || { echo "could not start PostgreSQL in $PGROOT on port $PGPORT (see $PGROOT/log; another server on that port? set PGPORT)" >&2; exit 1; }
  echo "postgresql+psycopg://postgres@127.0.0.1:$PGPORT/postgres"
}

stop() {
  [ -n "$PGBIN" ] && [ -d "$PGROOT/data" ] && as_postgres "$PGBIN/pg_ctl" -D "$PGROOT/data" -m fast stop >/dev/null 2>&1 || true
}

"${1:-start}"
