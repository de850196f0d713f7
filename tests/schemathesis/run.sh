#!/usr/bin/env bash
# Runs schemathesis (property-based API testing, from PyPI) against a live server with
# docs/openapi.yaml: no answer may be a 5xx, and every answer must match the document
# (status code, content type, headers, body schema).
#
#   bash tests/schemathesis/run.sh            # about a minute
#   MAX_TIME=600 bash tests/schemathesis/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

MAX_TIME="${MAX_TIME:-60}"
python3 -c 'import schemathesis' 2>/dev/null || python3 -m pip install --quiet schemathesis
cargo build --quiet --bin wheresmyfox
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ "$TARGET_DIR" == /* ]] || TARGET_DIR="$PWD/$TARGET_DIR"

WORK="$(mktemp -d)"
LOG="$WORK/server.log"
cleanup() {
    local rc=$?
    [[ -n "${SERVER:-}" ]] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
    [[ $rc -ne 0 ]] && tail -n 40 "$LOG" >&2
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT

# Short long polls so that generated `wait` values do not hold the run; rate limits off so
# that generated sign-ins reach the code behind them (429 is still in the document).
cat >"$WORK/gateway.toml" <<'EOF'
[poll]
wait_secs = 1
offline_after_secs = 5
[push]
# Generated push URLs name hosts nobody should be pinged at.
enabled = false
[limits]
sign_in_account_per_hour = 0
sign_in_address_per_hour = 0
commands_owner_per_minute = 0
EOF

RUST_LOG=warn,wheresmyfox=info "$TARGET_DIR/debug/wheresmyfox" serve --config "$WORK/gateway.toml" \
    --listen 127.0.0.1:0 --data-dir "$WORK/data" >"$LOG" 2>&1 &
SERVER=$!
ADDR=""
for _ in $(seq 1 100); do
    ADDR=$(sed -n 's/.*addr=\([0-9.:]*\).*/\1/p' "$LOG" | head -n 1)
    [[ -n "$ADDR" ]] && break
    sleep 0.1
done
[[ -n "$ADDR" ]] || { echo "schemathesis: the server did not start" >&2; exit 1; }
URL="http://$ADDR"

# An owner with one device, so that generated calls also meet a real account.
curl -sf -X POST "$URL/1/accounts" -H 'Content-Type: application/json' \
    -d '{"email":"schema@example.com","password":"schemathesis"}' >/dev/null
TOKEN=$(curl -sf -X POST "$URL/1/session" -H 'Content-Type: application/json' \
    -d '{"email":"schema@example.com","password":"schemathesis"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
curl -sf -X POST "$URL/1/register" -H 'Content-Type: application/json' \
    -H "Authorization: Bearer $TOKEN" \
    -d '{"secret":"00112233445566778899aabbccddeeff","pushurl":"https://push.example.invalid/x","name":"schema phone"}' >/dev/null

# signOut is left out: it would revoke the token the rest of the run uses (the authorization
# matrix in tests/authz.rs covers it).
schemathesis run docs/openapi.yaml --url "$URL" \
    --header "Authorization: Bearer $TOKEN" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
    --exclude-operation-id signOut \
    --phases examples,coverage,fuzzing \
    --max-time "$MAX_TIME" \
    --workers 1 \
    --request-timeout 10 \
    --seed 20261203 \
    --no-color
