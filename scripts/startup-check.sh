#!/usr/bin/env bash
# Start-up check: starts the small sample cluster N times from empty data directories and
# reports, per start, when the NameServers first listed a master (from the moment `up` began,
# process starts included), how long `scripts/cluster.sh up` took (until every node is listed),
# the master and term then, and every change of term or master in the next 10 seconds (there
# should be none).
#
#   scripts/startup-check.sh [--starts N] [--watch-s S] [CONFIG_DIR]
#
# It stops (and purges) the cluster under $RAFTMQ_HOME before each start and at the end.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
starts=10
watch_s=10
dir=$ROOT/cluster-config/small
while (($#)); do
    case $1 in
        --starts) starts=$2; shift 2 ;;
        --watch-s) watch_s=$2; shift 2 ;;
        *) dir=$1; shift ;;
    esac
done
bin=${RAFTMQ_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
namesrv=$(for f in "$dir"/namesrv-*.toml; do sed -n 's/^listen *= *"\(.*\)".*/\1/p' "$f"; done | paste -sd, -)
cluster="$ROOT/scripts/cluster.sh"
"$cluster" down --purge >/dev/null 2>&1 || true
# Build once, outside the timing.
RAFTMQ_BIN_DIR=${RAFTMQ_BIN_DIR:-} "$cluster" up "$dir" >/dev/null
"$cluster" down --purge >/dev/null

# Prints "group:node:term" for every master the NameServers list, one line.
masters() {
    "$bin/raftmq" --namesrv "$namesrv" cluster list --json 2>/dev/null | python3 -c '
import json, sys
try:
    nodes = json.load(sys.stdin)
except Exception:
    nodes = []
print(" ".join(sorted("%s:%s:%s" % (n["group"], n["node_id"], n["term"]) for n in nodes if n["role"] == "master")))'
}

bad=0
for i in $(seq 1 "$starts"); do
    t0=$(date +%s%N)
    # Meanwhile: when the NameServers first list a master.
    seen=$(mktemp)
    (
        while [ -z "$(masters)" ]; do sleep 0.05; done
        echo $((($(date +%s%N) - t0) / 1000000)) >"$seen"
    ) &
    poller=$!
    RAFTMQ_BIN_DIR=$bin "$cluster" up "$dir" >/dev/null
    up_ms=$((($(date +%s%N) - t0) / 1000000))
    wait "$poller"
    master_ms=$(cat "$seen")
    rm -f "$seen"
    first=$(masters)
    changes=()
    last=$first
    end=$(($(date +%s) + watch_s))
    while [ "$(date +%s)" -lt "$end" ]; do
        now=$(masters)
        if [ -n "$now" ] && [ "$now" != "$last" ]; then
            changes+=("$now")
            last=$now
        fi
        sleep 0.1
    done
    verdict=ok
    if [ -z "$first" ] || ((${#changes[@]})); then verdict=CHANGED; bad=$((bad + 1)); fi
    echo "start $i: a master listed after $master_ms ms, up done in $up_ms ms; masters (group:node:term) $first; then ${changes[*]:-no change for ${watch_s} s} [$verdict]"
    "$cluster" down --purge >/dev/null
done
echo "$starts starts, $((starts - bad)) with one master and no term or master change for ${watch_s} s"
((bad == 0))
