# Network namespaces for the chaos suite and the failover drill (sourced; needs root and `ip`).
#
# Every node of a cluster runs in a namespace of its own, joined to the host by a veth pair on one
# bridge, with an address of its own; the host side of the bridge is where the test clients run.
# A partition is then a real one: it cuts client, NameServer and Raft traffic alike, as a switch
# failure does, and the processes see only silence, never a refused connection.
#
# Cuts need no iptables and no tc module: a node that must not reach another gets a permanent
# neighbour entry for that address pointing at a MAC no one has, so its frames go nowhere. That
# is a one-way cut; both directions make a two-way one. Healing deletes those entries.
#
# State lives in $RUN/netns/NODE: "NAMESPACE ADDRESS HOST-VETH". The cluster script starts a node
# that has such a file inside its namespace.

NET_BRIDGE=${RAFTMQ_NET_BRIDGE:-rmq0}
NET_PREFIX=${RAFTMQ_NET_PREFIX:-10.77.0}
NET_HOST_ADDR=$NET_PREFIX.1
# Locally administered, unicast, and on no interface of the bridge.
NET_NOWHERE=02:00:00:00:de:ad

net_fail() { echo "netns: $*" >&2; return 1; }

# Whether this machine can make namespaces and bridges (root, iproute2, a kernel that allows it).
net_possible() {
    [ "$(id -u)" = 0 ] && command -v ip >/dev/null 2>&1 || return 1
    local probe=rmq-probe-$$
    ip netns add "$probe" 2>/dev/null || return 1
    ip netns del "$probe"
}

net_field() { # NODE FIELD(1 namespace, 2 address, 3 host veth)
    [ -f "$RUN/netns/$1" ] || net_fail "node $1 has no namespace" || return 1
    awk -v f="$2" '{print $f}' "$RUN/netns/$1"
}

# net_up CONFIG_DIR NODE...: the bridge, a namespace per node, and the configs in CONFIG_DIR
# rewritten so that every node listens on (and is reached at) its own address, ports unchanged.
net_up() {
    local dir=$1 k=10 name
    shift
    # One such network per machine: its bridge and addresses are fixed. Left over with no
    # process in any of its namespaces, it is removed.
    if ip link show "$NET_BRIDGE" >/dev/null 2>&1 && ! net_in_use; then
        net_down
    fi
    if ip link show "$NET_BRIDGE" >/dev/null 2>&1; then
        net_fail "a --netns cluster already runs on this machine (bridge $NET_BRIDGE); stop it first (scripts/cluster.sh down with its RAFTMQ_HOME)"
        return 1
    fi
    net_drop_veths
    mkdir -p "$RUN/netns"
    ip link add "$NET_BRIDGE" type bridge
    ip addr add "$NET_HOST_ADDR/24" dev "$NET_BRIDGE"
    ip link set "$NET_BRIDGE" up
    for name in "$@"; do
        k=$((k + 1))
        net_node "$dir" "$name" "$k"
    done
}

