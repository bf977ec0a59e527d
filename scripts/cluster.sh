#!/usr/bin/env bash
# Starts, stops and inspects a local multi-node raftmq cluster.
#
#   scripts/cluster.sh up [--netns] [--lazyfs] [--secure] [CONFIG_DIR]
#                                          start every node of CONFIG_DIR (default cluster-config/local);
#                                          --netns (root): each node in a network namespace of its own;
#                                          --lazyfs (root): the data on a FUSE filesystem that power-off empties of unsynced writes;
#                                          --secure: a new cluster secret, admin, CA and node certificate (under
#                                          $RAFTMQ_HOME/secrets): peer authentication, auth = true and TLS on every
#                                          node (docs/security.md); the script's own CLI calls sign as the admin and
#                                          trust the CA
#   scripts/cluster.sh down [--purge]      stop every node (SIGTERM, then SIGKILL after 10 s); --purge deletes data and logs
#   scripts/cluster.sh status              which nodes run, and the cluster as the NameServer sees it
#   scripts/cluster.sh kill NODE           SIGKILL one node (e.g. broker-a-1)
#   scripts/cluster.sh stop NODE           stop one node cleanly
#   scripts/cluster.sh start NODE          start one node again on its data
#   scripts/cluster.sh add FILE...         add nodes to the running cluster: each FILE (GROUP-NODEID.toml) is
#                                          copied into the config directory (in a --netns cluster each node gets
#                                          a namespace, and the addresses are rewritten to it), then they start:
#                                          a broker with join = true, for `raftmq group add-node`; or the nodes
#                                          of a new group, which elect their master and register
#   scripts/cluster.sh pause NODE          SIGSTOP one node
#   scripts/cluster.sh resume NODE         SIGCONT one node
#   scripts/cluster.sh logs NODE [-f]      the last lines of a node's log (or follow it)
#   scripts/cluster.sh nodes               the node names of the running cluster
#   scripts/cluster.sh net cut A B [--one-way]   (--netns clusters) drop A's traffic to B, and B's to A
#   scripts/cluster.sh net isolate A       cut A from every node and from the clients (`client`)
#   scripts/cluster.sh net heal            remove every cut
#   scripts/cluster.sh power-off           (--lazyfs clusters) SIGKILL every broker at once, drop every write
#                                          not yet synced, remount; start the nodes again with start
#
# A node is a file of CONFIG_DIR: namesrv-N.toml or GROUP-NODEID.toml. Pid files, logs and data
# live under $RAFTMQ_HOME (default .cluster/ in the repository). Binaries are built in release
# mode unless $RAFTMQ_BIN_DIR names a directory holding them already.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN=${RAFTMQ_HOME:-$ROOT/.cluster}
STOP_TIMEOUT=${RAFTMQ_STOP_TIMEOUT:-10}
START_TIMEOUT=${RAFTMQ_START_TIMEOUT:-20}
READY_TIMEOUT=${RAFTMQ_READY_TIMEOUT:-60}

die() { echo "cluster.sh: $*" >&2; exit 1; }

# shellcheck source=lib/netns.sh
. "$ROOT/scripts/lib/netns.sh"

config_dir() {
    [ -f "$RUN/config-dir" ] || die "no cluster has been started here (run: scripts/cluster.sh up)"
    cat "$RUN/config-dir"
}

