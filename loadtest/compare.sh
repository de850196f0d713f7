#!/usr/bin/env bash
# The gateway and nginx + Nchan under the same load, one after the other, on this machine:
#
#   bash loadtest/compare.sh                      # 15,000 devices, 1,000 commands/s for 30 s
#   DEVICES=2000 DURATION=10 bash loadtest/compare.sh
#
# For each target: a steady run at RATE (memory per parked device, command-to-device latency),
# then a run offered MAX_RATE commands/s (the rate each actually sustains). Writes every run's
# result.json and summary.md under OUT, and OUT/compare.md with the figures side by side and
# the ratios (gateway / Nchan). Release builds; installs nginx and Nchan when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICES="${DEVICES:-15000}"
RATE="${RATE:-1000}"
DURATION="${DURATION:-30}"
MAX_RATE="${MAX_RATE:-10000}"
MAX_DURATION="${MAX_DURATION:-10}"
OUT="${OUT:-loadtest/results/compare}"
GATEWAY_ADDR=127.0.0.1:8080
NCHAN_ADDR=127.0.0.1:8090

cargo build --quiet --release --bin wheresmyfox
cargo build --quiet --release -p loadtest
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ "$TARGET_DIR" == /* ]] || TARGET_DIR="$PWD/$TARGET_DIR"
BIN="$TARGET_DIR/release"

WORK="$(mktemp -d)"
SERVER=""
cleanup() {
    [[ -n "$SERVER" ]] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
stop_server() {
    kill "$SERVER" && wait "$SERVER" 2>/dev/null || true
    SERVER=""
}
mkdir -p "$OUT"

# Each target in a run of its own, with nothing else loading the machine.
load() {
    local target=$1 addr=$2 name=$3 rate=$4 duration=$5
    echo "=== $name: $target, $DEVICES devices, $rate commands/s for $duration s" >&2
    "$BIN/loadtest" --target "$target" --server "$addr" --devices "$DEVICES" \
        --rate "$rate" --duration "$duration" --server-pid "$SERVER" \
        --out "$OUT/$name" --plot
}

# The gateway.
RUST_LOG=warn,wheresmyfox=info "$BIN/wheresmyfox" serve --config loadtest/gateway.toml \
    --listen "$GATEWAY_ADDR" --data-dir "$WORK/data" >"$WORK/gateway.log" 2>&1 &
SERVER=$!
sleep 1
load gateway "$GATEWAY_ADDR" gateway-steady "$RATE" "$DURATION"
load gateway "$GATEWAY_ADDR" gateway-max "$MAX_RATE" "$MAX_DURATION"
stop_server

# nginx + Nchan.
NCHAN_PREFIX="$WORK/nchan" bash loadtest/nchan/run.sh "$NCHAN_ADDR" 2>"$WORK/nchan.log" &
SERVER=$!
for _ in $(seq 1 100); do
    curl -sf "http://$NCHAN_ADDR/nchan_status" >/dev/null 2>&1 && break
    sleep 0.1
done
load nchan "$NCHAN_ADDR" nchan-steady "$RATE" "$DURATION"
load nchan "$NCHAN_ADDR" nchan-max "$MAX_RATE" "$MAX_DURATION"
stop_server

python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
r = {name: json.loads((out / name / "result.json").read_text())
     for name in ["gateway-steady", "gateway-max", "nchan-steady", "nchan-max"]}
g, n = r["gateway-steady"], r["nchan-steady"]
def kib(x): return x["bytes_per_parked_device"] / 1024
rows = [
    ("memory per parked connection (KiB)", kib(g), kib(n)),
    ("command to device p50 (ms)", g["command_to_device"]["p50_ms"], n["command_to_device"]["p50_ms"]),
    ("command to device p99 (ms)", g["command_to_device"]["p99_ms"], n["command_to_device"]["p99_ms"]),
    ("command to device p99.9 (ms)", g["command_to_device"]["p999_ms"], n["command_to_device"]["p999_ms"]),
    ("sender request p99 (ms)", g["owner_request"]["p99_ms"], n["owner_request"]["p99_ms"]),
    ("all parked after start (s)", g["parked_in_secs"], n["parked_in_secs"]),
    (f"sustained commands/s (offered {r['gateway-max']['rate_target']:.0f}/s)",
     r["gateway-max"]["commands_per_sec"], r["nchan-max"]["commands_per_sec"]),
]
text = [f"# Gateway and nginx + Nchan, {g['devices']} parked devices, {g['rate_target']:.0f} commands/s\n",
        "| figure | gateway | nginx + Nchan | gateway / Nchan |", "|---|---:|---:|---:|"]
for name, a, b in rows:
    text.append(f"| {name} | {a:.2f} | {b:.2f} | {a / b if b else float('nan'):.2f} |")
text.append("")
for name, x in r.items():
    text.append(f"- {name}: sent {x['sent']}, received {x['received']}, lost {x['lost']}, "
                f"duplicated {x['duplicated']}, skipped {x['skipped']}, errors {sum(x['errors'].values())}")
(out / "compare.md").write_text("\n".join(text) + "\n")
print("\n".join(text))
PY
