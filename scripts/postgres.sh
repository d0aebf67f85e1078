#!/usr/bin/env bash
# A private PostgreSQL server for the registry tests (or a quick local registry).
#
#   scripts/postgres.sh [start]   install (apt: postgresql) if needed, start, print the URI (last line)
#   scripts/postgres.sh uri       print the URI of the running server
#   scripts/postgres.sh stop      stop it (idempotent)
#   scripts/postgres.sh remove    stop it and delete its directory (data, password) for good
#
# The server runs as the 'postgres' user with its own data dir and socket dir in a
# private directory (mode 0700): $RAYFLEET_PG_DIR, else one made with an unguessable
# name under /tmp on first start and remembered in $RAYFLEET_HOME/postgres.dir. It
# listens on 127.0.0.1 only, on a free port (kept in <dir>/port); the database user's
# password is random, made on first start, kept in <dir>/password (0600).
# Idempotent: 'start' on a running server only prints its URI. Never touches the
# system's own PostgreSQL cluster.
set -euo pipefail

STATE="${RAYFLEET_HOME:-$HOME/.rayfleet}"
DB_USER="rayfleet"
DB_NAME="rayfleet_registry"

die() { echo "error: $*" >&2; exit 1; }

# The server's directory: $RAYFLEET_PG_DIR, the remembered one, or (creating) a new private one.
pg_dir() {
    if [ -n "${RAYFLEET_PG_DIR:-}" ]; then echo "$RAYFLEET_PG_DIR"; return; fi
    if [ -f "$STATE/postgres.dir" ] && [ -d "$(cat "$STATE/postgres.dir")" ]; then cat "$STATE/postgres.dir"; return; fi
    [ "${1:-}" = create ] || return 0
    local d
    d=$(mktemp -d /tmp/rayfleet-pg.XXXXXXXXXX)
    mkdir -p "$STATE" && chmod 0700 "$STATE"
    echo "$d" > "$STATE/postgres.dir"
    echo "$d"
}

# Refuse a directory someone else could have prepared: a link, or not 0700 of root/us/postgres.
check_private() {
    local d="$1" owner mode
    [ -L "$d" ] && die "$d is a symbolic link; give RAYFLEET_PG_DIR a real directory."
    owner=$(stat -c %U "$d"); mode=$(stat -c %a "$d")
    case "$owner" in "$(id -un)"|postgres) ;; *) die "$d belongs to $owner; use a directory of your own (RAYFLEET_PG_DIR)." ;; esac
    [ "$mode" = 700 ] || die "$d has mode $mode, not 700: others could read the database; chmod 700 it or remove it."
}

mode=""
[ "${1:-start}" = start ] && mode=create
PG_DIR=$(pg_dir $mode)
DATA="$PG_DIR/data"
SOCK="$PG_DIR/socket"
LOG="$PG_DIR/server.log"

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
    echo "postgresql://$DB_USER:$(cat "$PG_DIR/password")@127.0.0.1:$(cat "$PG_DIR/port")/$DB_NAME"
}

running() {
    local bin
    [ -n "$PG_DIR" ] || return 1
    bin=$(pg_bin) || return 1
    [ -f "$DATA/postmaster.pid" ] && [ -f "$PG_DIR/port" ] && as_postgres "$bin/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

start() {
    install_pg
    local bin port
    bin=$(pg_bin)
    if running; then uri; return 0; fi
    [ -e "$PG_DIR" ] || (umask 077 && mkdir -p "$PG_DIR")
    check_private "$PG_DIR"
    chown postgres: "$PG_DIR" 2>/dev/null || true
    as_postgres mkdir -p "$SOCK"
    if [ ! -s "$PG_DIR/password" ]; then
        (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(24))' > "$PG_DIR/password")
    fi
    DB_PASS=$(cat "$PG_DIR/password")
    if [ ! -f "$DATA/PG_VERSION" ]; then
        local pwfile="$PG_DIR/.pw"
        (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(24))' > "$pwfile")
        chown postgres: "$pwfile" 2>/dev/null || true
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
    else   # the password file is the truth (a data dir from before it existed)
        as_postgres "${psql[@]}" -c "ALTER ROLE $DB_USER PASSWORD '$DB_PASS'" >/dev/null
    fi
    if [ -z "$(as_postgres "${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname='$DB_NAME'")" ]; then
        as_postgres "${psql[@]}" -c "CREATE DATABASE $DB_NAME OWNER $DB_USER" >/dev/null
    fi
    uri
}

stop() {
    local bin
    bin=$(pg_bin) || return 0
    [ -n "$PG_DIR" ] || return 0
    if [ -f "$DATA/PG_VERSION" ] && running; then
        as_postgres "$bin/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
    fi
}

remove() {
    stop
    [ -n "$PG_DIR" ] && [ -d "$PG_DIR" ] && rm -rf -- "$PG_DIR"
    if [ -z "${RAYFLEET_PG_DIR:-}" ]; then rm -f "$STATE/postgres.dir"; fi
}

case "${1:-start}" in
    start) start ;;
    remove) remove ;;
    uri) running || die "no server runs${PG_DIR:+ in $PG_DIR}; start it with: $0 start"; uri ;;
    stop) stop ;;
    *) die "usage: $0 [start|uri|stop|remove]" ;;
esac
