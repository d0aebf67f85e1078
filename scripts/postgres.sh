#!/usr/bin/env bash
# A private PostgreSQL server for the registry tests (or a quick local registry).
#
#   scripts/postgres.sh [start]   install (apt: postgresql) if needed, start, print the URI (last line)
#   scripts/postgres.sh uri       print the URI of the running server
#   scripts/postgres.sh stop      stop it (idempotent)
#
# The server runs as the 'postgres' user with its own data dir and socket dir
# ($RAYFLEET_PG_DIR, default /tmp/rayfleet-pg), listens on 127.0.0.1 only, on a
# free port (kept in $RAYFLEET_PG_DIR/port). Idempotent: 'start' on a running
# server only prints its URI. Never touches the system's own PostgreSQL cluster.
set -euo pipefail

PG_DIR="${RAYFLEET_PG_DIR:-/tmp/rayfleet-pg}"
DATA="$PG_DIR/data"
SOCK="$PG_DIR/socket"
LOG="$PG_DIR/server.log"
DB_USER="rayfleet"
DB_PASS="rayfleet-test-password"
DB_NAME="rayfleet_registry"

die() { echo "error: $*" >&2; exit 1; }

as_postgres() {
    if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

pg_bin() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    [ -n "$d" ] && [ -x "$d/pg_ctl" ] && echo "$d"
}

install_pg() {
    [ -n "$(pg_bin)" ] && return 0
    [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed and installing it needs root (apt-get install postgresql)."
    echo "installing postgresql (apt) ..." >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    [ -n "$(pg_bin)" ] || die "apt-get install postgresql did not provide pg_ctl under /usr/lib/postgresql/*/bin."
}

free_port() {
    python3 - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

uri() {
    echo "postgresql://$DB_USER:$DB_PASS@127.0.0.1:$(cat "$PG_DIR/port")/$DB_NAME"
}

running() {
    local bin
    bin=$(pg_bin) || return 1
    [ -f "$DATA/postmaster.pid" ] && [ -f "$PG_DIR/port" ] && as_postgres "$bin/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

start() {
    install_pg
    local bin port
    bin=$(pg_bin)
    if running; then uri; return 0; fi
    mkdir -p "$PG_DIR"
    chown postgres: "$PG_DIR" 2>/dev/null || true
    chmod 0700 "$PG_DIR"
    as_postgres mkdir -p "$SOCK"
    if [ ! -f "$DATA/PG_VERSION" ]; then
        local pwfile="$PG_DIR/.pw"
        echo "$DB_PASS" > "$pwfile"; chown postgres: "$pwfile" 2>/dev/null || true; chmod 0600 "$pwfile"
        as_postgres "$bin/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
            --pwfile="$pwfile" -E UTF8 >/dev/null
        rm -f "$pwfile"
    fi
    port=$(free_port)
    echo "$port" > "$PG_DIR/port"
    as_postgres "$bin/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $SOCK" start >/dev/null \
        || { tail -20 "$LOG" >&2 || true; die "PostgreSQL did not start (log: $LOG)."; }
    # role and database (idempotent)
    local psql=("$bin/psql" -h "$SOCK" -p "$port" -U postgres -v ON_ERROR_STOP=1 -qtA)
    if [ -z "$(as_postgres "${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname='$DB_USER'")" ]; then
        as_postgres "${psql[@]}" -c "CREATE ROLE $DB_USER LOGIN PASSWORD '$DB_PASS'" >/dev/null
    fi
    if [ -z "$(as_postgres "${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname='$DB_NAME'")" ]; then
        as_postgres "${psql[@]}" -c "CREATE DATABASE $DB_NAME OWNER $DB_USER" >/dev/null
    fi
    uri
}

stop() {
    local bin
    bin=$(pg_bin) || return 0
    if [ -f "$DATA/PG_VERSION" ] && running; then
        as_postgres "$bin/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
    fi
}

case "${1:-start}" in
    start) start ;;
    uri) running || die "no server runs in $PG_DIR; start it with: $0 start"; uri ;;
    stop) stop ;;
    *) die "usage: $0 [start|uri|stop]" ;;
esac
