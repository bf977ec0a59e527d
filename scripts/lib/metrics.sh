# Reading the nodes' /metrics from a benchmark script (sourced by scripts/bench.sh and
# scripts/bench-metrics.sh), with bash's /dev/tcp: no HTTP client needed.

# The metrics ports of the node configs given (127.0.0.1 addresses only), one per line.
metrics_ports() {
    sed -n 's/^metrics-addr = "127\.0\.0\.1:\([0-9]*\)".*/\1/p' "$@"
}

# One GET /metrics from 127.0.0.1:PORT, the whole answer (headers too) on stdout; fails if the
# port does not accept.
metrics_get() {
    exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf 'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
    cat <&3
    exec 3<&-
}
