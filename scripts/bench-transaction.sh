#!/usr/bin/env bash
# The transaction benchmark: starts the small sample cluster (1 NameServer, 1 group of 3 nodes)
# from release binaries and prints, each run on its own line, alternating, RUNS times each:
#   - plain sends of 1 KiB messages (window 256, and 1 in flight for latency);
#   - the same messages each sent as a transaction: a half message, then its commit (window 256,
#     and 1 in flight); latency is the whole transaction, the commit's own latency beside it.
#
#   scripts/bench-transaction.sh [--runs N] [--duration SECONDS]
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
. "$ROOT/scripts/lib/bench.sh"
R topic create BenchTx --queues 8 >/dev/null
sleep 1

for i in $(seq "$RUNS"); do
    echo "plain, window 256, run $i:        $(R bench produce --topic BenchTx --duration "$DURATION" | tr '\n' ' ')"
    echo "transactions, window 256, run $i: $(R bench produce --topic BenchTx --duration "$DURATION" --transactional | tr '\n' ' ')"
    echo "plain, 1 in flight, run $i:        $(R bench produce --topic BenchTx --duration "$DURATION" --window 1 | tr '\n' ' ')"
    echo "transactions, 1 in flight, run $i: $(R bench produce --topic BenchTx --duration "$DURATION" --window 1 --transactional | tr '\n' ' ')"
done
echo "pending after: $(R transaction list --json | tr '\n' ' ' | cut -c1-80)"
echo "broker RSS after: $(rss VmRSS)"
