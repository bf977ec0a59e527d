#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test raftmq, and nothing else.
# Cheap when everything is there: it only looks.
set -euo pipefail

# Each decision is a function of scripts/lib/deps.sh, tested against fake roots.
. "$(dirname "$0")/lib/deps.sh"

read -r -a need <<<"$(deps_needed)"
if ((${#need[@]})); then
    echo "install-deps: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt_log=$(mktemp)
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } >"$apt_log" 2>&1; then
        cat "$apt_log" >&2
        echo "install-deps: apt-get failed installing ${need[*]}" >&2
        exit 1
    fi
    rm -f "$apt_log"
    # Checked again: a package that installed but did not bring what the build looks for (a
    # python3 that is not Debian's, say) is named here rather than failing a build later.
    read -r -a still <<<"$(deps_needed)"
    if ((${#still[@]})) && [ "${still[*]}" = python3-pip ]; then
        python3 -m ensurepip --upgrade >/dev/null 2>&1 || true
        read -r -a still <<<"$(deps_needed)"
    fi
    if ((${#still[@]})); then
        echo "install-deps: still missing after installing: ${still[*]} (python3: $(command -v python3 || echo none))" >&2
        exit 1
    fi
fi

if ! command -v cargo >/dev/null; then
    echo "install-deps: cargo is missing; install a Rust toolchain (rustup) first" >&2
    exit 1
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$component"
    fi
done

# The official Apache RocketMQ 5 Python client, pinned: the compatibility tests check raftmq
# against exactly this version.
ROCKETMQ_PY=5.1.2
if ! python3 -c "import importlib.metadata as m, sys; sys.exit(m.version('rocketmq-python-client') != '$ROCKETMQ_PY')" 2>/dev/null; then
    echo "install-deps: installing rocketmq-python-client==$ROCKETMQ_PY (pip)"
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "rocketmq-python-client==$ROCKETMQ_PY" \
        || python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --break-system-packages "rocketmq-python-client==$ROCKETMQ_PY"
fi

# The official Node.js client, at the version its lockfile pins.
node_check="$(dirname "$0")/../tests/rocketmq5/node-client"
if [ ! -d "$node_check/node_modules/rocketmq-client-nodejs" ]; then
    echo "install-deps: installing rocketmq-client-nodejs (npm ci in tests/rocketmq5/node-client)"
    (cd "$node_check" && npm ci --no-audit --no-fund --loglevel=error)
fi
