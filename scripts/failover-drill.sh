#!/usr/bin/env bash
# The failover drill: with a producer sending continuously, fail a group's master N times and
# print the time to a new master, to the first acknowledged send, and to the NameServers routing
# it, with min / median / max, and whether every acknowledged message is readable.
#
#   scripts/failover-drill.sh [--rounds N] [--fault kill|pause] [--group broker-a]
#
# It starts the small sample cluster (1 NameServer, 1 group of 3) unless a cluster is running,
# and leaves it running. Other flags go to `raftmq drill` (see raftmq drill --help).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN=${RAFTMQ_HOME:-$ROOT/.cluster}
if [ ! -f "$RUN/config-dir" ] || ! "$ROOT/scripts/cluster.sh" status 2>/dev/null | grep -q ' running$'; then
    "$ROOT/scripts/cluster.sh" up "$ROOT/cluster-config/small"
fi
dir=$(cat "$RUN/config-dir")
namesrv=$(for f in "$dir"/namesrv-*.toml; do sed -n 's/^listen *= *"\(.*\)".*/\1/p' "$f"; done | paste -sd, -)
bin=${RAFTMQ_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
exec "$bin/raftmq" --namesrv "$namesrv" drill --script "$ROOT/scripts/cluster.sh" "$@"
