"""A small real HTTP API with several active API keys per account, for the ``http`` connector.

Runs ``http.server.ThreadingHTTPServer`` in a background thread on a free 127.0.0.1 port.

Endpoints (JSON in and out):

- ``GET /``: 200; 401 if an ``Authorization: Bearer`` token is given that is neither an
  admin token nor a valid key (like many APIs: a bad token is refused everywhere).
- ``GET /keys``: admin; 200 ``{"account", "count"}``.
- ``POST /keys``: admin; body ``{"key": str, ...}`` adds the key to the admin token's
  account: 201, or 409 if the account has it already, 400 for a malformed body.
- ``DELETE /keys/{key}`` (key percent-encoded): admin; 204, or 404 if the account lacks it.
- ``GET /whoami``: ``Authorization: Bearer <key>``: 200 ``{"account"}`` or 401.

Admin calls need ``Authorization: Bearer <admin token>`` (401 otherwise). With ``hmac_key`` set,
every request must carry ``X-Rotator-Timestamp`` (unix seconds, within 300 s),
``X-Rotator-Nonce`` (not seen before) and ``X-Rotator-Signature: sha256=<hex HMAC-SHA256(key,
canonical)>`` over method, request target, body hash, timestamp and nonce, as the connector's
docstring defines it (rotator.connectors.http.signing_string); 401 otherwise, with the body
``{"error": "bad signature"}`` or ``{"error": "nonce replayed"}`` saying which.

Knobs for failure tests: ``fail_next(n, status)``, ``fail_rate`` (share of requests answered
503, seeded, at most ``max_consecutive_failures`` in a row), ``delay_s`` (sleep before
answering), ``whoami_status`` (force an answer to ``GET /whoami``). Every request is recorded
(method, raw path, headers as sent, raw body, status) in ``requests``; ``connections`` counts
the TCP connections accepted (keep-alive: several requests may share one).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOOPBACK = "127.0.0.1"
MAX_SKEW_S = 300


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str  # raw, as on the request line
    headers: dict[str, str]  # header names lower-cased, values decoded as UTF-8
    body: bytes
    status: int


@dataclass
class ApiServer:
    """The service's state; start with :meth:`start`, stop with :meth:`stop` (or ``running``)."""

    admin_tokens: dict[str, str] = field(default_factory=dict)  # token -> account
    hmac_key: bytes | None = None
    fail_rate: float = 0.0
    max_consecutive_failures: int = 3
    seed: int = 0
    delay_s: float = 0.0
    whoami_status: int | None = None
    keys: dict[str, set[str]] = field(default_factory=dict)  # account -> valid keys
    key_meta: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> POST body
    requests: list[Recorded] = field(default_factory=list)
    nonces: set[str] = field(default_factory=set)  # nonces of accepted signed requests
    connections: int = 0  # TCP connections accepted

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._fail_next: list[int] = []
        self._rng = random.Random(self.seed)
        self._runs: dict[tuple[str, ...], int] = {}
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._httpd is not None, "not started"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> ApiServer:
        handler = type("Handler", (_Handler,), {"api": self})
        self._httpd = _Server((LOOPBACK, 0), handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()  # ends sleeping handlers at once
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def add_account(self, account: str, admin_token: str) -> None:
        with self.lock:
            self.admin_tokens[admin_token] = account
            self.keys.setdefault(account, set())

    def add_key(self, account: str, key: str) -> None:
        with self.lock:
            self.keys.setdefault(account, set()).add(key)

    def valid(self, account: str) -> set[str]:
        with self.lock:
            return set(self.keys.get(account, set()))

    def fail_next(self, n: int, status: int = 503) -> None:
        with self.lock:
            self._fail_next.extend([status] * n)

    def seen(self, method: str | None = None, path_prefix: str = "") -> list[Recorded]:
        with self.lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and r.path.startswith(path_prefix)
            ]

    # -- used by the handler --------------------------------------------------------------

    def injected_failure(self, identity: tuple[str, ...]) -> int | None:
        """The status of an injected failure for this request, if any. ``fail_rate`` fails
        one request (same method, path, body and token) at most ``max_consecutive_failures``
        times in a row, so a client that retries a few times always gets through."""
        with self.lock:
            if self._fail_next:
                return self._fail_next.pop(0)
            if self.fail_rate:
                run = self._runs.get(identity, 0)
                if self._rng.random() < self.fail_rate and run < self.max_consecutive_failures:
                    self._runs[identity] = run + 1
                    return 503
                self._runs.pop(identity, None)
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client that timed out and hung up: expected in timeout tests
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    api: ApiServer
    protocol_version = "HTTP/1.1"
    server_version = "TestApi/1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return None

    def setup(self) -> None:  # once per accepted connection
        super().setup()
        with self.api.lock:
            self.api.connections += 1

    # -- plumbing -------------------------------------------------------------------------

    def _header(self, name: str) -> str | None:
        raw = self.headers.get(name)
        if raw is None:
            return None
        # http.server decodes header bytes as latin-1: undo that to get the UTF-8 text sent.
        try:
            return raw.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return raw

    def _bearer(self) -> str | None:
        auth = self._header("Authorization")
        if auth is None or not auth.startswith("Bearer "):
            return None
        return auth[len("Bearer ") :]

    def _reply(self, status: int, doc: Any = None) -> None:
        body = b"" if doc is None or self.command == "HEAD" else json.dumps(doc).encode()
        self._record(status)  # before answering: a client that got the answer sees the record
        try:
            self.send_response(status)
            if body:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)
        except OSError:  # the client gave up (a timeout test): nothing to do
            self.close_connection = True

    def _record(self, status: int) -> None:
        if self._recorded:
            return
        self._recorded = True
        headers = {k.lower(): self._header(k) or "" for k in self.headers}
        with self.api.lock:
            self.api.requests.append(Recorded(self.command, self.path, headers, self._body, status))

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._body = self.rfile.read(length) if length else b""
        self._recorded = False
        try:
            self._route()
        finally:
            self._record(0)  # no answer (stopped while slow)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = do_HEAD = _handle

    # -- the API ----------------------------------------------------------------------------

    def _signature_problem(self) -> str | None:
        """None when the request is signed as the connector documents (or no key is set);
        otherwise what is wrong. Written from the docstring, not from the connector's code,
        so the test proves the documented canonical string."""
        key = self.api.hmac_key
        if key is None:
            return None
        ts = self._header("X-Rotator-Timestamp")
        nonce = self._header("X-Rotator-Nonce")
        sig = self._header("X-Rotator-Signature")
        if ts is None or nonce is None or sig is None or not ts.isdigit():
            return "bad signature"
        if abs(time.time() - int(ts)) > MAX_SKEW_S:
            return "bad signature"
        canonical = "\n".join(
            (
                "ROTATOR-HMAC-SHA256",
                self.command,
                self.path,  # the request target as on the request line
                hashlib.sha256(self._body).hexdigest(),
                ts,
                nonce,
            )
        ).encode()
        want = "sha256=" + hmac.new(key, canonical, "sha256").hexdigest()
        if not hmac.compare_digest(want, sig):
            return "bad signature"
        with self.api.lock:
            if nonce in self.api.nonces:
                return "nonce replayed"
            self.api.nonces.add(nonce)
        return None

    def _admin_account(self) -> str | None:
        token = self._bearer()
        with self.api.lock:
            return None if token is None else self.api.admin_tokens.get(token)

    def _key_account(self, key: str) -> str | None:
        with self.api.lock:
            for account, keys in self.api.keys.items():
                if key in keys:
                    return account
        return None

    def _route(self) -> None:
        api = self.api
        if api.delay_s and api.stopping.wait(api.delay_s):
            return
        identity = (self.command, self.path, self._body.hex(), self._header("Authorization") or "")
        status = api.injected_failure(identity)
        if status is not None:
            self._reply(status, {"error": "injected failure"})
            return
        problem = self._signature_problem()
        if problem is not None:
            self._reply(401, {"error": problem})
            return
        path = self.path.split("?", 1)[0]
        if path == "/":
            token = self._bearer()
            unknown = token is not None and self._admin_account() is None
            if unknown and token is not None and self._key_account(token) is None:
                self._reply(401, {"error": "bad token"})
                return
            self._reply(200, {"service": "test-api"})
            return
        if path == "/whoami" and self.command == "GET":
            if api.whoami_status is not None:
                self._reply(api.whoami_status, {"error": "forced"})
                return
            token = self._bearer()
            account = None if token is None else self._key_account(token)
            if account is None:
                self._reply(401, {"error": "unknown key"})
            else:
                self._reply(200, {"account": account})
            return
        if path == "/keys" or path.startswith("/keys/"):
            account = self._admin_account()
            if account is None:
                self._reply(401, {"error": "admin token required"})
                return
            if path == "/keys" and self.command == "GET":
                with api.lock:
                    count = len(api.keys[account])
                self._reply(200, {"account": account, "count": count})
                return
            if path == "/keys" and self.command == "POST":
                self._add(account)
                return
            if path.startswith("/keys/") and self.command == "DELETE":
                segment = path[len("/keys/") :]
                if "/" in segment:
                    self._reply(404, {"error": "no such route"})
                    return
                key = urllib.parse.unquote(segment, encoding="utf-8", errors="strict")
                with api.lock:
                    keys = api.keys.setdefault(account, set())
                    found = key in keys
                    keys.discard(key)
                self._reply(204 if found else 404)
                return
            self._reply(405, {"error": "method not allowed"})
            return
        self._reply(404, {"error": "no such route"})

    def _add(self, account: str) -> None:
        try:
            doc = json.loads(self._body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            self._reply(400, {"error": "body is not JSON"})
            return
        key = doc.get("key") if isinstance(doc, dict) else None
        if not isinstance(key, str) or not key:
            self._reply(400, {"error": "key missing"})
            return
        with self.api.lock:
            keys = self.api.keys.setdefault(account, set())
            if key in keys:
                exists = True
            else:
                exists = False
                keys.add(key)
                self.api.key_meta[key] = doc
        # Echo the key, as real APIs do: the connector must never show a response body.
        self._reply(409 if exists else 201, {"key": key, "account": account})


@contextmanager
def running(**kwargs: Any) -> Iterator[ApiServer]:
    """An ApiServer started for the ``with`` block and stopped after, also on errors."""
    server = ApiServer(**kwargs).start()
    try:
        yield server
    finally:
        server.stop()
