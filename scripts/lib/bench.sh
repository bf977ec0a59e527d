# shellcheck source=cpu.sh
. "$ROOT/scripts/lib/cpu.sh"

# The benchmarks' common start (sourced by scripts/bench.sh and scripts/bench-delay.sh): the
# small sample cluster (1 NameServer, 1 group of 3 nodes) from release binaries under
# $RAFTMQ_BENCH_HOME (default .bench), torn down on exit; `R` runs the CLI against it and
# `rss FIELD` prints VmRSS or VmHWM of every broker, in MB. Needs ROOT set; BENCH_CONFIG, when
# set, names the cluster's config directory instead of cluster-config/small.

export RAFTMQ_HOME=${RAFTMQ_BENCH_HOME:-$ROOT/.bench}
CLUSTER="$ROOT/scripts/cluster.sh"
BIN=${RAFTMQ_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
NS=127.0.0.1:9876

"$CLUSTER" down --purge >/dev/null 2>&1 || true
# BENCH_TMP, when set, is a directory of the caller's removed at the end too.
trap '"$CLUSTER" down --purge >/dev/null 2>&1 || true; [ -z "${BENCH_TMP:-}" ] || rm -rf "$BENCH_TMP"' EXIT
BENCH_CONFIG=${BENCH_CONFIG:-$ROOT/cluster-config/small}
"$CLUSTER" up "$BENCH_CONFIG" >/dev/null
R() { "$BIN/raftmq" --namesrv "$NS" "$@"; }

rss() {
    local field=$1 out="" f pid
    for f in "$RAFTMQ_HOME"/pids/broker-*.pid; do
        pid=$(cat "$f")
        out+="$(basename "$f" .pid)=$(awk -v k="$field:" '$1 == k {printf "%.1f", $2 / 1024}' "/proc/$pid/status")MB "
    done
    echo "$out"
}