# Node names of a config dir, NameServers first.
nodes_of() {
    local dir=$1 f
    for f in "$dir"/namesrv-*.toml; do [ -e "$f" ] && basename "$f" .toml; done
    for f in "$dir"/*.toml; do
        case $(basename "$f") in namesrv-*) ;; *) basename "$f" .toml ;; esac
    done
}

is_namesrv() { case $1 in namesrv-*) return 0 ;; *) return 1 ;; esac; }

pid_of() { [ -f "$RUN/pids/$1.pid" ] && cat "$RUN/pids/$1.pid" || true; }

# Alive: exists and is not a zombie (a killed node whose parent has not reaped it yet is gone).
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ] && return 0
    # A killed process's main thread turns zombie before its other threads are gone (one may be
    # finishing an fsync), and until then the process still holds its ports.
    [ "$(awk '/^Threads:/ {print $2}' "/proc/$1/status" 2>/dev/null)" -gt 1 ] 2>/dev/null
}

running() {
    local pid
    pid=$(pid_of "$1")
    [ -n "$pid" ] && alive "$pid"
}

state_of() {
    local pid
    pid=$(pid_of "$1")
    if [ -z "$pid" ] || ! alive "$pid"; then echo stopped; return; fi
    case $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) in
        T | t) echo paused ;;
        *) echo running ;;
    esac
}

bin_dir() {
    if [ -n "${RAFTMQ_BIN_DIR:-}" ]; then
        echo "$RAFTMQ_BIN_DIR"
    else
        echo "${CARGO_TARGET_DIR:-$ROOT/target}/release"
    fi
}

ensure_binaries() {
    local bin
    bin=$(bin_dir)
    if [ -z "${RAFTMQ_BIN_DIR:-}" ]; then
        "$ROOT/scripts/install-deps.sh"
        echo "building release binaries (the first build compiles RocksDB and takes several minutes)..."
        (cd "$ROOT" && cargo build --release --bins --quiet)
    fi
    for b in raftmq-namesrv raftmq-broker raftmq; do
        [ -x "$bin/$b" ] || die "missing binary $bin/$b (set RAFTMQ_BIN_DIR or let the script build it)"
    done
}

namesrv_addrs() {
    local dir=$1 f
    for f in "$dir"/namesrv-*.toml; do
        [ -e "$f" ] && sed -n 's/^listen *= *"\(.*\)".*/\1/p' "$f"
    done
}

# Starting a node is two steps, so `up` can start many at once: launch_node spawns the process
# and notes where its log stood; await_node waits until it reports listening. A group whose
# nodes start together elects as soon as two are up, even if a third starts slowly.
launch_node() {
    local name=$1 dir bin cfg log
    dir=$(config_dir)
    bin=$(bin_dir)
    cfg="$dir/$name.toml"
    [ -f "$cfg" ] || die "no node $name in $dir"
    if running "$name"; then
        echo "$name is already running (pid $(pid_of "$name"))"
        return 0
    fi
    mkdir -p "$RUN/logs" "$RUN/pids" "$RUN/data"
    log="$RUN/logs/$name.log"
    touch "$log"
    wc -l < "$log" > "$RUN/pids/$name.from"
    # In a --netns cluster the node runs in its namespace (`ip netns exec` execs it: same pid).
    local in_ns
    in_ns=$(net_exec_prefix "$name")
    # A --secure cluster: every node gets the security table of its kind (see secure_setup).
    local security=()
    if is_namesrv "$name"; then
        [ -f "$RUN/secrets/namesrv-security.toml" ] && security=(--security-config "$RUN/secrets/namesrv-security.toml")
        $in_ns nohup "$bin/raftmq-namesrv" --config "$cfg" "${security[@]}" >> "$log" 2>&1 < /dev/null &
    else
        [ -f "$RUN/secrets/broker-security.toml" ] && security=(--security-config "$RUN/secrets/broker-security.toml")
        $in_ns nohup "$bin/raftmq-broker" --config "$cfg" --data-dir "$RUN/data/$name" "${security[@]}" >> "$log" 2>&1 < /dev/null &
    fi
    echo "$!" > "$RUN/pids/$name.pid"
}

await_node() {
    local name=$1 cfg log pid lines deadline
    # Not launched by this run (it was already running).
    [ -f "$RUN/pids/$name.from" ] || return 0
    cfg="$(config_dir)/$name.toml"
    log="$RUN/logs/$name.log"
    lines=$(cat "$RUN/pids/$name.from")
    pid=$(pid_of "$name")
    deadline=$(( $(date +%s) + START_TIMEOUT ))
    while ! tail -n +"$((lines + 1))" "$log" | grep -q "listening on"; do
        if ! alive "$pid"; then
            rm -f "$RUN/pids/$name.pid" "$RUN/pids/$name.from"
            echo "cluster.sh: $name did not come up; the end of $log:" >&2
            tail -n 15 "$log" | sed 's/^/    /' >&2
            if tail -n +"$((lines + 1))" "$log" | grep -qi "address already in use"; then
                echo "cluster.sh: a port of $name is in use by another process (see $cfg)" >&2
            fi
            exit 1
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            rm -f "$RUN/pids/$name.from"
            echo "cluster.sh: $name did not report listening within ${START_TIMEOUT}s; the end of $log:" >&2
            tail -n 15 "$log" | sed 's/^/    /' >&2
            exit 1
        fi
        sleep 0.01
    done
    rm -f "$RUN/pids/$name.from"
    echo "started $name (pid $pid)"
}

