#!/bin/sh
# Entrypoint of the local PostgreSQL image (docker/build-local-images.sh): behaves
# like the official postgres image's, for what the tests and docker-compose.yml use.
#
#   POSTGRES_PASSWORD          required, unless POSTGRES_HOST_AUTH_METHOD=trust
#   POSTGRES_USER              superuser to create (default postgres)
#   POSTGRES_DB                database to create (default: $POSTGRES_USER)
#   POSTGRES_HOST_AUTH_METHOD  auth for TCP connections (default scram-sha-256)
#   PGDATA                     data directory (default /var/lib/postgresql/data)
#   /docker-entrypoint-initdb.d/*.sql, *.sh   run once, after the first initialisation
#
# `docker run IMAGE` / `IMAGE postgres -c name=value ...` start the server (listening
# on all addresses, port 5432; later -c options win); any other command runs as given.
set -eu

PGDATA="${PGDATA:-/var/lib/postgresql/data}"
POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
export PGDATA

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
    exec "$@"
fi
shift

as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
    else
        "$@"
    fi
}

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
        echo "error: POSTGRES_PASSWORD is not set (or set POSTGRES_HOST_AUTH_METHOD=trust)" >&2
        exit 1
    fi
    pwfile="$(mktemp)"
    printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
    [ "$(id -u)" = 0 ] && chown postgres "$pwfile"
    as_postgres initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host="$auth" >/dev/null
    rm -f "$pwfile"
    echo "host all all all $auth" >>"$PGDATA/pg_hba.conf"

    # a private socket and no TCP while initialising: health checks see no server yet
    initsock="$(mktemp -d)"
    [ "$(id -u)" = 0 ] && chown postgres "$initsock"
    as_postgres pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -c unix_socket_directories=$initsock" start >/dev/null
    psql_init() { as_postgres psql -X -q -v ON_ERROR_STOP=1 -h "$initsock" -U "$POSTGRES_USER" "$@"; }
    if [ "$POSTGRES_DB" != postgres ]; then
        psql_init -d postgres -c "CREATE DATABASE \"$POSTGRES_DB\""
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sql) psql_init -d "$POSTGRES_DB" -f "$f" ;;
            *.sh) PGHOST="$initsock" PGUSER="$POSTGRES_USER" PGDATABASE="$POSTGRES_DB" . "$f" ;;
        esac
    done
    as_postgres pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    rmdir "$initsock" 2>/dev/null || true
    echo "PostgreSQL init process complete; ready for start up."
fi

if [ "$(id -u)" = 0 ]; then
    exec setpriv --reuid=postgres --regid=postgres --init-groups -- \
        postgres -D "$PGDATA" -c listen_addresses='*' -c port=5432 "$@"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c port=5432 "$@"
