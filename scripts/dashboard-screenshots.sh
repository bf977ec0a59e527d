#!/usr/bin/env bash
# Screenshots of `raftmq dashboard` for the docs, taken by headless Chromium against a cluster
# started by scripts/cluster.sh (cluster-config/local: 2 NameServers, 2 groups of 3): the
# cluster, topics and consumer-group tabs, and the cluster tab after broker-a's master is killed.
#
#   scripts/dashboard-screenshots.sh [OUT_DIR]      (default docs/screenshots)
#
# The cluster runs under a RAFTMQ_HOME of its own (a temporary directory, deleted at the end) on
# cluster-config/local's ports, which must be free. Needs chromium (scripts/install-deps.sh
# installs it). The PNGs are reduced to 64 colours when `pngquant` is installed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/docs/screenshots}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export RAFTMQ_HOME
RAFTMQ_HOME=$(mktemp -d /tmp/raftmq-screenshots.XXXXXX)
bin=${RAFTMQ_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
dashboard=
cleanup() {
    [ -n "$dashboard" ] && kill "$dashboard" 2>/dev/null || true
    "$ROOT/scripts/cluster.sh" down --purge >/dev/null 2>&1 || true
    rm -rf "$RAFTMQ_HOME"
}
trap cleanup EXIT
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "dashboard-screenshots.sh: chromium is not installed (scripts/install-deps.sh)" >&2; exit 1; }

"$ROOT/scripts/cluster.sh" up "$ROOT/cluster-config/local"
export RAFTMQ_NAMESRV=127.0.0.1:9876,127.0.0.1:9877
raftmq() { "$bin/raftmq" "$@"; }

# Topics with a little traffic, and a consumer group half way through one of them.
raftmq topic create Orders --queues 4 >/dev/null
raftmq topic create Payments --queues 2 >/dev/null
raftmq send Orders "order" --keys order-1 --count 400 >/dev/null
raftmq send Payments "payment" --count 120 >/dev/null
raftmq consume Orders --group billing --count 150 --quiet >/dev/null
raftmq consume Payments --group audit --quiet --idle-secs 2 >/dev/null

port=18088
"$bin/raftmq" dashboard --listen "127.0.0.1:$port" >"$RAFTMQ_HOME/dashboard.log" 2>&1 &
dashboard=$!
deadline=$((SECONDS + 10))
until curl -sf "http://127.0.0.1:$port/api/config" >/dev/null; do
    if [ $SECONDS -ge $deadline ] || ! kill -0 "$dashboard" 2>/dev/null; then
        cat "$RAFTMQ_HOME/dashboard.log" >&2
        exit 1
    fi
    sleep 0.2
done
# Traffic while the pages load, so the send-rate charts have something to draw.
raftmq send Orders "order" --count 3000 >/dev/null &
sender=$!

shot() {
    local name=$1 tab=$2
    # The page polls once a second; let it run three seconds of its own time before the capture.
    "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1100,480 \
        --virtual-time-budget=3000 --screenshot="$OUT/$name.png" "http://127.0.0.1:$port/#$tab" \
        >/dev/null 2>&1
    if command -v pngquant >/dev/null; then
        pngquant --force --skip-if-larger --output "$OUT/$name.png" 64 "$OUT/$name.png" || true
    fi
    echo "$OUT/$name.png"
}
shot cluster cluster
shot topics topics
shot groups groups
wait "$sender" || true

master=$(raftmq --json cluster list | python3 -c '
import json, sys
for n in json.load(sys.stdin):
    if n["group"] == "broker-a" and n["role"] == "master":
        print("broker-a-%d" % n["node_id"])')
"$ROOT/scripts/cluster.sh" kill "$master"
sleep 3
shot after-failover cluster
