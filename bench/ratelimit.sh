#!/usr/bin/env bash
# Benchmark: rate-limit checks per second at 1 and 8 clients, each scenario run 3 times (median
# and min-max), against baselines measured in the same run:
#   select1       pgbench "SELECT 1" - the cost of any round trip with a function call
#   table_counter the same three tiers kept as logged counter rows (fixed one-minute windows,
#                 INSERT ... ON CONFLICT DO UPDATE on three rows per check, one commit each)
#   redis         Debian's redis-server on loopback: one EVAL doing INCR + EXPIRE on three keys,
#                 driven by redis-benchmark with the same client count
#   ai_agents     SELECT * FROM ai_agents.check_rate_limit(org, agent)
# Limits are set high so that every check is admitted (the path that writes).
# Targets at 8 clients: >= 0.8x select1, >= 10x table_counter, >= 1.0x redis.
# Usage: bench/ratelimit.sh [seconds per run, default 5]
source "$(dirname "$0")/lib.sh"
SECONDS_PER_RUN=${1:-5}
RUNS=3

install_release_build
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    apt-get install -y -qq redis-server redis-tools >/dev/null
fi

start_cluster "ai_agents.rate_limit_global_per_minute = 2000000000
ai_agents.rate_limit_organization_per_minute = 2000000000
ai_agents.rate_limit_agent_per_minute = 2000000000"
psql -q -X -v ON_ERROR_STOP=1 -d postgres <<'SQL'
CREATE EXTENSION ai_agents;
CREATE TABLE table_counter (key text, window_start timestamptz, count bigint NOT NULL,
                            PRIMARY KEY (key, window_start));
-- The three tiers as counter rows: every check writes three rows and commits.
CREATE FUNCTION table_counter_check(org uuid, agent uuid) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    w timestamptz := date_trunc('minute', now());
    g bigint; o bigint; a bigint;
BEGIN
    INSERT INTO table_counter VALUES ('global', w, 1)
        ON CONFLICT (key, window_start) DO UPDATE SET count = table_counter.count + 1 RETURNING count INTO g;
    INSERT INTO table_counter VALUES ('org:' || org, w, 1)
        ON CONFLICT (key, window_start) DO UPDATE SET count = table_counter.count + 1 RETURNING count INTO o;
    INSERT INTO table_counter VALUES ('agent:' || agent, w, 1)
        ON CONFLICT (key, window_start) DO UPDATE SET count = table_counter.count + 1 RETURNING count INTO a;
    RETURN g <= 2000000000 AND o <= 2000000000 AND a <= 2000000000;
END $$;
SQL

work=$(mktemp -d)
trap 'stop_cluster; rm -rf "$work"; [ -n "${REDIS_PID:-}" ] && kill "$REDIS_PID" 2>/dev/null || true' EXIT
echo 'SELECT 1;' > "$work/select1.sql"
echo "SELECT * FROM ai_agents.check_rate_limit('6f1c2a3b-0000-4000-8000-000000000001', '6f1c2a3b-0000-4000-8000-0000000000a1');" > "$work/ai_agents.sql"
echo "SELECT table_counter_check('6f1c2a3b-0000-4000-8000-000000000001', '6f1c2a3b-0000-4000-8000-0000000000a1');" > "$work/table_counter.sql"

REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/dev/null &
REDIS_PID=$!
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
LUA="redis.call('INCR', KEYS[1]) redis.call('EXPIRE', KEYS[1], 60) redis.call('INCR', KEYS[2]) redis.call('EXPIRE', KEYS[2], 60) redis.call('INCR', KEYS[3]) redis.call('EXPIRE', KEYS[3], 60) return 1"

pgbench_tps() { # script clients
    pgbench -n -M prepared -c "$2" -j "$2" -T "$SECONDS_PER_RUN" -f "$1" postgres 2>/dev/null \
        | awk '/^tps = / { printf "%.0f", $3 }'
}
redis_tps() { # clients
    local n=$((60000 * SECONDS_PER_RUN / 5 * $1 / ($1 > 1 ? 2 : 1)))
    redis-benchmark -p "$REDIS_PORT" -c "$1" -n "$n" -q EVAL "$LUA" 3 global org:1 agent:1 2>/dev/null \
        | tr '\r' '\n' | awk '/requests per second/ { for (i = 1; i <= NF; i++) if ($(i+1) == "requests") { printf "%.0f", $i } }' | tail -c 20
}

declare -A median runs
scenarios="select1 ai_agents table_counter redis"
printf '%-14s %8s %18s\n' scenario clients "checks/s (median, min-max of $RUNS)"
for clients in 1 8; do
    # Rounds interleave the scenarios, so that drift in the machine's speed hits all alike.
    for _ in $(seq $RUNS); do
        for scenario in $scenarios; do
            if [ "$scenario" = redis ]; then tps=$(redis_tps "$clients"); else tps=$(pgbench_tps "$work/$scenario.sql" "$clients"); fi
            runs[$scenario,$clients]="${runs[$scenario,$clients]:-} $tps"
        done
    done
    for scenario in $scenarios; do
        # shellcheck disable=SC2086
        read -r med range <<<"$(median_min_max ${runs[$scenario,$clients]})"
        median[$scenario,$clients]=$med
        printf '%-14s %8s %10s  %s\n' "$scenario" "$clients" "$med" "$range"
    done
done

echo
echo "ratios of ai_agents.check_rate_limit to its baselines (medians; targets at 8 clients):"
for clients in 1 8; do
    a=${median[ai_agents,$clients]}
    printf '  %s client(s): %.2fx select1 (>= 0.8), %.1fx table_counter (>= 10), %.2fx redis (>= 1.0)\n' "$clients" \
        "$(echo "$a / ${median[select1,$clients]}" | bc -l)" \
        "$(echo "$a / ${median[table_counter,$clients]}" | bc -l)" \
        "$(echo "$a / ${median[redis,$clients]}" | bc -l)"
done
