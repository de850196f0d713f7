#!/usr/bin/env bash
# Device-side interoperability test: starts a wheresmyfox server on a free
# port with a throw-away data dir and runs test_device.py against it.
#
#   tests/interop/run.sh                   # builds with cargo
#   WHERESMYFOX_BIN=/path/to/wheresmyfox tests/interop/run.sh
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
export PYTHONDONTWRITEBYTECODE=1

if ! "$PYTHON" -c 'import mohawk' >/dev/null 2>&1; then
    echo "run.sh: installing mohawk" >&2
    "$PYTHON" -m pip install --quiet mohawk
fi

if [[ -n "${WHERESMYFOX_BIN:-}" ]]; then
    BIN="$WHERESMYFOX_BIN"
else
    (cd "$REPO_DIR" && cargo build --quiet)
    TARGET_DIR="${CARGO_TARGET_DIR:-target}"
    # A relative CARGO_TARGET_DIR is relative to where cargo ran: the repo.
    [[ "$TARGET_DIR" == /* ]] || TARGET_DIR="$REPO_DIR/$TARGET_DIR"
    BIN="$TARGET_DIR/debug/wheresmyfox"
fi
if [[ ! -x "$BIN" ]]; then
    echo "run.sh: server binary not found or not executable: $BIN" >&2
    exit 1
fi

DATA_DIR="$(mktemp -d)"
LOG_FILE="$(mktemp)"
# The test's devices name push URLs on the public internet; tests reach loopback only.
CONFIG_FILE="$(mktemp)"
printf '[push]\nenabled = false\n' >"$CONFIG_FILE"
SERVER_PID=""

cleanup() {
    local rc=$?
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ $rc -ne 0 ]]; then
        echo "run.sh: failed (exit $rc); server log:" >&2
        tail -n 50 "$LOG_FILE" >&2 || true
    fi
    rm -rf "$DATA_DIR" "$LOG_FILE" "$CONFIG_FILE"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

RUST_LOG=info "$BIN" serve --listen 127.0.0.1:0 --data-dir "$DATA_DIR" --config "$CONFIG_FILE" \
    >"$LOG_FILE" 2>&1 &
SERVER_PID=$!

ADDR=""
for _ in $(seq 1 300); do
    ADDR="$(grep -oE 'addr=127\.0\.0\.1:[0-9]+' "$LOG_FILE" | head -n 1 | cut -d= -f2 || true)"
    [[ -n "$ADDR" ]] && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "run.sh: the server exited before listening" >&2
        exit 1
    fi
    sleep 0.1
done
if [[ -z "$ADDR" ]]; then
    echo "run.sh: no 'addr=127.0.0.1:PORT' line in the server log after 30 s" >&2
    exit 1
fi
echo "run.sh: server $BIN listening on $ADDR (pid $SERVER_PID)"

"$PYTHON" "$SCRIPT_DIR/test_device.py" "http://$ADDR"
