#!/usr/bin/env bash
# Fuzzes the management API against openapi.yaml with schemathesis.
#
# Starts the API in-process on a throw-away Postgres (the ignored test `serve_for_fuzzing` in
# tests/it/api/e2e.rs, which creates table `orders`, one webhook and one dead letter), runs
# schemathesis with the management headers, and stops the server.
#
#   pip install schemathesis        # once
#   bench/fuzz_api.sh               # extra arguments go to `st run`, e.g. --max-examples 200
#
# Exit status: schemathesis's (non-zero when it found a failure).
set -euo pipefail
cd "$(dirname "$0")/.."

ADDR=${WALHOOK_FUZZ_ADDR:-127.0.0.1:18080}
SECS=${WALHOOK_FUZZ_SECS:-1800}

# Run the test binary itself (not through cargo), so that stopping it stops the server; its
# Postgres is cleaned up by the harness's guardian.
BIN=$(cargo test --test it --no-run 2>&1 | sed -n 's/.*Executable tests\/it\/main.rs (\(.*\))/\1/p' | tail -1)
WALHOOK_FUZZ_ADDR=$ADDR WALHOOK_FUZZ_SECS=$SECS "$BIN" serve_for_fuzzing --ignored --nocapture &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT

for _ in $(seq 1 120); do
    curl -fsS "http://$ADDR/healthz" >/dev/null 2>&1 && break
    sleep 0.5
done

# Schemathesis keeps its cache and reports in the working directory: keep them out of the tree.
SPEC=$PWD/openapi.yaml
CONF=$PWD/bench/schemathesis.toml
mkdir -p target/schemathesis && cd target/schemathesis
st --config-file "$CONF" run "$SPEC" \
    --url "http://$ADDR" \
    -H "Authorization: Bearer your-management-token" \
    -H "X-Project-ID: your-project-id" \
    -H "environment: master" \
    --checks all \
    --exclude-checks positive_data_acceptance \
    --workers 1 \
    "$@"
