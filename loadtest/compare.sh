#!/usr/bin/env bash
# The gateway and nginx + Nchan under the same load, in alternating rounds, on this machine:
#
#   bash loadtest/compare.sh                      # 15,000 devices, 1,000 commands/s for 30 s, 2 rounds
#   DEVICES=2000 DURATION=10 ROUNDS=1 bash loadtest/compare.sh
#
# Each round runs, for each target in turn, a steady run at RATE (memory per parked device,
# command-to-device latency), then a run offered MAX_RATE commands/s (the rate each actually
# sustains), each target freshly started. The targets: the gateway as configured by default
# (`storage.fsync = "always"`: every command is flushed to disk before it is answered or
# delivered), the same gateway with `fsync = "interval"` (written before it is answered,
# flushed within 100 ms: the durability closest to Nchan's, which keeps messages in memory
# only), and nginx + Nchan. Rounds alternate the targets because the noise of a shared virtual
# machine changes from one minute to the next; the summary gives every round's figure and the
# median. Writes every run's result.json and summary.md under OUT, and OUT/compare.md with the
# figures side by side and the ratios (gateway / Nchan). Release builds; installs nginx and
# Nchan when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICES="${DEVICES:-15000}"
RATE="${RATE:-1000}"
DURATION="${DURATION:-30}"
MAX_RATE="${MAX_RATE:-10000}"
MAX_DURATION="${MAX_DURATION:-10}"
ROUNDS="${ROUNDS:-2}"
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

# One run against the server started last, with nothing else loading the machine.
load() {
    local target=$1 addr=$2 name=$3 rate=$4 duration=$5
    shift 5
    echo "=== $name: $target, $DEVICES devices, $rate commands/s for $duration s" >&2
    "$BIN/loadtest" --target "$target" --server "$addr" --devices "$DEVICES" \
        --rate "$rate" --duration "$duration" --server-pid "$SERVER" \
        --out "$OUT/$name" --plot "$@"
}

# The gateway, flushing as `fsync` says; its devices are registered in the first run and
# reused after.
gateway() {
    local name=$1 fsync=$2 round=$3
    WHERESMYFOX_STORAGE__FSYNC="$fsync" RUST_LOG=warn,wheresmyfox=info "$BIN/wheresmyfox" serve \
        --config loadtest/gateway.toml --listen "$GATEWAY_ADDR" --data-dir "$WORK/data" \
        >>"$WORK/gateway.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 1 300); do
        curl -sf "http://$GATEWAY_ADDR/__heartbeat__" >/dev/null 2>&1 && break
        sleep 0.1
    done
    load gateway "$GATEWAY_ADDR" "$name-steady-$round" "$RATE" "$DURATION" --state "$WORK/devices.json"
    load gateway "$GATEWAY_ADDR" "$name-max-$round" "$MAX_RATE" "$MAX_DURATION" --state "$WORK/devices.json"
    stop_server
}

for round in $(seq 1 "$ROUNDS"); do
    gateway gateway always "$round"
    gateway gateway-interval interval "$round"

    # nginx + Nchan.
    NCHAN_PREFIX="$WORK/nchan" bash loadtest/nchan/run.sh "$NCHAN_ADDR" 2>>"$WORK/nchan.log" &
    SERVER=$!
    for _ in $(seq 1 100); do
        curl -sf "http://$NCHAN_ADDR/nchan_status" >/dev/null 2>&1 && break
        sleep 0.1
    done
    load nchan "$NCHAN_ADDR" "nchan-steady-$round" "$RATE" "$DURATION"
    load nchan "$NCHAN_ADDR" "nchan-max-$round" "$MAX_RATE" "$MAX_DURATION"
    stop_server
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys, pathlib
out, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
def runs(name):
    return [json.loads((out / f"{name}-{i}" / "result.json").read_text()) for i in range(1, rounds + 1)]
targets = ["gateway", "gateway-interval", "nchan"]
r = {f"{t}-{kind}": runs(f"{t}-{kind}") for t in targets for kind in ["steady", "max"]}
figures = [
    ("memory per parked connection (KiB)", "steady", lambda x: x["bytes_per_parked_device"] / 1024),
    ("the same once the load is over (KiB)", "steady",
     lambda x: x["bytes_per_parked_device_after_load"] / 1024),
    ("command to device p50 (ms)", "steady", lambda x: x["command_to_device"]["p50_ms"]),
    ("command to device p99 (ms)", "steady", lambda x: x["command_to_device"]["p99_ms"]),
    ("command to device p99.9 (ms)", "steady", lambda x: x["command_to_device"]["p999_ms"]),
    ("sender request p99 (ms)", "steady", lambda x: x["owner_request"]["p99_ms"]),
    ("machine noise: a 1 ms sleep late by, p99 (ms)", "steady", lambda x: x["oversleep"]["p99_ms"]),
    ("all parked after start (s)", "steady", lambda x: x["parked_in_secs"]),
    (f"sustained commands/s (offered {r['gateway-max'][0]['rate_target']:.0f}/s)", "max",
     lambda x: x["commands_per_sec"]),
]
g0 = r["gateway-steady"][0]
text = [f"# Gateway and nginx + Nchan, {g0['devices']} parked devices, {g0['rate_target']:.0f} commands/s, "
        f"{rounds} round(s)\n",
        "Each cell: the median, then every round's figure in order. \"gateway\": `fsync = \"always\"` "
        "(the default); \"interval\": the same gateway with `fsync = \"interval\"`.\n",
        "| figure | gateway | interval | nginx + Nchan | gateway / Nchan | interval / Nchan |",
        "|---|---:|---:|---:|---:|---:|"]
cell = lambda m, v: f"{m:.2f} ({', '.join(f'{x:.2f}' for x in v)})"
ratio = lambda a, b: f"{a / b:.2f}" if b else "n/a"
for name, kind, get in figures:
    a, i, b = ([get(x) for x in r[f"{t}-{kind}"]] for t in targets)
    ma, mi, mb = statistics.median(a), statistics.median(i), statistics.median(b)
    text.append(f"| {name} | {cell(ma, a)} | {cell(mi, i)} | {cell(mb, b)} | {ratio(ma, mb)} | {ratio(mi, mb)} |")
text.append("")
for name, xs in r.items():
    for n, x in enumerate(xs, 1):
        text.append(f"- {name}-{n}: sent {x['sent']}, received {x['received']}, lost {x['lost']}, "
                    f"duplicated {x['duplicated']}, skipped {x['skipped']}, errors {sum(x['errors'].values())}")
(out / "compare.md").write_text("\n".join(text) + "\n")
print("\n".join(text))
PY
