#!/usr/bin/env bash
# What security costs, from release binaries, in one run: sync sends (1 in flight) and
# pipelined sends (window 256) of 1 KiB on the small cluster (1 NameServer, 1 group of 3 nodes,
# fsync before acknowledgement), open and secured (`cluster.sh up --secure`: TLS on the client ports, the cluster
# secret on every Raft message and heartbeat, every client request signed and checked against
# the group's users), alternating, RUNS times each. Prints every run, then per case the median
# and the worst of the runs.
#
#   scripts/bench-security.sh [--runs N] [--duration SECONDS]
#
# The cluster runs under $RAFTMQ_BENCH_HOME (default .bench) and is removed at the end.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=3
DURATION=10
while [ $# -gt 0 ]; do
    case $1 in
        --runs) RUNS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        *) echo "usage: $0 [--runs N] [--duration SECONDS]" >&2; exit 2 ;;
    esac
done
export RAFTMQ_HOME=${RAFTMQ_BENCH_HOME:-$ROOT/.bench}
CLUSTER="$ROOT/scripts/cluster.sh"
BIN=${RAFTMQ_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
export RAFTMQ_BIN_DIR=$BIN
NS=127.0.0.1:9876
R() { "$BIN/raftmq" --namesrv "$NS" "$@"; }
"$CLUSTER" down --purge >/dev/null 2>&1 || true
trap '"$CLUSTER" down --purge >/dev/null 2>&1 || true' EXIT
[ -x "$BIN/raftmq-broker" ] || (cd "$ROOT" && cargo build --release --bins --quiet)

field() { grep -o "\"$1\":[0-9.e+-]*" | head -n 1 | cut -d: -f2; }
results=$(mktemp)
printf '%-8s %-26s %4s %10s %9s %9s\n' MODE CASE RUN MSG/S P50_MS P99_MS
for run in $(seq 1 "$RUNS"); do
    for mode in open secure; do
        unset RAFTMQ_CREDENTIALS RAFTMQ_TLS_CA
        if [ "$mode" = secure ]; then
            "$CLUSTER" up --secure "$ROOT/cluster-config/small" >/dev/null
            export RAFTMQ_CREDENTIALS=$RAFTMQ_HOME/secrets/admin.toml RAFTMQ_TLS_CA=$RAFTMQ_HOME/secrets/ca.pem
        else
            "$CLUSTER" up "$ROOT/cluster-config/small" >/dev/null
        fi
        R topic create BenchTopic --queues 8 >/dev/null
        for window in 1 256; do
            label="send 1 KiB, window $window"
            out=$(R --json bench produce --window "$window" --duration "$DURATION")
            line=$(printf '%-8s %-26s %4s %10s %9s %9s' "$mode" "$label" "$run" \
                "$(echo "$out" | field msg_per_s)" "$(echo "$out" | field p50_ms)" "$(echo "$out" | field p99_ms)")
            echo "$line"
            echo "$line" >> "$results"
        done
        "$CLUSTER" down --purge >/dev/null
    done
done
echo
echo "median / worst of $RUNS runs (worst: lowest msg/s, highest latency)"
printf '%-8s %-26s %21s %19s %19s\n' MODE CASE MSG/S P50_MS P99_MS
for mode in open secure; do
    for window in 1 256; do
        label="send 1 KiB, window $window"
        sel=$(grep "^$mode .*window $window " "$results")
        # The last three columns: msg/s (worst is the lowest), p50 and p99 (worst the highest).
        col() { echo "$sel" | awk -v c="$1" '{print $(NF - c)}' | sort -g; }
        tput=$(col 2 | awk '{v[NR]=$1} END {printf "%s / %s", v[int((NR+1)/2)], v[1]}')
        p50=$(col 1 | awk '{v[NR]=$1} END {printf "%s / %s", v[int((NR+1)/2)], v[NR]}')
        p99=$(col 0 | awk '{v[NR]=$1} END {printf "%s / %s", v[int((NR+1)/2)], v[NR]}')
        printf '%-8s %-26s %21s %19s %19s\n' "$mode" "$label" "$tput" "$p50" "$p99"
    done
done
rm -f "$results"
