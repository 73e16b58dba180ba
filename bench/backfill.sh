#!/usr/bin/env bash
# Backfill benchmark: a 1M-row W1-shaped table backfilled through to a loopback receiver, beside
# COPY (SELECT to_jsonb(t) ...) TO STDOUT as the limit. Builds the release binary, then runs
# benches/backfill.rs (see its header). BACKFILL_BENCH_ROWS, BACKFILL_BENCH_CHUNK override.
# Usage: bash bench/backfill.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin walhook
exec cargo bench --bench backfill
