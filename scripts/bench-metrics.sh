#!/usr/bin/env bash
# What serving metrics costs the send path: pipelined 1 KiB sends on the small sample cluster
# (release binaries), alternating a cluster whose nodes serve /metrics, scraped every second
# (all three brokers and the NameServer, as Prometheus would), with one started with
# metrics-addr = "off"; each run on a fresh cluster, RUNS pairs, one line a run.
#
#   scripts/bench-metrics.sh [--runs N] [--duration SECONDS] [--off-first]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=3
DURATION=10
FIRST=on
SECOND=off
while [ $# -gt 0 ]; do
    case $1 in
        --runs) RUNS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --off-first) FIRST=off; SECOND=on; shift ;;
        *) echo "usage: $0 [--runs N] [--duration SECONDS] [--off-first]" >&2; exit 2 ;;
    esac
done
export RAFTMQ_HOME=${RAFTMQ_BENCH_HOME:-$ROOT/.bench}
CLUSTER="$ROOT/scripts/cluster.sh"
BIN=${RAFTMQ_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
NS=127.0.0.1:9876
R() { "$BIN/raftmq" --namesrv "$NS" "$@"; }

work=$(mktemp -d)
trap '"$CLUSTER" down --purge >/dev/null 2>&1 || true; kill "${scraper:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
cp -r "$ROOT/cluster-config/small" "$work/on"
cp -r "$ROOT/cluster-config/small" "$work/off"
sed -i 's/^metrics-addr = .*/metrics-addr = "off"/' "$work/off"/*.toml
# shellcheck source=lib/metrics.sh
. "$ROOT/scripts/lib/metrics.sh"
ports=$(metrics_ports "$work/on"/*.toml)

# One GET /metrics per port, a second apart, until killed; counts the bytes it read.
scrape_loop() {
    while true; do
        for port in $ports; do
            metrics_get "$port" >> "$work/scraped" || true
        done
        sleep 1
    done
}

run() { # on|off
    "$CLUSTER" down --purge >/dev/null 2>&1 || true
    "$CLUSTER" up "$work/$1" >/dev/null
    R topic create BenchTopic --queues 8 >/dev/null
    sleep 1
    : > "$work/scraped"
    scraper=
    if [ "$1" = on ]; then
        scrape_loop & scraper=$!
    fi
    local out
    out=$(R bench produce --duration "$DURATION" | tr '\n' ' ')
    if [ -n "$scraper" ]; then
        kill "$scraper" 2>/dev/null || true
        wait "$scraper" 2>/dev/null || true
        out+="(scraped $(grep -c '^HTTP/1.1 200' "$work/scraped") times, $(wc -c < "$work/scraped") bytes)"
    fi
    echo "$out"
}

label() { if [ "$1" = on ]; then echo "metrics on, scraped every second"; else echo "metrics off"; fi; }
for i in $(seq "$RUNS"); do
    echo "$(label $FIRST), run $i: $(run $FIRST)"
    echo "$(label $SECOND), run $i: $(run $SECOND)"
done