start_node() {
    launch_node "$1"
    await_node "$1"
}

stop_pid() {
    local name=$1 signal=$2 pid deadline
    pid=$(pid_of "$name")
    if [ -z "$pid" ] || ! alive "$pid"; then
        rm -f "$RUN/pids/$name.pid"
        return 0
    fi
    if [ "$signal" = KILL ]; then
        kill -KILL "$pid" 2>/dev/null || true
    else
        kill -CONT "$pid" 2>/dev/null || true
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$(( $(date +%s) + STOP_TIMEOUT ))
        while alive "$pid" && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.05; done
        if alive "$pid"; then
            echo "$name did not stop within ${STOP_TIMEOUT}s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    while alive "$pid"; do sleep 0.01; done
    rm -f "$RUN/pids/$name.pid"
}

# --secure: a random cluster secret and bootstrap admin, and the security tables that name them
# (brokers: peer authentication and auth; NameServers: peer authentication). Kept until
# `down --purge`, so restarted nodes keep the same secrets.
secure_setup() {
    local dir=$1 s=$RUN/secrets sans ip tls
    [ -f "$s/broker-security.toml" ] && return 0
    command -v openssl >/dev/null || die "--secure needs openssl (scripts/install-deps.sh installs it)"
    mkdir -p "$s"
    chmod 700 "$s"
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$s/cluster.secret"
    printf 'access-key = "admin"\nsecret-key = "%s"\n' "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$s/admin.toml"
    # One CA and one certificate for every node: its names are every address of the config dir
    # (and, in a --netns cluster, every address of its subnet, for nodes added later).
    sans="DNS:localhost,IP:127.0.0.1"
    for ip in $(grep -ho '"[0-9.]*:[0-9]*"' "$dir"/*.toml | tr -d '"' | cut -d: -f1 | sort -u); do
        [ "$ip" = 127.0.0.1 ] || sans+=",IP:$ip"
    done
    if [ -d "$RUN/netns" ]; then
        for ip in $(seq 1 254); do sans+=",IP:$NET_PREFIX.$ip"; done
    fi
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
        -subj "/CN=raftmq local CA" -keyout "$s/ca.key" -out "$s/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=raftmq node" \
        -keyout "$s/node.key" -out "$s/node.csr" 2>/dev/null
    printf 'subjectAltName=%s\n' "$sans" > "$s/node.ext"
    openssl x509 -req -in "$s/node.csr" -CA "$s/ca.pem" -CAkey "$s/ca.key" -CAcreateserial -days 825 \
        -extfile "$s/node.ext" -out "$s/node.pem" 2>/dev/null
    chmod 600 "$s"/*
    tls=$(printf 'tls-cert-file = "%s"\ntls-key-file = "%s"\ntls-ca-file = "%s"\n' "$s/node.pem" "$s/node.key" "$s/ca.pem")
    printf 'cluster-secret-file = "%s"\n%s\n' "$s/cluster.secret" "$tls" > "$s/namesrv-security.toml"
    printf 'cluster-secret-file = "%s"\nauth = true\nadmin-credentials-file = "%s"\n%s\n' \
        "$s/cluster.secret" "$s/admin.toml" "$tls" > "$s/broker-security.toml"
}

# The script's own CLI calls sign as the admin of a --secure cluster, and trust its CA.
secure_env() {
    if [ -f "$RUN/secrets/admin.toml" ] && [ -z "${RAFTMQ_CREDENTIALS:-}" ]; then
        export RAFTMQ_CREDENTIALS=$RUN/secrets/admin.toml
    fi
    if [ -f "$RUN/secrets/ca.pem" ] && [ -z "${RAFTMQ_TLS_CA:-}" ]; then
        export RAFTMQ_TLS_CA=$RUN/secrets/ca.pem
    fi
}
secure_env

# The groups of a config dir with their node counts: broker-a:3,broker-b:3
expected_groups() {
    nodes_of "$1" | grep -v '^namesrv-' | sed 's/-[0-9]*$//' | sort | uniq -c | awk '{printf "%s%s:%s", sep, $2, $1; sep=","}'
}

wait_ready() {
    local dir=$1 bin expect ns
    bin=$(bin_dir)
    expect=$(expected_groups "$dir")
    [ -n "$expect" ] || return 0
    for ns in $(namesrv_addrs "$dir"); do
        "$bin/raftmq" --namesrv "$ns" cluster wait --expect "$expect" --timeout-secs "$READY_TIMEOUT" \
            || die "the cluster did not become ready (see scripts/cluster.sh status and logs)"
    done
}

print_cluster() {
    local addrs
    addrs=$(namesrv_addrs "$1" | paste -sd, -)
    if [ -n "$addrs" ]; then "$(bin_dir)/raftmq" --namesrv "$addrs" cluster list || true; fi
}

# The --lazyfs data filesystem: raftmq-lazyfs mounts $RUN/data over $RUN/disk.
lazyfs_pid() { [ -f "$RUN/pids/lazyfs.pid" ] && cat "$RUN/pids/lazyfs.pid" || true; }

lazyfs_mounted() { awk -v m="$RUN/data" '$2 == m && $1 == "raftmq-lazyfs" { found = 1 } END { exit !found }' /proc/mounts; }

lazyfs_mount() {
    local bin pid deadline
    bin=$(bin_dir)
    [ -x "$bin/raftmq-lazyfs" ] || die "missing binary $bin/raftmq-lazyfs"
    mkdir -p "$RUN/logs" "$RUN/pids" "$RUN/disk" "$RUN/data"
    nohup "$bin/raftmq-lazyfs" --backing "$RUN/disk" --mount "$RUN/data" >> "$RUN/logs/lazyfs.log" 2>&1 < /dev/null &
    pid=$!
    echo "$pid" > "$RUN/pids/lazyfs.pid"
    deadline=$(( $(date +%s) + START_TIMEOUT ))
    until lazyfs_mounted; do
        alive "$pid" || { tail -n 5 "$RUN/logs/lazyfs.log" >&2; die "raftmq-lazyfs did not mount $RUN/data"; }
        [ "$(date +%s)" -lt "$deadline" ] || die "raftmq-lazyfs did not mount $RUN/data within ${START_TIMEOUT}s"
        sleep 0.05
    done
}

# Stops raftmq-lazyfs with SIGNAL (TERM: clean; USR1: power loss) and waits until it is gone.
lazyfs_stop() {
    local signal=$1 pid deadline
    pid=$(lazyfs_pid)
    if [ -n "$pid" ] && alive "$pid"; then
        kill -"$signal" "$pid"
        deadline=$(( $(date +%s) + STOP_TIMEOUT ))
        while alive "$pid" && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.05; done
        alive "$pid" && { kill -KILL "$pid" 2>/dev/null || true; }
    fi
    rm -f "$RUN/pids/lazyfs.pid"
    if lazyfs_mounted; then umount -l "$RUN/data" || true; fi
}

cmd_power_off() {
    local name pids=() pid
    [ -f "$RUN/lazyfs" ] || die "this cluster was not started with --lazyfs"
    for name in $(nodes_of "$(config_dir)" | grep -v '^namesrv-'); do
        pid=$(pid_of "$name")
        if [ -n "$pid" ] && alive "$pid"; then pids+=("$pid"); fi
    done
    # All at once, as a power cut: no node gets to write after another has stopped.
    [ ${#pids[@]} -eq 0 ] || kill -KILL "${pids[@]}" 2>/dev/null || true
    for pid in "${pids[@]}"; do while alive "$pid"; do sleep 0.01; done; done
    for name in $(nodes_of "$(config_dir)" | grep -v '^namesrv-'); do rm -f "$RUN/pids/$name.pid"; done
    lazyfs_stop USR1
    tail -n 1 "$RUN/logs/lazyfs.log"
    lazyfs_mount
}

cmd_up() {
    local netns= lazyfs= secure=
    while :; do
        case ${1:-} in
            --netns) netns=1; shift ;;
            --lazyfs) lazyfs=1; shift ;;
            --secure) secure=1; shift ;;
            *) break ;;
        esac
    done
    local dir=${1:-$ROOT/cluster-config/local} name
    [ -d "$dir" ] || die "no config directory $dir"
    dir=$(cd "$dir" && pwd)
    [ -n "$(nodes_of "$dir")" ] || die "$dir holds no namesrv-N.toml or GROUP-N.toml"
    if [ -n "$netns" ]; then
        net_possible || die "--netns needs root and network namespaces (ip netns add failed)"
        for name in $(nodes_of "$dir"); do
            running "$name" 2>/dev/null && die "$name is running; run scripts/cluster.sh down first"
        done
        # The nodes get addresses of their own, so they run from a rewritten copy of the configs.
        mkdir -p "$RUN"
        rm -rf "$RUN/netns-config"
        cp -r "$dir" "$RUN/netns-config"
        dir=$RUN/netns-config
        # shellcheck disable=SC2046
        net_up "$dir" $(nodes_of "$dir")
    elif [ -d "$RUN/netns" ]; then
        net_down
    fi
    if [ -f "$RUN/config-dir" ] && [ "$(cat "$RUN/config-dir")" != "$dir" ]; then
        for name in $(nodes_of "$(cat "$RUN/config-dir")"); do
            running "$name" && die "a cluster from $(cat "$RUN/config-dir") is running; run scripts/cluster.sh down first"
        done
    fi
    mkdir -p "$RUN"
    echo "$dir" > "$RUN/config-dir"
    if [ -n "$secure" ]; then
        secure_setup "$dir"
        secure_env
    elif [ -f "$RUN/secrets/broker-security.toml" ]; then
        die "the cluster in $RUN was secured; run up --secure, or down --purge first"
    fi
    ensure_binaries
    if [ -n "$lazyfs" ]; then
        [ "$(id -u)" = 0 ] && [ -e /dev/fuse ] || die "--lazyfs needs root and /dev/fuse"
        lazyfs_mounted || lazyfs_mount
        touch "$RUN/lazyfs"
    fi
    # The NameServers first (a broker's first heartbeat then finds them), then every broker at
    # once.
    local namesrvs brokers
    namesrvs=$(nodes_of "$dir" | grep '^namesrv-' || true)
    brokers=$(nodes_of "$dir" | grep -v '^namesrv-' || true)
    for name in $namesrvs; do launch_node "$name"; done
    for name in $namesrvs; do await_node "$name"; done
    for name in $brokers; do launch_node "$name"; done
    for name in $brokers; do await_node "$name"; done
    wait_ready "$dir"
    print_cluster "$dir"
    echo
    echo "NameServers: $(namesrv_addrs "$dir" | paste -sd, -)"
    echo "logs: $RUN/logs   data: $RUN/data   pids: $RUN/pids"
    if [ -n "$secure" ]; then
        echo "secured: admin credentials in $RUN/secrets/admin.toml, CA in $RUN/secrets/ca.pem"
        echo "try:  RAFTMQ_CREDENTIALS=$RUN/secrets/admin.toml RAFTMQ_TLS_CA=$RUN/secrets/ca.pem $(bin_dir)/raftmq --namesrv $(namesrv_addrs "$dir" | paste -sd, -) topic create TopicTest"
    else
        echo "try:  $(bin_dir)/raftmq --namesrv $(namesrv_addrs "$dir" | paste -sd, -) topic create TopicTest"
    fi
}

cmd_down() {
    local purge=${1:-} name dir
    if [ -f "$RUN/config-dir" ]; then
        dir=$(cat "$RUN/config-dir")
        # Brokers first, so they can unregister from running NameServers.
        for name in $(nodes_of "$dir" | grep -v '^namesrv-') $(nodes_of "$dir" | grep '^namesrv-'); do
            if running "$name"; then stop_pid "$name" TERM && echo "stopped $name"; fi
        done
    fi
    [ -n "$(lazyfs_pid)" ] && lazyfs_stop TERM
    if [ "$purge" = --purge ]; then
        # The chaos suite's disk-full fault mounts small tmpfs data dirs; never leave one behind.
        if [ -r /proc/mounts ]; then
            awk -v run="$RUN/" 'index($2, run) == 1 { print $2 }' /proc/mounts | while read -r m; do umount "$m" || true; done
        fi
        [ -d "$RUN/netns" ] && net_down
        rm -rf "$RUN"
        echo "removed $RUN"
    fi
}

cmd_status() {
    local dir name
    dir=$(config_dir)
    printf '%-14s %-8s %s\n' NODE PID STATE
    for name in $(nodes_of "$dir"); do
        printf '%-14s %-8s %s\n' "$name" "$(pid_of "$name")" "$(state_of "$name")"
    done
    echo
    print_cluster "$dir"
}

# Every file is in place (and, in a --netns cluster, has its namespace and addresses) before any
# node starts: the nodes of a new group name each other.
cmd_add() {
    local file name dir names=()
    [ $# -gt 0 ] || die "add FILE...: name nodes' config files (GROUP-NODEID.toml)"
    dir=$(config_dir)
    for file in "$@"; do
        [ -f "$file" ] || die "add: no file $file"
        name=$(basename "$file" .toml)
        case $name in
            namesrv-*) ;;
            *-[0-9]*) ;;
            *) die "add $file: the file's name must be GROUP-NODEID.toml or namesrv-N.toml" ;;
        esac
        [ -f "$dir/$name.toml" ] && die "$dir has a node $name already"
    done
    for file in "$@"; do
        name=$(basename "$file" .toml)
        cp "$file" "$dir/$name.toml"
        names+=("$name")
    done
    if [ -d "$RUN/netns" ] && ! net_add "$dir" "${names[@]}"; then
        for name in "${names[@]}"; do rm -f "$dir/$name.toml"; done
        die "no namespaces for ${names[*]}"
    fi
    for name in "${names[@]}"; do launch_node "$name"; done
    for name in "${names[@]}"; do
        await_node "$name"
        echo "added $name: its config is $dir/$name.toml"
    done
}

need_node() {
    [ -n "${1:-}" ] || die "name a node (scripts/cluster.sh nodes lists them)"
    [ -f "$(config_dir)/$1.toml" ] || die "no node $1 in $(config_dir)"
}

case ${1:-} in
    up) shift; cmd_up "$@" ;;
    down) shift; cmd_down "${1:-}" ;;
    status) cmd_status ;;
    nodes) nodes_of "$(config_dir)" ;;
    kill) need_node "${2:-}"; stop_pid "$2" KILL; echo "killed $2" ;;
    stop) need_node "${2:-}"; stop_pid "$2" TERM; echo "stopped $2" ;;
    start) need_node "${2:-}"; start_node "$2" ;;
    add) shift; cmd_add "$@" ;;
    pause) need_node "${2:-}"; running "$2" || die "$2 is not running"; kill -STOP "$(pid_of "$2")"; echo "paused $2" ;;
    resume) need_node "${2:-}"; running "$2" || die "$2 is not running"; kill -CONT "$(pid_of "$2")"; echo "resumed $2" ;;
    power-off) cmd_power_off ;;
    net)
        [ -d "$RUN/netns" ] || die "this cluster was not started with --netns"
        case ${2:-} in
            cut)
                [ -n "${3:-}" ] && [ -n "${4:-}" ] || die "net cut A B [--one-way]"
                net_drop "$3" "$4" || die "cannot cut $3 from $4"
                [ "${5:-}" = --one-way ] || net_drop "$4" "$3" || die "cannot cut $4 from $3"
                echo "cut $3 -> $4$([ "${5:-}" = --one-way ] || echo " and back")" ;;
            isolate)
                [ -n "${3:-}" ] || die "net isolate NODE"
                for other in client $(nodes_of "$(config_dir)"); do
                    [ "$other" = "$3" ] && continue
                    net_drop "$3" "$other" && net_drop "$other" "$3" || die "cannot isolate $3"
                done
                echo "isolated $3" ;;
            heal) net_heal; echo "healed" ;;
            *) die "net cut|isolate|heal" ;;
        esac ;;
    logs)
        need_node "${2:-}"
        if [ "${3:-}" = -f ]; then tail -n 50 -f "$RUN/logs/$2.log"; else tail -n "${LINES:-50}" "$RUN/logs/$2.log"; fi ;;
    -h | --help | help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
