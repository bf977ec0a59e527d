#!/usr/bin/env bash
# The scale benchmark of issue 24, from release binaries, in one run:
#   - pipelined 1 KiB sends (window 256) to a topic on 1, 2 and 3 broker groups of 3 nodes each,
#     alternating, RUNS times each, with the brokers' CPU time per 1000 messages and per second
#     of run (on 2 shared cores CPU caps the rate: the CPU cost per group is what extrapolates);
#   - then the time a new node takes to catch up MB of messages (pseudo-random bodies, which do
#     not compress): it starts with join = true and `raftmq group add-node` returns once it is a
#     voter with everything.
#
#   scripts/bench-scale.sh [--runs N] [--duration SECONDS] [--catch-up-mb MB]
#
# The cluster (1 NameServer, broker-a/b/c on 127.0.0.1) runs under $RAFTMQ_BENCH_HOME (default
# .bench) and is removed at the end.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=3
DURATION=10
CATCH_UP_MB=1024
while [ $# -gt 0 ]; do
    case $1 in
        --runs) RUNS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --catch-up-mb) CATCH_UP_MB=$2; shift 2 ;;
        *) echo "usage: $0 [--runs N] [--duration SECONDS] [--catch-up-mb MB]" >&2; exit 2 ;;
    esac
done
export RAFTMQ_HOME=${RAFTMQ_BENCH_HOME:-$ROOT/.bench}
CLUSTER="$ROOT/scripts/cluster.sh"
BIN=${RAFTMQ_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
NS=127.0.0.1:9876
R() { "$BIN/raftmq" --namesrv "$NS" "$@"; }

"$CLUSTER" down --purge >/dev/null 2>&1 || true
trap '"$CLUSTER" down --purge >/dev/null 2>&1 || true' EXIT
config="$RAFTMQ_HOME/scale-config"
rm -rf "$config"
mkdir -p "$config"
printf 'listen = "%s"\nmetrics-addr = "off"\n' "$NS" > "$config/namesrv-1.toml"
# broker-a on 10911/10921/10931 (Raft +10000), broker-b on 11911..., broker-c on 12911...
members() {
    local base=$1 n
    for n in 1 2 3; do
        printf '[[members]]\nnode-id = %s\nraft-addr = "127.0.0.1:%s"\nclient-addr = "127.0.0.1:%s"\n\n' \
            "$n" $((base + 10000 + (n - 1) * 10)) $((base + (n - 1) * 10))
    done
}
i=0
for g in a b c; do
    base=$((10911 + i * 1000))
    for n in 1 2 3; do
        # Retention's early cleaning off: the shared disk may be past 75 % used.
        { printf 'group = "broker-%s"\nnode-id = %s\nnamesrv = ["%s"]\nmetrics-addr = "off"\ndisk-clean-percent = 100\ndisk-full-percent = 100\n\n' "$g" "$n" "$NS"
          members "$base"; } > "$config/broker-$g-$n.toml"
    done
    i=$((i + 1))
done
"$CLUSTER" up "$config" >/dev/null
R cluster wait --expect broker-a:3,broker-b:3,broker-c:3 >/dev/null
R topic create Scale1 --queues 8 --group broker-a >/dev/null
R topic create Scale2 --queues 8 --group broker-a --group broker-b >/dev/null
R topic create Scale3 --queues 8 --group broker-a --group broker-b --group broker-c >/dev/null
sleep 1

# shellcheck source=lib/cpu.sh
. "$ROOT/scripts/lib/cpu.sh"

echo "pipelined 1 KiB sends, window 256, ${DURATION} s a run, 9 broker nodes running throughout:"
for run in $(seq "$RUNS"); do
    for groups in 1 2 3; do
        before=$(broker_cpu_ms)
        client_s=$(client_cpu_s "$RAFTMQ_HOME/bench.out" R bench produce --json --topic "Scale$groups" --duration "$DURATION")
        out=$(cat "$RAFTMQ_HOME/bench.out")
        after=$(broker_cpu_ms)
        sent=$(echo "$out" | sed -n 's/.*"messages": *\([0-9]*\).*/\1/p' | head -1)
        rate=$(echo "$out" | sed -n 's/.*"msg_per_s": *\([0-9.]*\).*/\1/p' | head -1)
        cpu=$((after - before))
        awk -v g="$groups" -v r="$run" -v rate="$rate" -v sent="$sent" -v cpu="$cpu" -v d="$DURATION" -v c="$client_s" 'BEGIN {
            printf "groups %d, run %d: %8.0f msg/s; CPU per 1000 msgs: brokers %.1f ms, client %.1f ms; brokers %.2f CPU-s per s (%.2f per group)\n",
                g, r, rate, cpu * 1000 / sent, c * 1e6 / sent, cpu / 1000 / d, cpu / 1000 / d / g }'
    done
done

# Catch-up: fill broker-a with CATCH_UP_MB of 1 KiB messages, then add a fourth node.
count=$((CATCH_UP_MB * 1024))
R topic create CatchUp --queues 8 --group broker-a >/dev/null
R bench produce --topic CatchUp --count "$count" --random >/dev/null
data_mb=$(du -sm "$RAFTMQ_HOME/data/broker-a-1" | cut -f1)
{ printf 'group = "broker-a"\nnode-id = 4\njoin = true\nnamesrv = ["%s"]\nmetrics-addr = "off"\ndisk-clean-percent = 100\ndisk-full-percent = 100\n\n' "$NS"
  printf '[[members]]\nnode-id = 4\nraft-addr = "127.0.0.1:20941"\nclient-addr = "127.0.0.1:10941"\n'; } > "$config/broker-a-4.toml"
"$CLUSTER" start broker-a-4 >/dev/null
start=$(date +%s.%N)
R group add-node broker-a --node-id 4 --raft-addr 127.0.0.1:20941 --client-addr 127.0.0.1:10941 --catch-up-timeout 30m >/dev/null
end=$(date +%s.%N)
new_mb=$(du -sm "$RAFTMQ_HOME/data/broker-a-4" | cut -f1)
awk -v s="$start" -v e="$end" -v n="$count" -v d="$data_mb" -v m="$new_mb" 'BEGIN {
    printf "catch-up: %d messages of 1 KiB, random bodies (node 1 holds %d MB on disk) reached a new node in %.1f s (add-node to voter); it holds %d MB\n", n, d, e - s, m }'
