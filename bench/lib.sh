# Shared by the benchmark scripts: a private PostgreSQL 15 cluster on loopback with ai_agents
# preloaded (release build), and a median-of-runs helper. Source it; it stops the cluster on exit.
set -euo pipefail

BIN=/usr/lib/postgresql/15/bin
PG_CONFIG=$BIN/pg_config
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

as_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# start_cluster "extra postgresql.conf lines": sets PGPORT, PGDATA_DIR; psql/pgbench use them.
start_cluster() {
    PGDATA_DIR=$(mktemp -d /tmp/ai_agents-bench.XXXXXX)
    if [ "$(id -u)" -eq 0 ]; then chown postgres "$PGDATA_DIR"; fi
    PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
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
    trap stop_cluster EXIT
    export PGHOST=127.0.0.1 PGPORT PGUSER=postgres
}

stop_cluster() {
    as_pg "$BIN/pg_ctl" -D "$PGDATA_DIR" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$PGDATA_DIR"
}

# median_min_max v1 v2 v3 ...: prints "median min-max" of the numbers.
median_min_max() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { printf "%.0f %.0f-%.0f", v[int((NR + 1) / 2)], v[1], v[NR] }'
}

install_release_build() {
    "$ROOT/scripts/setup"
    (cd "$ROOT" && cargo pgrx install --release --sudo --pg-config "$PG_CONFIG" >/dev/null)
}
