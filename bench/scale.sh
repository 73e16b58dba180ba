#!/usr/bin/env bash
# Scale benchmark (issue #11): 10,000 subscriptions and one INSERT; 1,000 subscriptions with dead
# and slow endpoints at 1k changes/s; fan-out of 100 subscriptions on W1 at 1/10 scale. Builds the
# release binary, then runs benches/scale.rs (see its header). walhook's logs:
# $TMPDIR/walhook-scale-*.log. SCALE_ONLY=1,2 runs a subset.
# Usage: bash bench/scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin walhook
exec cargo bench --bench scale
