#!/bin/sh
# Entrypoint of deploy/postgres.Dockerfile, run as the unprivileged `postgres` user. On the first start (no
# $PGDATA/PG_VERSION): initdb with the superuser $POSTGRES_USER and its password, password (SCRAM) logins
# over the network, the database $POSTGRES_DB. Then the server runs in the foreground as PID 1, listening on
# every address; extra arguments go to it (e.g. `-c max_connections=50`).
set -eu
PGDATA=${PGDATA:-/var/lib/postgresql/data}
POSTGRES_USER=${POSTGRES_USER:-postgres}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
  POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "postgres-entrypoint: set POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) for the first start" >&2
    exit 1
  fi
  echo "postgres-entrypoint: creating the cluster in $PGDATA (user $POSTGRES_USER, database $POSTGRES_DB)" >&2
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 \
    --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 --no-instructions >&2
  rm -f "$pwfile"
  printf '%s\n' "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    # Single-user mode: no server listens until the cluster is complete (the health check stays false).
    printf 'CREATE DATABASE "%s"\n' "$POSTGRES_DB" | postgres --single -D "$PGDATA" postgres >/dev/null
  fi
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
