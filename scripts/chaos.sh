#!/usr/bin/env bash
# The fault-injection suite against a real cluster: 1 NameServer and 1 group of 3 nodes with
# fault injection on, random faults from a printed seed, then the checker (see raftmq chaos).
#
#   scripts/chaos.sh [--netns] [--lazyfs] [--rounds N] [--seed S] [--faults a,b] [other raftmq chaos flags]
#
# --lazyfs (root): every node's data on raftmq-lazyfs, and power-loss (the whole group killed at
# once, every write no fsync covered dropped) joins the faults drawn.
# --netns (root): every node in a network namespace of its own, and the real partitions
# (net-isolate-master, net-isolate-slave, net-split, net-oneway-out, net-oneway-in) join the
# faults drawn.
#
# The cluster runs from its own copy of cluster-config/small under .chaos/ and is removed at the
# end (kept with RAFTMQ_CHAOS_KEEP=1 for a look at the logs).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export RAFTMQ_HOME=${RAFTMQ_CHAOS_HOME:-$ROOT/.chaos}
CLUSTER="$ROOT/scripts/cluster.sh"
BIN=${RAFTMQ_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
"$CLUSTER" down --purge >/dev/null 2>&1 || true
mkdir -p "$RAFTMQ_HOME"
config="$RAFTMQ_HOME/config"
rm -rf "$config"
cp -r "$ROOT/cluster-config/small" "$config"
# Snapshots every 500 entries, 5000 kept after one: a node that was down for a round often
# catches up by snapshot, so transfers and installs meet the faults too.
for f in "$config"/broker-*.toml; do
  sed -i "1i fault-injection = true\ndisk-clean-percent = 100\ndisk-full-percent = 100\nsnapshot-every-entries = 500\nsnapshot-log-keep = 5000\ntransaction-check-after-ms = 1000\ntransaction-check-interval-ms = 2000\ntransaction-max-checks = 100" "$f"
done
up=()
for a in "$@"; do
    case $a in --netns | --lazyfs) up+=("$a") ;; esac
done
[ "${RAFTMQ_CHAOS_KEEP:-}" = 1 ] || trap '"$CLUSTER" down --purge >/dev/null 2>&1 || true' EXIT
"$CLUSTER" up "${up[@]}" "$config" >/dev/null
# A --netns cluster runs from a rewritten copy (each node on an address of its own).
namesrv=$(sed -n 's/^listen *= *"\(.*\)".*/\1/p' "$(cat "$RAFTMQ_HOME/config-dir")/namesrv-1.toml")
"$BIN/raftmq" --namesrv "$namesrv" chaos --script "$CLUSTER" "$@"
