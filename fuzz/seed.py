#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/corpus/<target>/seed-*.

The seeds are the shapes the test suite sends: Hawk headers signed for the fixed request of
the hawk_header target, device reports and owner commands from tests/device_protocol.rs and
tests/owner_api.rs, every route, small journal and snapshot files, and the request shapes the
exchange path serves or hands to hyper. Run it again after
changing a target's input format; the files it writes are committed.
"""

import base64
import hashlib
import hmac
import json
import os
import struct
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

# Must match fuzz_targets/hawk_header.rs.
SECRET = b"0123456789abcdef0123456789abcdef"
NOW = 1_700_000_000
METHOD, HOST, PORT, PATH = "POST", "127.0.0.1", 8000, "/1/cmd/fuzzdevice"


def write(target, name, data):
    folder = os.path.join(ROOT, target)
    os.makedirs(folder, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(folder, "seed-" + name), "wb") as f:
        f.write(data)


def hawk_header(body, ts=NOW, nonce="Ygvqdz", ext=None, content_type="application/json"):
    payload = b"hawk.1.payload\n" + content_type.encode() + b"\n" + body + b"\n"
    digest = base64.b64encode(hashlib.sha256(payload).digest()).decode()
    normalized = (
        f"hawk.1.header\n{ts}\n{nonce}\n{METHOD}\n{PATH}\n{HOST}\n{PORT}\n{digest}\n{ext or ''}\n"
    )
    mac = base64.b64encode(hmac.new(SECRET, normalized.encode(), hashlib.sha256).digest()).decode()
    value = f'Hawk id="fuzzdevice", ts="{ts}", nonce="{nonce}", hash="{digest}", mac="{mac}"'
    if ext is not None:
        value += f', ext="{ext}"'
    return value


def hawk_seeds():
    bodies = [b"", b"{}", b'{"l":{"ok":true}}', b'{"t":{"ok":true,"la":1.5,"lo":2.5,"ti":1}}']
    for i, body in enumerate(bodies):
        write("hawk_header", f"signed-{i}", hawk_header(body).encode() + b"\n" + body)
    write("hawk_header", "ext", hawk_header(b"{}", ext="app-data").encode() + b"\n{}")
    write("hawk_header", "stale", hawk_header(b"{}", ts=NOW - 3600).encode() + b"\n{}")
    write("hawk_header", "wrong-body", hawk_header(b"{}").encode() + b'\n{"e":{"ok":true}}')
    write("hawk_header", "no-hash", 'Hawk id="d", ts="1700000000", nonce="n", mac="AAAA"\n')
    write("hawk_header", "bearer", "Bearer abcdef\n")


def json_seeds(target, values):
    for i, value in enumerate(values):
        write(target, f"{i:02}", json.dumps(value, separators=(",", ":")))


def report_seeds():
    json_seeds(
        "device_report",
        [
            {},
            {"l": {"ok": True}},
            {"l": {"ok": False, "error": "no passcode"}, "has_passcode": False},
            {"t": {"ok": True, "la": 37.4, "lo": -122.1, "ti": 1_700_000_000_000, "al": 12.5, "acc": 8}},
            {"t": {"ok": True, "la": 0, "lo": 0, "ti": 1_700_000_000}, "ack": 7},
            {"m": {"ok": True}, "r": {"ok": True}, "e": {"ok": True}, "ack": 0},
            {"l": {"ok": "yes"}},
            {"l": {"ok": True}, "x": {}},
        ],
    )
    write("device_report", "blank", " \n")


def command_seeds():
    json_seeds(
        "owner_command",
        [
            {"l": {"c": "0123"}},
            {"l": {"c": 12345678}},
            {"m": {"n": "+1 (408) 555-0100", "m": "Please return me"}},
            {"m": {"m": "hi"}},
            {"r": {"p": 10, "d": 60}},
            {"t": {"d": 0}},
            {"t": {"p": 3600, "d": 86400}},
            {"e": {}},
            {"l": {"c": "0123"}, "m": {"n": "555-0100", "m": "Please return me!"}, "r": {"p": 30, "d": 300}},
            {"e": {"x": 1}},
            {"l": {"c": "12a4"}},
        ],
    )


def route_seeds():
    requests = [
        "POST /1/accounts",
        "POST /1/session",
        "DELETE /1/session",
        "POST /1/register",
        "POST /1/cmd/abc?wait=0",
        "GET /1/devices",
        "GET /1/devices/abc",
        "PATCH /1/devices/abc",
        "DELETE /1/devices/abc",
        "POST /1/devices/abc/cmd",
        "GET /1/devices/abc/events",
        "GET /__heartbeat__",
        "GET /__lbheartbeat__",
        "PUT /1/devices/abc",
        "GET /1/cmd/",
        "GET //1//devices/",
    ]
    for i, request in enumerate(requests):
        write("route", f"{i:02}", request)


def frame(payload):
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def data_file(magic, records, generation=1):
    out = magic + struct.pack("<IQ", 1, generation)
    for record in records:
        out += frame(json.dumps(record, separators=(",", ":")).encode())
    return out


def store_seeds():
    user = "000102030405060708090a0b0c0d0e0f"
    device = "f0e0d0c0b0a090807060504030201000"
    secret = {"plain": "0123456789abcdef0123456789abcdef"}
    journal = [
        {"op": "account_created", "user": user, "email": "a@example.com", "password_hash": "$argon2id$x", "created_ms": 1},
        {"op": "token_issued", "digest": "ab" * 32, "user": user, "expires_ms": 2},
        {"op": "token_revoked", "digest": "ab" * 32},
        {"op": "device", "id": device, "v": 1, "change": {"kind": "registered", "owner": user, "name": "phone", "secret": secret, "push_url": "", "at_ms": 1}},
        {"op": "device", "id": device, "v": 1, "change": {"kind": "renamed", "name": "phone"}},
        {"op": "device", "id": device, "v": 2, "change": {"kind": "queued", "seq": 1, "command": "l", "args": {"c": "0123"}, "at_ms": 3, "removed": [], "superseded": []}},
        {"op": "device", "id": device, "v": 3, "change": {"kind": "delivered", "seqs": [1]}},
        {"op": "device", "id": device, "v": 4, "change": {"kind": "answered", "command": "l", "seq": 1, "ok": True, "error": None, "at_ms": 4}},
        {"op": "device", "id": device, "v": 5, "change": {"kind": "lockable", "value": True}},
        {"op": "device", "id": device, "v": 6, "change": {"kind": "removed"}},
        {"op": "device", "id": device, "v": 7, "change": {"kind": "reregistered", "secret": secret, "push_url": "", "name": None}},
    ]
    write("store_decoder", "journal", b"\x00" + data_file(b"WMFJ", journal))
    write("store_decoder", "journal-torn", b"\x00" + data_file(b"WMFJ", journal[:3])[:-5])
    write("store_decoder", "journal-empty", b"\x00" + data_file(b"WMFJ", []))
    snapshot = [
        {"entry": "account", "user": user, "email": "a@example.com", "password_hash": "$argon2id$x", "created_ms": 1},
        {"entry": "token", "digest": "cd" * 32, "user": user, "expires_ms": 2},
        {"entry": "end", "entries": 2},
    ]
    write("store_decoder", "snapshot", b"\x01" + data_file(b"WMFS", snapshot))


def forwarded_seeds():
    # First byte: the peer (0: 127.0.0.1 trusted, 1: 10.1.2.3 trusted, 2: untrusted, 3: fd00::1).
    cases = {
        "xff": b"\x00X-Forwarded-For: 198.51.100.7, 10.0.0.2\nX-Forwarded-Proto: https\nX-Forwarded-Host: find.example.com",
        "forwarded": b'\x01Forwarded: for=198.51.100.7;proto=https;host=find.example.com, for="[2001:db8::1]:4711"',
        "untrusted": b"\x02X-Forwarded-For: 6.6.6.6\nForwarded: for=6.6.6.6",
        "v6-peer": b'\x03Forwarded: for="[2001:db8:cafe::17]";proto=http',
        "obfuscated": b"\x00Forwarded: for=_hidden, for=unknown\nX-Forwarded-For: not-an-ip",
        "many": b"\x00X-Forwarded-For: " + b", ".join(b"10.0.0.%d" % i for i in range(40)),
        # Once accepted as a host name (the URI grammar allows `;`).
        "semicolon-host": b"\x00X-Forwarded-For: 198.51.100.7\nX-Forwarded-Host:;fi",
        "junk-port": b"\x00X-Forwarded-For: 198.51.100.7\nX-Forwarded-Host: a.example:db.x;y=z",
    }
    for name, data in cases.items():
        write("forwarded", name, data)


def exchange_request_seeds():
    # Must keep under the target's body limit (64 bytes).
    report = b'{"r":{"ok":true},"t":{"la":48.85,"lo":2.35,"acc":10,"ti":1700000000}}'[:60]
    head = (
        b"POST /1/cmd/fuzzdevice?wait=30 HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
        b'Authorization: Hawk id="fuzzdevice", ts="1700000000", nonce="Ygvqdz", '
        b'hash="x", mac="y"\r\nContent-Type: application/json\r\n'
    )
    whole = head + b"Content-Length: %d\r\n\r\n" % len(report) + report
    cases = {
        "exchange": whole,
        "pipelined": whole + whole + b"GET /__lbheartbeat__ HTTP/1.1\r\nhost: x\r\n\r\n",
        "no-body": b"POST /1/cmd/abc HTTP/1.1\r\nConnection: keep-alive\r\n\r\n",
        "half-head": whole[:70],
        "half-body": whole[:-10],
        "chunked": head + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        "expect": head + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
        "close": head + b"Connection: close\r\nContent-Length: 2\r\n\r\n{}",
        "two-lengths": head + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        "too-long": head + b"Content-Length: 65\r\n\r\n",
        "deeper-path": b"POST /1/cmd/abc/def HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        "owner": b"GET /1/devices HTTP/1.1\r\nAuthorization: Bearer t\r\n\r\n",
        "http10": b"POST /1/cmd/abc HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
    }
    for name, data in cases.items():
        write("exchange_request", name, data)


if __name__ == "__main__":
    hawk_seeds()
    report_seeds()
    command_seeds()
    route_seeds()
    store_seeds()
    forwarded_seeds()
    exchange_request_seeds()