# net_node CONFIG_DIR NODE K: NODE's namespace, joined to the bridge with address PREFIX.K, and
# its own listening ports moved from 127.0.0.1 to that address in every config of CONFIG_DIR.
net_node() {
    local dir=$1 name=$2 k=$3 ns addr veth port f
    ns=rmq-$name addr=$NET_PREFIX.$k veth=rmqh$k
    ip netns add "$ns"
    ip link add "$veth" type veth peer name eth0 netns "$ns"
    ip link set "$veth" master "$NET_BRIDGE" up
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    echo "$ns $addr $veth" > "$RUN/netns/$name"
    for port in $(net_own_ports "$dir/$name.toml"); do
        for f in "$dir"/*.toml; do
            sed -i "s/\"127\.0\.0\.1:$port\"/\"$addr:$port\"/g" "$f"
        done
    done
}

# net_add CONFIG_DIR NODE...: namespaces for nodes added to a running --netns cluster (the next
# addresses after the highest in use), their configs already in CONFIG_DIR. First each new node's
# own ports move to its address in every config (the nodes of a new group name each other), then
# the older nodes' ports to theirs in the new configs. A port is matched only once its owner is
# known, new nodes first: a port a namespaced node holds looks free on the host and may be handed
# to a new node, and a new config means its own group by it.
net_add() {
    local dir=$1 k=10 last port f name other other_addr
    shift
    [ -d "$RUN/netns" ] || net_fail "not a --netns cluster" || return 1
    for name in "$@"; do
        [ -f "$RUN/netns/$name" ] && { net_fail "node $name has a namespace already"; return 1; }
    done
    local olds=()
    for f in "$RUN"/netns/*; do
        [ -e "$f" ] || continue
        olds+=("$(basename "$f")")
        last=$(awk '{print $2}' "$f" | awk -F. '{print $4}')
        [ "$last" -gt "$k" ] && k=$last
    done
    for name in "$@"; do
        k=$((k + 1))
        net_node "$dir" "$name" "$k"
    done
    for name in "$@"; do
        for other in "${olds[@]}"; do
            [ -f "$dir/$other.toml" ] || continue
            other_addr=$(net_field "$other" 2) || return 1
            for port in $(net_own_ports "$dir/$other.toml"); do
                sed -i "s/\"127\.0\.0\.1:$port\"/\"$other_addr:$port\"/g" "$dir/$name.toml"
            done
        done
    done
}

# The ports a node's config listens on: a NameServer's `listen`, a broker's own member entry,
# and either's `metrics-addr`.
net_own_ports() {
    awk '
        /^\[\[members\]\]/ { inmem = 1; cur = ""; next }
        /^node-id *=/ { gsub(/[^0-9]/, "", $0); if (inmem) cur = $0; else own = $0; next }
        /^listen *=/ && !inmem { print }
        /^metrics-addr *=/ && !inmem { print }
        /-addr *=/ && inmem && cur == own { print }
    ' "$1" | sed -n 's/.*"[^"]*:\([0-9][0-9]*\)".*/\1/p'
}

net_down() {
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^rmq-/ {print $1}'); do ip netns del "$ns" 2>/dev/null || true; done
    # A namespace outlives its name while anything still holds it (a socket closing, say): its
    # veth pairs are removed from the host side, so the next net_up finds the names free.
    net_drop_veths
    ip link del "$NET_BRIDGE" 2>/dev/null || true
    rm -rf "$RUN/netns"
}

# Whether a process runs in one of the namespaces.
net_in_use() {
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^rmq-/ {print $1}'); do
        [ -n "$(ip netns pids "$ns" 2>/dev/null)" ] && return 0
    done
    return 1
}

net_drop_veths() {
    local veth
    for veth in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep '^rmqh[0-9]*$'); do
        ip link del "$veth" 2>/dev/null || true
    done
}

# The namespace prefix a node's process is started with (empty when it has none).
net_exec_prefix() {
    [ -f "$RUN/netns/$1" ] && echo "ip netns exec $(net_field "$1" 1)"
    return 0
}

net_addr() { if [ "$1" = client ]; then echo "$NET_HOST_ADDR"; else net_field "$1" 2; fi; }

# net_drop FROM TO: frames from FROM to TO go nowhere (one way). FROM or TO may be `client`.
net_drop() {
    local to_addr
    to_addr=$(net_addr "$2") || return 1
    if [ "$1" = client ]; then
        ip neigh replace "$to_addr" lladdr "$NET_NOWHERE" nud permanent dev "$NET_BRIDGE"
    else
        ip -n "$(net_field "$1" 1)" neigh replace "$to_addr" lladdr "$NET_NOWHERE" nud permanent dev eth0
    fi
}

# Every cut healed: the false neighbour entries go and ARP finds the real ones again.
net_heal() {
    local f
    ip neigh flush dev "$NET_BRIDGE" nud permanent 2>/dev/null || true
    for f in "$RUN"/netns/*; do
        [ -e "$f" ] || continue
        ip -n "$(awk '{print $1}' "$f")" neigh flush dev eth0 nud permanent 2>/dev/null || true
    done
}
