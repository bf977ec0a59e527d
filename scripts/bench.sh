#!/usr/bin/env bash
# The standard benchmark: starts the small sample cluster (1 NameServer, 1 group of 3 nodes,
# fsync before acknowledgement) from release binaries, runs the standard set, prints one table
# and the brokers' memory, and tears the cluster down.
#
#   scripts/bench.sh [--duration SECONDS] [--memory] [--flush-mode sync|async]
#
# --memory: reads every broker's /metrics twice a second during the runs and prints, for each
# broker, the sample with the highest RSS and what the store held then (memtables, block cache).
# --flush-mode async: every node of a copy of cluster-config/small acknowledges before its fsync,
# to split a send's latency into the syncs and the rest (never a figure to quote for raftmq:
# async gives up the durability rule).
#
# Standard set, 1 KiB messages unless said: sync send with 1 in flight; pipelined sends with a
# window of 256 (1 KiB, 128 B, 4 KiB); consume from the master; consume from a slave. Each row
# also has the CPU time the brokers (all three together) and the bench client spent per 1000
# messages.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=10
MEMORY=
FLUSH_MODE=sync
usage() { echo "usage: scripts/bench.sh [--duration SECONDS] [--memory] [--flush-mode sync|async]" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case $1 in
        --duration) DURATION=$2; shift 2 ;;
        --memory) MEMORY=1; shift ;;
        --flush-mode) FLUSH_MODE=${2:-}; shift 2 || usage ;;
        *) usage ;;
    esac
done
case $FLUSH_MODE in
    sync) ;;
    async)
        BENCH_CONFIG=$(mktemp -d)
        BENCH_TMP=$BENCH_CONFIG
        cp "$ROOT"/cluster-config/small/* "$BENCH_CONFIG"/
        sed -i 's/^flush-mode = "sync"/flush-mode = "async"/' "$BENCH_CONFIG"/broker-*.toml
        grep -q '^flush-mode = "async"' "$BENCH_CONFIG"/broker-a-1.toml || { echo "bench.sh: no flush-mode line to change" >&2; exit 1; }
        export BENCH_CONFIG
        ;;
    *) usage ;;
esac
. "$ROOT/scripts/lib/bench.sh"
# shellcheck source=lib/metrics.sh
. "$ROOT/scripts/lib/metrics.sh"

# Idle memory, and how fast a broker is ready to serve on an empty store.
sleep 2
idle=$(rss VmRSS)
start_ms() { # stop a slave, start it again, print ms until it serves
    local node=$1 t0 t1
    "$CLUSTER" stop "$node" >/dev/null
    t0=$(date +%s%N)
    "$CLUSTER" start "$node" >/dev/null
    t1=$(date +%s%N)
    echo $(( (t1 - t0) / 1000000 ))
}
master=$(R --json cluster list | grep -o '"node_id":[0-9]*,"role":"master"' | grep -o '[0-9]*' | head -n 1 || true)
slave=1; [ "$master" = 1 ] && slave=2
ready_empty=$(start_ms "broker-a-$slave")
R cluster wait --expect broker-a:3 >/dev/null

R topic create BenchTopic --queues 8 >/dev/null
field() { grep -o "\"$1\":[0-9.e+-]*" | head -n 1 | cut -d: -f2; }
rows=()
run() { # label, bench args...
    local label=$1 out before client_s cpu
    shift
    before=$(broker_cpu_ms)
    client_s=$(client_cpu_s "$RAFTMQ_HOME/bench.out" R --json bench "$@")
    cpu=$(( $(broker_cpu_ms) - before ))
    out=$(cat "$RAFTMQ_HOME/bench.out")
    rows+=("$(printf '%-28s %10s %9s %9s %9s %9s %s %s' "$label" \
        "$(echo "$out" | field msg_per_s)" "$(echo "$out" | field mib_per_s)" \
        "$(echo "$out" | field p50_ms)" "$(echo "$out" | field p99_ms)" "$(echo "$out" | field p999_ms)" \
        "$(awk -v n="$(echo "$out" | field messages)" -v b="$cpu" -v c="$client_s" \
            'BEGIN { if (n > 0) printf "%12.1f %12.1f", b * 1000 / n, c * 1e6 / n; else printf "%12s %12s", "-", "-" }')" \
        "$(echo "$out" | grep -o '"errors":{[^}]*}' | cut -d: -f2-)")")
}
# One line per broker and sample: name, RSS MB, memtables MB (all, log, consume queue), block cache MB.
memory_samples() {
    local f name port
    while true; do
        for f in "$BENCH_CONFIG"/broker-*.toml; do
            name=$(basename "$f" .toml)
            port=$(metrics_ports "$f")
            [ -n "$port" ] || continue
            metrics_get "$port" 2>/dev/null | awk -v n="$name" '
                /^raftmq_broker_resident_memory_bytes/ { rss = $2 }
                /^raftmq_broker_store_memtable_bytes/ { mt += $2 }
                /^raftmq_broker_store_memtable_bytes.*cf="log"/ { log_mt = $2 }
                /^raftmq_broker_store_memtable_bytes.*cf="cq"/ { cq = $2 }
                /^raftmq_broker_store_block_cache_bytes/ { cache = $2 }
                END { if (rss > 0) printf "%s %.1f %.1f %.1f %.1f %.1f\n", n, rss / 1048576, mt / 1048576, log_mt / 1048576, cq / 1048576, cache / 1048576 }' || true
        done
        sleep 0.5
    done
}
sampler=
if [ -n "$MEMORY" ]; then
    memory_samples > "$RAFTMQ_HOME/memory.samples" 2>/dev/null &
    sampler=$!
fi

run "send 1 KiB, 1 in flight" produce --window 1 --duration "$DURATION"
run "send 1 KiB, window 256" produce --window 256 --duration "$DURATION"
run "send 128 B, window 256" produce --window 256 --size 128 --duration "$DURATION"
run "send 4 KiB, window 256" produce --window 256 --size 4096 --duration "$DURATION"
run "consume from master" consume --duration 60
run "consume from a slave" consume --slave --duration 60

if [ -n "$sampler" ]; then
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
fi

# Ready to serve with what the runs stored.
ready_full=$(start_ms "broker-a-$slave")

printf '%-28s %10s %9s %9s %9s %9s %12s %12s %s\n' CASE MSG/S MIB/S P50_MS P99_MS P99.9_MS BROKER_CPU/1K CLIENT_CPU/1K ERRORS
printf '%s\n' "${rows[@]}"
echo
echo "broker RSS idle:  $(echo "$idle")"
echo "broker RSS peak:  $(rss VmHWM)"
echo "ready to serve after start: ${ready_empty} ms on an empty store, ${ready_full} ms with the bench's messages stored"
if [ -n "$sampler" ]; then
    echo "highest RSS sample per broker, and the store then (MB): RSS, memtables (all, log, cq), block cache"
    sort -k1,1 -k2,2nr "$RAFTMQ_HOME/memory.samples" | awk '$1 != last { print "  " $0; last = $1 }'
fi
echo "CPU/1K: CPU milliseconds (user + system) per 1000 messages, of the three brokers together and of the bench client"
