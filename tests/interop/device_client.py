"""A small wheresmyfox device client, written from docs/protocol.md alone.

Only the standard library is used for HTTP; Hawk signing and response
verification are done with the PyPI package ``mohawk``.

Typical use::

    client = DeviceClient("http://127.0.0.1:8080")
    client.register(owner_token, pushurl="https://push.example.com/v1/abc")
    answer = client.exchange({}, wait=0)        # verified, or an exception
    replies = {key: {"ok": True} for key in answer.commands}
    client.exchange(replies, wait=50)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import re
import secrets
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import mohawk
import mohawk.exc

CONTENT_TYPE = "application/json"
COMMAND_KEYS = ("l", "m", "r", "t", "e")


class DeviceClientError(Exception):
    """Base class of this module's errors."""


class UnverifiedAnswer(DeviceClientError):
    """An answer whose Server-Authorization is missing or does not verify.

    Such an answer must never be acted on (protocol.md, section 7)."""


class ProtocolError(DeviceClientError):
    """A (verified or unsigned) error answer from the server."""

    def __init__(self, response: "Response"):
        self.response = response
        self.status = response.status
        body = response.json_or_none() or {}
        self.errno = body.get("errno") if isinstance(body, dict) else None
        self.message = body.get("message") if isinstance(body, dict) else None
        super().__init__(
            f"HTTP {self.status} errno={self.errno} message={self.message!r} "
            f"body={response.body[:300]!r}"
        )


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes
    verified: bool = False

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8")) if self.body else {}

    def json_or_none(self) -> Any:
        try:
            return self.json()
        except (ValueError, UnicodeDecodeError):
            return None

    @property
    def errno(self) -> int | None:
        body = self.json_or_none()
        return body.get("errno") if isinstance(body, dict) else None


@dataclass
class PreparedRequest:
    """A signed request, kept so that its answer can be verified (and, in
    tests, so that the exact same bytes can be replayed)."""

    path: str
    body: bytes
    authorization: str
    sender: mohawk.Sender
    wait: int | None = None


@dataclass
class Answer:
    """A verified 200 answer: the command object."""

    commands: dict[str, Any]
    response: Response
    seq: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def make_secret() -> str:
    """16 bytes from a CSPRNG as 32 lower-case hex characters (section 1)."""
    return secrets.token_hex(16)


def make_nonce() -> str:
    """A fresh nonce: 16 URL-safe random characters (8+ required, section 7)."""
    return secrets.token_urlsafe(12)  # 12 bytes -> 16 characters, no '"' or '\\'


