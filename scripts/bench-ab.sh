#!/usr/bin/env bash
# Two builds side by side: alternating runs of the same case on the small sample cluster, one
# line a run with its rate and the CPU time the three brokers and the bench client spent per
# 1000 messages (docs/benchmarks.md says why CPU per message is the figure to compare on 2
# shared cores). Each DIR holds release binaries (raftmq, raftmq-broker, raftmq-namesrv), for
# example a copy of target/release taken before a change.
#
#   scripts/bench-ab.sh [--runs N] [--duration SECONDS] [--case consume|consume-mix|send|send-4k|send-random|latency] DIR_A DIR_B
#
# consume: DIR_A's cluster stores one pipelined run of 1 KiB sends once; then every run starts
#   the cluster again on that same data with one DIR's binaries, consumes every queue from the
#   master, then from a slave, and stops it. Both builds read the same stored messages.
# consume-mix: as consume, over what the standard set's four send runs store (scripts/bench.sh:
#   1 KiB with one in flight, then 1 KiB, 128 B and 4 KiB at window 256), which its consume
#   rows read.
# send, send-4k: every run is a fresh cluster of one DIR, pipelined sends of 1 KiB (4 KiB) at
#   window 256 for SECONDS.
# send-random: as send, with bodies of pseudo-random bytes (`bench produce --random`), which the
#   store cannot compress: the standard bodies repeat one byte, which hides what writing,
#   flushing and compacting real bodies costs.
# latency: as send, with one 1 KiB send in flight (window 1); the line adds the p50 and p99
#   latency in ms.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=3
DURATION=10
CASE=consume
usage() { echo "usage: $0 [--runs N] [--duration SECONDS] [--case consume|consume-mix|send|send-4k|send-random|latency] DIR_A DIR_B" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case $1 in
        --runs) RUNS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --case) CASE=$2; shift 2 ;;
        -*) usage ;;
        *) break ;;
    esac
done
[ $# -eq 2 ] || usage
case $CASE in consume | consume-mix | send | send-4k | send-random | latency) ;; *) usage ;; esac
for dir in "$@"; do
    for b in raftmq raftmq-broker raftmq-namesrv; do
        [ -x "$dir/$b" ] || { echo "$0: $dir/$b is missing" >&2; exit 2; }
    done
done
export RAFTMQ_HOME=${RAFTMQ_BENCH_HOME:-$ROOT/.bench}
CLUSTER="$ROOT/scripts/cluster.sh"
NS=127.0.0.1:9876
# shellcheck source=lib/cpu.sh
. "$ROOT/scripts/lib/cpu.sh"
out=$(mktemp)
trap '"$CLUSTER" down --purge >/dev/null 2>&1 || true; rm -f "$out"' EXIT

up() { # DIR: start the cluster from DIR's binaries and wait for the group
    RAFTMQ_BIN_DIR=$1 "$CLUSTER" up "$ROOT/cluster-config/small" >/dev/null
    "$1/raftmq" --namesrv "$NS" cluster wait --expect broker-a:3 >/dev/null
}
row() { # DIR, label, bench args...: one bench run, one line
    local dir=$1 label=$2 before client_s cpu
    shift 2
    before=$(broker_cpu_ms)
    client_s=$(client_cpu_s "$out" "$dir/raftmq" --namesrv "$NS" --json bench "$@")
    cpu=$(($(broker_cpu_ms) - before))
    awk -v dir="$dir" -v label="$label" -v b="$cpu" -v c="$client_s" \
        -v n="$(grep -o '"messages":[0-9]*' "$out" | cut -d: -f2)" \
        -v rate="$(grep -o '"msg_per_s":[0-9.]*' "$out" | cut -d: -f2)" \
        -v p50="$(grep -o '"p50_ms":[0-9.]*' "$out" | head -1 | cut -d: -f2)" \
        -v p99="$(grep -o '"p99_ms":[0-9.]*' "$out" | head -1 | cut -d: -f2)" \
        'BEGIN {
            # A consume row has no send latency: its percentiles are the ages of the stored messages.
            if (label ~ /^consume/) { lat = sprintf("%8s %8s", "-", "-") } else { lat = sprintf("%8.3f %8.3f", p50, p99) }
            printf "%-36s %-20s %10.0f %12.2f %12.2f %s\n", dir, label, rate, b * 1000 / n, c * 1e6 / n, lat
        }'
}

"$CLUSTER" down --purge >/dev/null 2>&1 || true
if [ "$CASE" = consume ] || [ "$CASE" = consume-mix ]; then
    up "$1"
    "$1/raftmq" --namesrv "$NS" topic create BenchTopic --queues 8 >/dev/null
    if [ "$CASE" = consume-mix ]; then
        "$1/raftmq" --namesrv "$NS" bench produce --window 1 --duration "$DURATION" >/dev/null
        for size in 1024 128 4096; do
            "$1/raftmq" --namesrv "$NS" bench produce --window 256 --size "$size" --duration "$DURATION" >/dev/null
        done
    else
        "$1/raftmq" --namesrv "$NS" bench produce --window 256 --duration "$DURATION" >/dev/null
    fi
    "$CLUSTER" down >/dev/null
fi
printf '%-36s %-20s %10s %12s %12s %8s %8s\n' BINARIES CASE MSG/S BROKER_CPU/1K CLIENT_CPU/1K P50_MS P99_MS
for _ in $(seq "$RUNS"); do
    for dir in "$@"; do
        case $CASE in
            consume | consume-mix)
                up "$dir"
                row "$dir" "consume from master" consume --duration 60
                row "$dir" "consume from a slave" consume --slave --duration 60
                "$CLUSTER" down >/dev/null
                ;;
            send | send-4k | send-random | latency)
                size=1024 random=() label= window=256
                [ "$CASE" = send-4k ] && size=4096
                [ "$CASE" = send-random ] && random=(--random) label=" random"
                [ "$CASE" = latency ] && window=1
                up "$dir"
                "$dir/raftmq" --namesrv "$NS" topic create BenchTopic --queues 8 >/dev/null
                row "$dir" "send $size B$label, w$window" produce --window "$window" --size "$size" "${random[@]}" --duration "$DURATION"
                "$CLUSTER" down --purge >/dev/null
                ;;
        esac
    done
done
