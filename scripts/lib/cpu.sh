# CPU time of a benchmark's processes (sourced by scripts/lib/bench.sh and scripts/bench-scale.sh).
# On 2 shared cores the rate moves with whatever else runs; the CPU a message costs moves far less,
# so every throughput row reports it (docs/benchmarks.md). Needs RAFTMQ_HOME.

# CPU time (ms, user + system) of every broker process of the cluster so far.
broker_cpu_ms() {
    local f total=0 ticks
    for f in "$RAFTMQ_HOME"/pids/broker-*.pid; do
        ticks=$(awk '{print $14 + $15}' "/proc/$(cat "$f")/stat")
        total=$((total + ticks))
    done
    echo $((total * 1000 / $(getconf CLK_TCK)))
}

# Runs a command with its stdout to FILE; prints the command's own CPU time (user + system, s).
client_cpu_s() {
    local file=$1
    shift
    { TIMEFORMAT='%U %S'; time "$@" > "$file"; } 2>&1 | awk 'END {print $1 + $2}'
}