def encode_body(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _parse_hawk_attributes(header: str) -> dict[str, str]:
    scheme, _, rest = header.partition(" ")
    if scheme.lower() != "hawk":
        raise DeviceClientError(f"not a Hawk header: {header!r}")
    return dict(re.findall(r'(\w+)="([^"\\]*)"', rest))


class DeviceClient:
    def __init__(
        self,
        base_url: str,
        device_id: str | None = None,
        secret: str | None = None,
        *,
        clock_offset: float = 0.0,
        extra_timeout: float = 30.0,
    ):
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"base_url must be http(s): {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._scheme = parts.scheme
        self._netloc = parts.netloc
        self._prefix = parts.path.rstrip("/")
        self.device_id = device_id
        self.secret = secret
        # Seconds to add to the local clock when signing (section 7, "Clock").
        self.clock_offset = clock_offset
        self.extra_timeout = extra_timeout
        self.highest_seq = 0  # for the optional sequence extension (section 6)

    # ------------------------------------------------------------------ HTTP

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return http.client.HTTPSConnection(self._netloc, timeout=timeout)
        return http.client.HTTPConnection(self._netloc, timeout=timeout)

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        timeout: float,
    ) -> Response:
        conn = self._connection(timeout)
        try:
            conn.request(method, self._prefix + path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            return Response(resp.status, hdrs, data)
        finally:
            conn.close()

    # ---------------------------------------------------------- registration

    def register(
        self,
        owner_token: str,
        pushurl: str,
        *,
        name: str | None = None,
        has_passcode: bool | None = None,
        userid: str | None = None,
        secret: str | None = None,
        keep_id: bool = True,
    ) -> str:
        """POST /1/register with a fresh 128-bit secret; returns the device id."""
        self.secret = secret or make_secret()
        body: dict[str, Any] = {"pushurl": pushurl, "secret": self.secret}
        if name is not None:
            body["name"] = name
        if has_passcode is not None:
            body["has_passcode"] = has_passcode
        if userid is not None:
            body["userid"] = userid
        if keep_id and self.device_id:
            body["deviceid"] = self.device_id
        resp = self._request(
            "POST",
            "/1/register",
            encode_body(body),
            {
                "Authorization": f"Bearer {owner_token}",
                "Content-Type": CONTENT_TYPE,
                "Accept": CONTENT_TYPE,
            },
            timeout=self.extra_timeout,
        )
        if resp.status != 200:
            raise ProtocolError(resp)
        device_id = resp.json().get("id")
        if not isinstance(device_id, str) or not re.fullmatch(r"[0-9a-f]{32}", device_id):
            raise DeviceClientError(f"unexpected register answer: {resp.body!r}")
        self.device_id = device_id
        self.highest_seq = 0
        return device_id

    # ------------------------------------------------------------- signing

    @property
    def credentials(self) -> dict[str, Any]:
        if not self.device_id or not self.secret:
            raise DeviceClientError("not registered: no device id / secret")
        # key = the secret string's UTF-8 bytes, used verbatim (sections 1, 7)
        return {"id": self.device_id, "key": self.secret.encode("utf-8"), "algorithm": "sha256"}

    def cmd_path(self, wait: int | None) -> str:
        path = f"/1/cmd/{self.device_id}"
        if wait is not None:
            path += f"?wait={int(wait)}"
        return path

    def prepare(self, body: dict[str, Any] | bytes, wait: int | None = None) -> PreparedRequest:
        """Sign POST /1/cmd/{id}[?wait=S] with a fresh nonce."""
        raw = body if isinstance(body, bytes) else encode_body(body)
        path = self.cmd_path(wait)
        # The signed URL's path and query must be exactly what is sent, and
        # its host:port what http.client puts into the Host header.
        url = f"{self._scheme}://{self._netloc}{self._prefix}{path}"
        sender = mohawk.Sender(
            self.credentials,
            url,
            "POST",
            content=raw,
            content_type=CONTENT_TYPE,
            always_hash_content=True,
            nonce=make_nonce(),
            # mohawk signs with its own clock; this is its only way to apply
            # the server-provided offset (section 7, "Clock").
            _timestamp=int(time.time() + self.clock_offset),
        )
        return PreparedRequest(path, raw, sender.request_header, sender, wait)

    def send(self, prepared: PreparedRequest) -> Response:
        """Send a prepared request as is (no verification)."""
        timeout = (prepared.wait if prepared.wait is not None else 60) + self.extra_timeout
        return self._request(
            "POST",
            prepared.path,
            prepared.body,
            {
                "Authorization": prepared.authorization,
                "Content-Type": CONTENT_TYPE,
                "Accept": CONTENT_TYPE,
            },
            timeout=timeout,
        )

    def verify(self, prepared: PreparedRequest, status_headers_body: Response) -> None:
        """Check Server-Authorization against the received bytes (section 7).

        Raises UnverifiedAnswer if it is missing or does not verify."""
        header = status_headers_body.header("Server-Authorization")
        if not header:
            raise UnverifiedAnswer(
                f"HTTP {status_headers_body.status} without Server-Authorization"
            )
        self.verify_server_authorization(prepared, header, status_headers_body.body)
        status_headers_body.verified = True

    def verify_server_authorization(
        self, prepared: PreparedRequest, header: str, body: bytes
    ) -> None:
        # The answer's hash is computed with content type application/json
        # (section 7, "Verifying the answer").
        try:
            prepared.sender.accept_response(
                header,
                content=body,
                content_type=CONTENT_TYPE,
                localtime_offset_in_seconds=self.clock_offset,
                # mohawk compares the *request's* ts with the local clock; a
                # long poll may legitimately take up to `wait` seconds.
                timestamp_skew_in_seconds=60 + (prepared.wait or 60),
            )
        except mohawk.exc.HawkFail as exc:
            raise UnverifiedAnswer(f"Server-Authorization does not verify: {exc!r}") from exc

    # ----------------------------------------------------------- exchange

    def _handle_stale(self, resp: Response) -> bool:
        """On 401 errno 116, check tsm and adopt the server's clock offset."""
        www = resp.header("WWW-Authenticate")
        if not www:
            return False
        attrs = _parse_hawk_attributes(www)
        ts, tsm = attrs.get("ts"), attrs.get("tsm")
        if not ts or not tsm:
            return False
        expected = base64.b64encode(
            hmac.new(self.credentials["key"], f"hawk.1.ts\n{ts}\n".encode(), hashlib.sha256).digest()
        ).decode("ascii")
        if not hmac.compare_digest(expected, tsm):
            raise UnverifiedAnswer("stale-timestamp challenge with an invalid tsm")
        self.clock_offset = int(ts) - time.time()
        return True

    def exchange(
        self,
        body: dict[str, Any],
        wait: int | None = 50,
        *,
        use_ack: bool = False,
        retry_stale: bool = True,
    ) -> Answer:
        """One signed exchange. Returns the verified command object on 200.

        Raises UnverifiedAnswer for an answer that does not verify (never act
        on it), ProtocolError for any other status (verified if signed)."""
        body = dict(body)
        if use_ack:
            body["ack"] = self.highest_seq
        prepared = self.prepare(body, wait)
        resp = self.send(prepared)
        if resp.status == 401 and resp.errno == 116 and retry_stale:
            if self._handle_stale(resp):
                return self.exchange(body, wait, use_ack=False, retry_stale=False)
        if resp.status != 200:
            if resp.header("Server-Authorization"):
                self.verify(prepared, resp)  # a signed error (e.g. 400)
            raise ProtocolError(resp)
        self.verify(prepared, resp)
        commands = resp.json()
        if not isinstance(commands, dict):
            raise DeviceClientError(f"answer is not a JSON object: {resp.body!r}")
        seq = commands.pop("seq", None)
        if isinstance(seq, int) and seq > self.highest_seq:
            self.highest_seq = seq
        extra = {k: commands.pop(k) for k in list(commands) if k not in COMMAND_KEYS}
        return Answer(commands, resp, seq, extra)

    # -------------------------------------------------------------- replies

    @staticmethod
    def reply(ok: bool = True, error: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": ok}
        if error is not None:
            out["error"] = error
        return out

    @staticmethod
    def position(
        lat: float,
        lon: float,
        time_s: int | None = None,
        acc: float | None = None,
        alt: float | None = None,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": True,
            "la": lat,
            "lo": lon,
            "ti": int(time.time()) if time_s is None else time_s,
        }
        if acc is not None:
            out["acc"] = acc
        if alt is not None:
            out["al"] = alt
        return out
