#!/usr/bin/env bash
# Runs openraft's own unit tests (190 in 0.9.25, the engine's among them) on the vendored, patched
# crate: a fork that stays must pass its upstream's tests for the parts it touches. The crate is
# copied out first, so that its lockfile and build stay out of the repository.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$ROOT/vendor/openraft/." "$work/"
cd "$work"
CARGO_TARGET_DIR=${OPENRAFT_TARGET_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/openraft} cargo test --lib --features serde "$@"
