#!/usr/bin/env bash
# End-to-end benchmark: W1 through delivery to a local receiver, and commit → receiver latency
# at 5k changes/s. Builds the release binary, then runs benches/e2e.rs (see its header).
# Usage: bash bench/e2e.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin walhook
exec cargo bench --bench e2e
