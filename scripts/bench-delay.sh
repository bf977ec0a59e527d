#!/usr/bin/env bash
# The delayed-message benchmark: starts the small sample cluster (1 NameServer, 1 group of 3
# nodes) from release binaries and prints, each run on its own line:
#   - lateness (stored and visible, p50 / p99 / max) of a burst of 100k messages all due in the
#     same second, RUNS times on the same cluster;
#   - lateness of a steady 10k msg/s of delayed sends (2 s delay, 20 s), RUNS times;
#   - the brokers' RSS with 1M messages pending, and how long a slave restarted with them takes
#     to serve.
#
#   scripts/bench-delay.sh [--runs N] [--pending COUNT]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=3
PENDING=1000000
while [ $# -gt 0 ]; do
    case $1 in
        --runs) RUNS=$2; shift 2 ;;
        --pending) PENDING=$2; shift 2 ;;
        *) echo "usage: $0 [--runs N] [--pending COUNT]" >&2; exit 2 ;;
    esac
done
. "$ROOT/scripts/lib/bench.sh"
R topic create BenchDelay --queues 8 >/dev/null
sleep 1

for i in $(seq "$RUNS"); do
    echo "burst run $i: $(R bench delay --shape burst --count 100000 --due-in 30 --size 128 | tr '\n' ' ')"
done
for i in $(seq "$RUNS"); do
    echo "steady run $i: $(R bench delay --shape steady --rate 10000 --duration 20 --delay-ms 2000 --size 128 | tr '\n' ' ')"
done

echo "broker RSS before scheduling $PENDING: $(rss VmRSS)"
R bench delay --shape burst --count "$PENDING" --due-in 7200 --size 128 --schedule-only | tr '\n' ' '
echo
sleep 5
echo "broker RSS with $PENDING pending: $(rss VmRSS)"
master=$(R --json cluster list | grep -o '"node_id":[0-9]*,"role":"master"' | grep -o '[0-9]*' | head -n 1 || true)
slave=1; [ "$master" = 1 ] && slave=2
"$CLUSTER" stop "broker-a-$slave" >/dev/null
t0=$(date +%s%N)
"$CLUSTER" start "broker-a-$slave" >/dev/null
t1=$(date +%s%N)
echo "slave broker-a-$slave restarted with $PENDING pending: serving after $(( (t1 - t0) / 1000000 )) ms"
sleep 3
echo "broker RSS after the restart: $(rss VmRSS)"
