#!/usr/bin/env bash
# Ingest benchmark W1: builds the release binary, then runs benches/w1.rs (see its header).
# Usage: bash bench/w1.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin walhook
exec cargo bench --bench w1
