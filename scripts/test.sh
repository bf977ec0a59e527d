#!/usr/bin/env bash
# The test command: builds the binaries the black-box tests start, then runs every test.
# Extra arguments go to `cargo test` (for example a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
cargo test --workspace "$@"
