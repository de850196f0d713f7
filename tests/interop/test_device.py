#!/usr/bin/env python3
"""Interoperability test of a wheresmyfox server, device side.

Usage: python3 test_device.py BASE_URL      (e.g. http://127.0.0.1:8080)

The device client (device_client.py) is built from docs/protocol.md alone.
Prints one line per check and, last, "N passed, M failed"; exits 0 only if
nothing failed.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from typing import Any

sys.dont_write_bytecode = True  # leave no __pycache__ in the work tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mohawk.exc  # noqa: E402

from device_client import (  # noqa: E402
    DeviceClient,
    PreparedRequest,
    ProtocolError,
    UnverifiedAnswer,
)

# mohawk warns on every response that it is not checking nonces (responses
# carry none); that is expected for a client.
logging.getLogger("mohawk").setLevel(logging.ERROR)

PASSED = 0
FAILED = 0


def check(cond: bool, what: str, detail: Any = None) -> bool:
    global PASSED, FAILED
    if cond:
        PASSED += 1
        print(f"ok   - {what}", flush=True)
    else:
        FAILED += 1
        extra = f"\n       detail: {detail!r}" if detail is not None else ""
        print(f"FAIL - {what}{extra}", flush=True)
    return cond


class Fatal(Exception):
    """A failure after which the rest of the scenario cannot run."""


def require(cond: bool, what: str, detail: Any = None) -> None:
    if not check(cond, what, detail):
        raise Fatal(what)


# --------------------------------------------------------------- owner API


class Owner:
    def __init__(self, base: str):
        self.base = base.rstrip("/")
        self.token: str | None = None

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as err:
            raw = err.read()
            status = err.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw


def heartbeat_parked(owner: Owner) -> int | None:
    status, body = owner.call("GET", "/__heartbeat__")
    if status != 200 or not isinstance(body, dict):
        return None
    return body.get("parked")


# ---------------------------------------------------------------- scenario


def scenario(base: str) -> None:
    owner = Owner(base)

    # 1. Owner account and session.
    email = f"interop-{secrets.token_hex(6)}@example.com"
    password = secrets.token_urlsafe(12)
    status, body = owner.call("POST", "/1/accounts", {"email": email, "password": password})
    require(status == 201 and isinstance(body, dict) and "userid" in body,
            "owner account created (201 {userid})", (status, body))
    userid = body["userid"]
    status, body = owner.call("POST", "/1/session", {"email": email, "password": password})
    require(status == 200 and isinstance(body, dict) and body.get("token"),
            "owner signed in (200 {token})", (status, body))
    check(body.get("userid") == userid, "session userid matches the account", body)
    owner.token = body["token"]

    # 2. Device registration with a fresh 128-bit secret.
    device = DeviceClient(base)
    try:
        device_id = device.register(
            owner.token,
            pushurl="https://push.example.com/v1/interop",
            name="Interop phone",
            has_passcode=False,
            userid=userid,
        )
    except Exception as exc:  # noqa: BLE001
        require(False, "device registered", repr(exc))
    require(len(device.secret) == 32, "secret is 32 hex characters", device.secret)
    check(True, f"device registered, id {device_id}")

    # 3. Empty poll, wait=0: a signed {} at once.
    t0 = time.monotonic()
    answer = device.exchange({}, wait=0)
    elapsed = time.monotonic() - t0
    require(answer.response.verified, "empty poll: Server-Authorization verified")
    check(answer.response.status == 200 and answer.response.json() == {},
          "empty poll: answer is 200 {}", answer.response.body)
    check(elapsed < 5, "empty poll with wait=0 answered at once", elapsed)

    # 4. Tampered answers are rejected by the client's verification.
    prepared = device.prepare({}, wait=0)
    real = device.send(prepared)
    require(real.status == 200 and real.header("Server-Authorization"),
            "reference answer for the tamper checks is signed", (real.status, real.headers))
    device.verify_server_authorization(prepared, real.header("Server-Authorization"), real.body)
    check(True, "real headers verify against the real body")
    tampered_body = b'{"e":{}}'
    try:
        prepared.sender.accept_response(
            real.header("Server-Authorization"), content=tampered_body,
            content_type="application/json")
        check(False, "mohawk rejects the real Server-Authorization with a tampered body")
    except mohawk.exc.HawkFail as exc:
        check(True, f"mohawk rejects the real Server-Authorization with a tampered body "
                    f"({type(exc).__name__})")
    try:
        device.verify_server_authorization(prepared, real.header("Server-Authorization"),
                                           tampered_body)
        check(False, "client refuses a tampered body (UnverifiedAnswer)")
    except UnverifiedAnswer:
        check(True, "client refuses a tampered body (UnverifiedAnswer)")
    # A forged header: valid hash of the forged body, but a MAC the attacker made up.
    import base64
    import hashlib
    forged_hash = base64.b64encode(hashlib.sha256(
        b"hawk.1.payload\napplication/json\n" + tampered_body + b"\n").digest()).decode()
    forged = f'Hawk mac="{base64.b64encode(b"x" * 32).decode()}", hash="{forged_hash}"'
    try:
        device.verify_server_authorization(prepared, forged, tampered_body)
        check(False, "client refuses a forged Server-Authorization")
    except UnverifiedAnswer:
        check(True, "client refuses a forged Server-Authorization")
    try:
        device.verify(prepared, type(real)(200, {"content-type": "application/json"}, b"{}"))
        check(False, "client refuses an answer without Server-Authorization")
    except UnverifiedAnswer:
        check(True, "client refuses an answer without Server-Authorization")

    # 5. Replay: the same Authorization header twice -> 401 errno 117.
    replay = device.prepare({}, wait=0)
    first = device.send(replay)
    check(first.status == 200, "replay check: first send accepted", (first.status, first.body))
    second = device.send(replay)
    check(second.status == 401 and second.errno == 117,
          "replay check: same Authorization sent again -> 401 errno 117",
          (second.status, second.body))
    check(second.header("Server-Authorization") is None,
          "replay check: the 401 carries no Server-Authorization", second.headers)

    # 6. Long poll parked, then commands queued by the owner.
    baseline = heartbeat_parked(owner)
    require(isinstance(baseline, int), "heartbeat reports a parked count", baseline)
    result: dict[str, Any] = {}

    def poll() -> None:
        try:
            result["answer"] = device.exchange({}, wait=30)
        except Exception as exc:  # noqa: BLE001
            result["error"] = exc
        result["at"] = time.monotonic()

    started = time.monotonic()
    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    parked = baseline
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and thread.is_alive():
        parked = heartbeat_parked(owner)
        if isinstance(parked, int) and parked >= baseline + 1:
            break
        time.sleep(0.05)
    require(isinstance(parked, int) and parked >= baseline + 1 and thread.is_alive(),
            "heartbeat shows the wait=30 poll parked", (baseline, parked, result))

    commands = {"r": {"p": 5, "d": 30}, "l": {"c": "0123"}}
    queued_at = time.monotonic()
    status, body = owner.call("POST", f"/1/devices/{device_id}/cmd", commands)
    require(status == 202 and isinstance(body, dict), "owner queued r and l (202)", (status, body))
    queued = {q.get("command"): q.get("seq") for q in body.get("queued", [])}
    check(set(queued) == {"r", "l"}, "both commands reported as queued", body)
    check(body.get("parked") is True, "queue answer says the command went to a parked poll", body)

    thread.join(10)
    require(not thread.is_alive(), "parked poll answered after queuing", result)
    if "error" in result:
        require(False, "parked poll answer is a verified 200", repr(result["error"]))
    answer = result["answer"]
    check(answer.response.verified, "parked poll: Server-Authorization verified")
    check(result["at"] - queued_at < 3,
          "parked poll released promptly after queuing", result["at"] - queued_at)
    check(result["at"] - started < 25, "parked poll did not run to its wait", result["at"] - started)
    raw = answer.response.json()
    check(raw == commands, "parked poll received exactly the queued commands", raw)
    code = raw.get("l", {}).get("c") if isinstance(raw.get("l"), dict) else None
    check(isinstance(code, str) and code == "0123", 'lock code is still the string "0123"', code)
    check(answer.seq is None, "no seq without the sequence extension", raw)

    # 7. Replies plus a position report.
    lat, lon, ti = 37.388017, -122.0833, int(time.time()) - 5
    replies = {
        "r": DeviceClient.reply(True),
        "l": DeviceClient.reply(True),
        "t": DeviceClient.position(lat, lon, ti, acc=20.0),
        "has_passcode": True,
    }
    ack = device.exchange(replies, wait=0)
    check(ack.response.verified and ack.response.json() == {},
          "acknowledgement answered with a signed {}", ack.response.body)

    # 8. The owner's view.
    status, info = owner.call("GET", f"/1/devices/{device_id}")
    require(status == 200 and isinstance(info, dict), "owner reads the device (200)", (status, info))
    check(info.get("pending") == [], "nothing is pending", info.get("pending"))
    outcomes = info.get("outcomes") or []
    for key in ("r", "l"):
        matching = [o for o in outcomes if o.get("command") == key]
        check(len(matching) == 1 and matching[0].get("ok") is True
              and matching[0].get("seq") == queued.get(key)
              and "error" not in matching[0],
              f"outcome of {key!r} recorded ok with seq {queued.get(key)}", outcomes)
    pos = info.get("last_position")
    check(isinstance(pos, dict) and pos.get("lat") == lat and pos.get("lon") == lon
          and pos.get("time_ms") == ti * 1000,
          "last position is the reported one (time in ms)", pos)
    print(f"info - lockable={info.get('lockable')!r} after has_passcode=true", flush=True)

    # 9. Extra checks of the document's promises.
    # 9a. A refused body gets a signed 400 errno 101 naming the field.
    try:
        device.exchange({"t": {"ok": True, "la": 91.0, "lo": 0.0, "ti": ti}}, wait=0)
        check(False, "out-of-range latitude refused")
    except ProtocolError as exc:
        check(exc.status == 400 and exc.errno == 101 and exc.response.verified,
              "out-of-range latitude -> signed 400 errno 101", (exc.status, exc.errno,
                                                                  exc.response.verified))
        check("t.la" in (exc.message or ""), "the 400 message names the field t.la", exc.message)
    # 9b. Stale timestamp challenge: tsm verifies, the client adopts the offset.
    skewed = DeviceClient(base, device.device_id, device.secret, clock_offset=-3600)
    stale = skewed.prepare({}, wait=0)
    resp = skewed.send(stale)
    check(resp.status == 401 and resp.errno == 116 and
          (resp.header("WWW-Authenticate") or "").startswith("Hawk "),
          "a request an hour old -> 401 errno 116 with a Hawk challenge", (resp.status, resp.body))
    recovered = skewed.exchange({}, wait=0)
    check(recovered.response.verified and abs(skewed.clock_offset) < 5,
          "client checks tsm, adopts the server clock and succeeds", skewed.clock_offset)
    # 9c. Sequence extension.
    status, body = owner.call("POST", f"/1/devices/{device_id}/cmd", {"m": {"m": "Hi there"}})
    check(status == 202, "owner queued a message", (status, body))
    seq_m = (body.get("queued") or [{}])[0].get("seq") if isinstance(body, dict) else None
    withseq = device.exchange({}, wait=0, use_ack=True)
    check(withseq.commands == {"m": {"m": "Hi there"}} and withseq.seq == seq_m,
          "with ack, the answer carries seq", withseq.response.body)
    again = device.exchange({}, wait=0, use_ack=True)
    check(again.commands == {}, "acked-by-seq command is not sent again", again.response.body)
    done = device.exchange({"m": {"ok": True}}, wait=0, use_ack=True)
    check(done.commands == {}, "message reply accepted", done.response.body)
    status, info = owner.call("GET", f"/1/devices/{device_id}")
    check(status == 200 and info.get("pending") == []
          and any(o.get("command") == "m" and o.get("ok") is True for o in info.get("outcomes", [])),
          "message outcome recorded", info)
    # 9d. Unknown device id -> 401 errno 114, unsigned.
    stranger = DeviceClient(base, secrets.token_hex(16), secrets.token_hex(16))
    try:
        stranger.exchange({}, wait=0)
        check(False, "unknown device refused")
    except ProtocolError as exc:
        check(exc.status == 401 and exc.errno == 114
              and exc.response.header("Server-Authorization") is None,
              "unknown device -> unsigned 401 errno 114", (exc.status, exc.errno))


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: test_device.py BASE_URL", file=sys.stderr)
        return 2
    base = sys.argv[1]
    global FAILED
    try:
        scenario(base)
    except Fatal as exc:
        print(f"aborted: {exc}", flush=True)
    except Exception:  # noqa: BLE001
        FAILED += 1
        print("FAIL - unexpected exception:", flush=True)
        traceback.print_exc(file=sys.stdout)
    print(f"{PASSED} passed, {FAILED} failed", flush=True)
    return 0 if FAILED == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
