#!/usr/bin/env bash
# A short load test for CI: a few hundred devices for a few seconds, in each scenario. Fails on
# any lost or duplicated command or any error (not on speed). Uses debug builds unless
# PROFILE=release is set.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE="${PROFILE:-debug}"
flag=()
[[ "$PROFILE" == release ]] && flag=(--release)
cargo build --quiet "${flag[@]}" --bin wheresmyfox
cargo build --quiet "${flag[@]}" -p loadtest
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ "$TARGET_DIR" == /* ]] || TARGET_DIR="$PWD/$TARGET_DIR"
BIN="$TARGET_DIR/$PROFILE"

DATA="$(mktemp -d)"
OUT="$(mktemp -d)"
LOG="$OUT/server.log"
cleanup() {
    local rc=$?
    [[ -n "${SERVER:-}" ]] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
    [[ $rc -ne 0 ]] && tail -n 40 "$LOG" >&2
    rm -rf "$DATA" "$OUT"
    exit $rc
}
trap cleanup EXIT

RUST_LOG=warn,wheresmyfox=info "$BIN/wheresmyfox" serve --config loadtest/gateway.toml \
    --listen 127.0.0.1:0 --data-dir "$DATA" >"$LOG" 2>&1 &
SERVER=$!
for _ in $(seq 1 100); do
    ADDR=$(sed -n 's/.*addr=\([0-9.:]*\).*/\1/p' "$LOG" | head -n 1)
    [[ -n "$ADDR" ]] && break
    sleep 0.1
done
[[ -n "$ADDR" ]] || { echo "smoke: the server did not start" >&2; exit 1; }

for scenario in steady storm flaky; do
    echo "--- loadtest smoke: $scenario"
    "$BIN/loadtest" --server "$ADDR" --devices 300 --rate 100 --duration 3 --wait 10 \
        --scenario "$scenario" --server-pid "$SERVER" --out "$OUT/$scenario" --strict 2>/dev/null
    cat "$OUT/$scenario/summary.md"
done
echo "smoke: 3 passed, 0 failed"
