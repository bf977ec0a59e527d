#!/usr/bin/env bash
# The test command: installs what is missing (scripts/install-deps.sh), builds the binaries the
# black-box tests start together with every test (one build, so each dependency is compiled once),
# then runs every test binary, even after one fails.
# Extra arguments go to `cargo test` (for example a test name filter).
# It ends with one summary line over every test binary: "tests: N passed, N failed, N skipped".
# A test that needs root counts as skipped when run without it (and fails on CI, which has root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# Bins and tests in one command: cargo resolves features with the dev-dependencies for both, so
# the `cargo test` below finds everything built. A bins-only build resolves them without, and
# the test build compiled RocksDB a second time.
cargo build --workspace --bins --tests
log=$(mktemp)
skipped_file=$(mktemp)
trap 'rm -f "$log" "$skipped_file"' EXIT
status=0
RAFTMQ_SKIPPED_FILE=$skipped_file cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
root_skipped=$(grep -c '^SKIPPED: ' "$skipped_file" || true)
awk -v rs="$root_skipped" '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p - rs, f, s + rs }' "$log"
exit "$status"
