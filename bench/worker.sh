#!/usr/bin/env bash
# Benchmark of the background worker against the LLM stub answering at once (0 ms):
#   latency     insert-to-start (execution_started_at - created_at) of N tasks inserted one at a
#               time into an idle system, each waited for before the next: p50 and p99
#   throughput  end-to-end tasks/s draining M tasks inserted in one statement, HTTP call to the
#               stub included
# Targets (issue [worker]), from graphile-worker 0.17.3 measured on this kind of machine:
# p50 <= 2 ms, p99 <= 7 ms (its LISTEN/NOTIFY wake-up: 2.0 / 6.9 ms), and >= 3,600 tasks/s
# (twice its default 1,800 jobs/s). Side-by-side runs of the peers are bench/peers (issue [bench]).
# Usage: bench/worker.sh [latency tasks, default 500] [throughput tasks, default 50000]
source "$(dirname "$0")/lib.sh"
LATENCY_TASKS=${1:-500}
DRAIN_TASKS=${2:-50000}

install_release_build
(cd "$ROOT" && cargo build -q --release -p ai_agents_tests --bin llm_stub --bin bench_worker)
STUB_OUT=$(mktemp)
"$ROOT/target/release/llm_stub" --port 0 > "$STUB_OUT" &
STUB_PID=$!
for _ in $(seq 50); do grep -q '^listening ' "$STUB_OUT" && break; sleep 0.1; done
STUB=$(sed -n 's/^listening //p' "$STUB_OUT")

start_cluster "ai_agents.openai_base_url = 'http://$STUB/v1'
ai_agents.max_concurrent_calls = 32
ai_agents.rate_limit_global_per_minute = 2000000000
ai_agents.rate_limit_organization_per_minute = 2000000000
ai_agents.rate_limit_agent_per_minute = 2000000000
synchronous_commit = off"
trap 'stop_cluster; kill $STUB_PID 2>/dev/null; rm -f "$STUB_OUT"' EXIT
PSQL=(psql -X -q -At -v ON_ERROR_STOP=1 -d postgres)
"${PSQL[@]}" -c "CREATE EXTENSION ai_agents" >/dev/null
AGENT=$("${PSQL[@]}" -c "INSERT INTO ai_agents.ai_agents (organization_id, name, model) VALUES (gen_random_uuid(), 'bench', 'gpt-4o-mini') RETURNING id")

echo "== latency over $LATENCY_TASKS tasks inserted one at a time into an idle system, then"
echo "== throughput draining $DRAIN_TASKS tasks inserted at once, through the stub"
"$ROOT/target/release/bench_worker" "host=127.0.0.1 port=$PGPORT user=postgres dbname=postgres" \
    "$AGENT" "$LATENCY_TASKS" "$DRAIN_TASKS"
