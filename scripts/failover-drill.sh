#!/usr/bin/env bash
# The failover drill: with a producer sending continuously, fail a group's master N times and
# print the time to a new master, to the first acknowledged send, and to the NameServers routing
# it, with min / median / max, and whether every acknowledged message is readable.
#
#   scripts/failover-drill.sh [--netns] [--rounds N] [--fault kill|pause|isolate|transfer] [--group broker-a]
#
# It starts the small sample cluster (1 NameServer, 1 group of 3) unless a cluster is running,
# and leaves it running. With --netns (root) it starts it with every node in a network namespace
# of its own (a running cluster is stopped first), which --fault isolate needs: the master is
# cut off from every node and client, then the network heals. Other flags go to `raftmq drill`
# (see raftmq drill --help).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN=${RAFTMQ_HOME:-$ROOT/.cluster}
args=()
netns=
for a in "$@"; do
    if [ "$a" = --netns ]; then netns=1; else args+=("$a"); fi
done
up=()
if [ -n "$netns" ]; then
    up=(--netns)
    # A cluster running outside namespaces is stopped first.
    [ -d "$RUN/netns" ] || "$ROOT/scripts/cluster.sh" down >/dev/null 2>&1 || true
fi
if [ ! -f "$RUN/config-dir" ] || ! "$ROOT/scripts/cluster.sh" status 2>/dev/null | grep -q ' running$'; then
    "$ROOT/scripts/cluster.sh" up "${up[@]}" "$ROOT/cluster-config/small"
fi
dir=$(cat "$RUN/config-dir")
namesrv=$(for f in "$dir"/namesrv-*.toml; do sed -n 's/^listen *= *"\(.*\)".*/\1/p' "$f"; done | paste -sd, -)
bin=${RAFTMQ_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
exec "$bin/raftmq" --namesrv "$namesrv" drill --script "$ROOT/scripts/cluster.sh" "${args[@]}"
