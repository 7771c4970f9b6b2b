# Shared by the benchmark scripts: a private PostgreSQL 15 cluster on loopback with ai_agents
# preloaded (release build) and clean-up on exit. Source it.
set -euo pipefail

# BENCH_PG_BIN picks another PostgreSQL 15 build to install into and run (a private copy, so that
# benchmarking never replaces the .so that other clusters on the machine have loaded).
BIN=${BENCH_PG_BIN:-/usr/lib/postgresql/15/bin}
PG_CONFIG=$BIN/pg_config
# The headers pgrx builds against; the build is the same for any PostgreSQL 15 install.
SYSTEM_PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
export PATH=$BIN:$PATH
SUDO=
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi

# One EXIT trap running every registered clean-up, newest first, so that each piece started
# (cluster, stub, Redis) can register its own without replacing the others'.
CLEANUPS=()
on_exit() { CLEANUPS=("$1" "${CLEANUPS[@]}"); }
run_cleanups() { for c in "${CLEANUPS[@]}"; do eval "$c" || true; done; }
trap run_cleanups EXIT

as_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_cluster "extra postgresql.conf lines": sets PGPORT, PGDATA_DIR; psql/pgbench use them.
start_cluster() {
    PGDATA_DIR=$(mktemp -d /tmp/ai_agents-bench.XXXXXX)
    if [ "$(id -u)" -eq 0 ]; then chown postgres "$PGDATA_DIR"; fi
    PGPORT=$(free_port)
    as_pg "$BIN/initdb" -D "$PGDATA_DIR" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
    as_pg sh -c "cat >> '$PGDATA_DIR/postgresql.conf'" <<CONF
port = $PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
shared_preload_libraries = 'ai_agents'
max_connections = 100
shared_buffers = '256MB'
$1
CONF
    as_pg "$BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGDATA_DIR/server.log" -w start >/dev/null
    on_exit stop_cluster
    export PGHOST=127.0.0.1 PGPORT PGUSER=postgres
}

stop_cluster() {
    as_pg "$BIN/pg_ctl" -D "$PGDATA_DIR" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$PGDATA_DIR"
}

# Builds the release extension against the system headers and copies it into $PG_CONFIG's
# directories (what `cargo pgrx install` does, but for any PostgreSQL 15 tree).
install_release_build() {
    "$ROOT/scripts/setup"
    local out=$TARGET/bench-package
    local log
    if ! log=$(cd "$ROOT" && cargo pgrx package --pg-config "$SYSTEM_PG_CONFIG" --out-dir "$out" 2>&1); then
        echo "$log" >&2
        return 1
    fi
    $SUDO install -m 755 "$out$("$SYSTEM_PG_CONFIG" --pkglibdir)/ai_agents.so" "$("$PG_CONFIG" --pkglibdir)/"
    $SUDO install -m 644 "$out$("$SYSTEM_PG_CONFIG" --sharedir)"/extension/ai_agents* "$("$PG_CONFIG" --sharedir)/extension/"
}
