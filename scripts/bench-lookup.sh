#!/usr/bin/env bash
# The filter and key-index benchmark: starts the small sample cluster (1 NameServer, 1 group of
# 3 nodes) from release binaries and prints, each run on its own line:
#   - send throughput of 1 KiB messages without keys and with a key of their own each (which the
#     brokers index), alternating, RUNS times each;
#   - pull throughput over COUNT stored messages (property n = 0..99): unfiltered, with a SQL
#     filter matching 1 % (`n < 1`) and one matching 50 % (`n < 50`), alternating, RUNS times
#     each; `scanned` is the queue positions passed per second, filtered out or delivered;
#   - how long `raftmq message query` takes to find one key among everything sent.
#
#   scripts/bench-lookup.sh [--runs N] [--count COUNT] [--duration SECONDS]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=3
COUNT=200000
DURATION=10
while [ $# -gt 0 ]; do
    case $1 in
        --runs) RUNS=$2; shift 2 ;;
        --count) COUNT=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        *) echo "usage: $0 [--runs N] [--count COUNT] [--duration SECONDS]" >&2; exit 2 ;;
    esac
done
. "$ROOT/scripts/lib/bench.sh"
R topic create BenchKeys --queues 8 >/dev/null
R topic create BenchFilter --queues 8 >/dev/null
sleep 1

for i in $(seq "$RUNS"); do
    echo "send without keys, run $i: $(R bench produce --topic BenchKeys --duration "$DURATION" --n-property | tr '\n' ' ')"
    echo "send with keys, run $i:    $(R bench produce --topic BenchKeys --duration "$DURATION" --n-property --keys | tr '\n' ' ')"
done

R bench produce --topic BenchFilter --count "$COUNT" --batch 16 --n-property --keys >/dev/null
for i in $(seq "$RUNS"); do
    echo "pull unfiltered, run $i: $(R bench consume --topic BenchFilter | tr '\n' ' ')"
    echo "pull sql 1 %, run $i:    $(R bench consume --topic BenchFilter --sql 'n < 1' | tr '\n' ' ')"
    echo "pull sql 50 %, run $i:   $(R bench consume --topic BenchFilter --sql 'n < 50' | tr '\n' ' ')"
done

# A key sent by the first producer halfway through the filter topic's messages.
key="bench-0-$((COUNT / 2))"
for i in $(seq "$RUNS"); do
    t0=$(date +%s%N)
    found=$(R message query --topic BenchFilter --key "$key" | wc -l)
    t1=$(date +%s%N)
    echo "query one key among $COUNT messages, run $i: $found found in $(( (t1 - t0) / 1000000 )) ms (CLI start included)"
done
echo "broker RSS after: $(rss VmRSS)"
