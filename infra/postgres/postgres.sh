#!/usr/bin/env bash
# A throwaway PostgreSQL server on 127.0.0.1 for tests and local runs, without Docker.
#
#   postgres.sh install        apt-get install postgresql unless its binaries are there
#   postgres.sh start          initdb once, start, create database `lineage_guard`; prints
#                              the DSN (postgresql://postgres@127.0.0.1:PORT/lineage_guard) last
#   postgres.sh stop [--wipe]  stop the server; --wipe also deletes its data dir
#   postgres.sh status         exit 0 and print the DSN while it runs, exit 1 otherwise
#
# Environment: PG_PORT (15432), LINEAGE_GUARD_CACHE (~/.cache/lineage-guard),
# PG_DATA_DIR (<cache>/pg-data; as root /var/tmp/lineage-guard/pg-data, see below).
# Auth is `trust`: anyone on this machine may connect as any role. For tests only.
set -euo pipefail

port="${PG_PORT:-15432}"
cache="${LINEAGE_GUARD_CACHE:-$HOME/.cache/lineage-guard}"
if [[ $EUID -eq 0 ]]; then
    # initdb refuses root, so the server runs as `postgres`, which cannot enter /root.
    data="${PG_DATA_DIR:-/var/tmp/lineage-guard/pg-data}"
    as_owner=(runuser -u postgres --)
else
    data="${PG_DATA_DIR:-$cache/pg-data}"
    as_owner=()
fi
dsn="postgresql://postgres@127.0.0.1:$port/lineage_guard"

die() { echo "postgres.sh: $*" >&2; exit 1; }

# The bin dir of the newest installed major version, e.g. /usr/lib/postgresql/15/bin.
pg_bin() {
    local initdb
    initdb="$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)"
    [[ -n "$initdb" ]] && dirname "$initdb"
}

install() {
    [[ -n "$(pg_bin)" ]] && return 0
    export DEBIAN_FRONTEND=noninteractive
    # Try the package lists we have; refresh them only if that fails.
    apt-get install -y --no-install-recommends postgresql >&2 \
        || { apt-get update >&2 && apt-get install -y --no-install-recommends postgresql >&2; }
    [[ -n "$(pg_bin)" ]] || die "postgresql installed, but no initdb under /usr/lib/postgresql/*/bin"
}

pg_ctl() { "${as_owner[@]}" "$bin/pg_ctl" -D "$data" "$@"; }

start() {
    bin="$(pg_bin)" || die "PostgreSQL is not installed: run \`$0 install\`"
    if ! pg_ctl status >/dev/null 2>&1; then
        if [[ ! -f "$data/PG_VERSION" ]]; then
            mkdir -p "$data"
            [[ $EUID -eq 0 ]] && chown postgres: "$data"
            chmod 700 "$data"
            "${as_owner[@]}" "$bin/initdb" -D "$data" -U postgres -A trust -E UTF8 \
                --no-sync --no-instructions >&2
        fi
        # The unix socket goes into the data dir: the server's user can always write there.
        pg_ctl -l "$data/postgres.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $data" start >&2 \
            || { tail -n 40 "$data/postgres.log" >&2; die "PostgreSQL did not start on 127.0.0.1:$port"; }
    fi
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -t 30 \
        || die "PostgreSQL on 127.0.0.1:$port does not accept connections"
    local exists
    exists="$("$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
        "select 1 from pg_database where datname = 'lineage_guard'")"
    [[ "$exists" == 1 ]] || "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres lineage_guard
    echo "$dsn"
}

stop() {
    bin="$(pg_bin)" || return 0   # not installed: nothing can be running
    if [[ -f "$data/PG_VERSION" ]] && pg_ctl status >/dev/null 2>&1; then
        pg_ctl -m fast -w -t 60 stop >&2
    fi
    if [[ "${1:-}" == "--wipe" ]]; then
        rm -rf "$data"
    fi
}

status() {
    bin="$(pg_bin)" || { echo "stopped (not installed)"; return 1; }
    pg_ctl status >/dev/null 2>&1 || { echo "stopped"; return 1; }
    port="$(sed -n 4p "$data/postmaster.pid")"   # the port it runs on, whatever PG_PORT says
    echo "running at postgresql://postgres@127.0.0.1:$port/lineage_guard"
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop "${2:-}" ;;
    status) status ;;
    *) die "usage: postgres.sh install | start | stop [--wipe] | status" ;;
esac
