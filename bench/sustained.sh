#!/usr/bin/env bash
# Sustained-load benchmark (issue #11): SUSTAINED_TOTAL rows (default 2,000,000) committed at
# SUSTAINED_RATE rows/s (default 5000) through one subscription; prints the outbox's size after the
# first 200k deliveries, at the end and after settling, lock waits > 100 ms, walhook's slowest
# statements, lag, latency and peak RSS. SUSTAINED_RETENTION sets [outbox] retention (default 30s).
# Builds the release binary, then runs benches/sustained.rs (see its header). walhook's log:
# $TMPDIR/walhook-sustained.log.
# Usage: bash bench/sustained.sh            (short run: SUSTAINED_TOTAL=300000 bash bench/sustained.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin walhook
exec cargo bench --bench sustained
