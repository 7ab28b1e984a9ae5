"""The ``http`` connector: API keys of a web service that accepts several active keys.

Strategy DUAL: ``set`` adds the new key next to the current one (``POST /keys``), ``test`` calls
the API with the new key (``GET /whoami``), ``revoke`` and ``rollback`` delete a key
(``DELETE /keys/$value``). Each operation is described by settings (all strings, from
``--set KEY=VALUE``)::

    <op>_method   GET/POST/PUT/PATCH/DELETE/...        (set POST, test GET, revoke DELETE)
    <op>_path     path under base_url; placeholders are percent-encoded into it
    <op>_body     JSON template; a placeholder must be a whole JSON string ("$value") and is
                  replaced structurally after parsing ("$version" becomes a number,
                  "$previous" null when there is none), so no value can inject JSON
    <op>_headers  JSON object of header templates; placeholders may sit inside a value
                  ("Bearer $value"); values holding CR, LF or NUL are refused
    <op>_expect   statuses meaning success: "2xx", "200,201", ... (default 2xx)
    set_exists    statuses meaning "already added" = success (default 409)
    revoke_gone   statuses meaning "already gone" = success (default 404)

``rollback_*`` default to the ``revoke_*`` settings. Placeholders: ``$value`` (the key the
operation is about), ``$previous`` (set/rollback: the CURRENT key), ``$credential``,
``$version``; ``$$`` is a literal ``$``; any other ``$name`` is refused at config time.

``auth`` names a credential whose value is sent as ``Authorization: Bearer`` on admin calls
(set/revoke/rollback/verify); ``hmac_key`` names a credential whose value signs every request.
A signature binds the whole request, so a captured one cannot be replayed with another method,
path, query or body, nor a second time: each request carries ``X-Rotator-Timestamp: <unix
seconds>``, ``X-Rotator-Nonce: <32 hex digits, random per request>`` and
``X-Rotator-Signature: sha256=<hex HMAC-SHA256(key, canonical)>`` where ``canonical`` is these
six lines joined by ``\n`` (no trailing newline)::

    ROTATOR-HMAC-SHA256
    <METHOD>                       upper case
    <path?query>                   the request target exactly as sent (percent-encoded)
    <hex SHA-256 of the body>      of the empty string when there is no body
    <timestamp>
    <nonce>

A server checks the signature, refuses a timestamp too far from its clock and a nonce it has
seen within that window. The config holds no secret value.

``base_url`` must be ``https://``: every call carries a key (the new one, the old one, the
admin token). ``allow_insecure_http=true`` permits ``http://`` for a target reached without a
network in between (a sidecar on loopback, tests). Values substituted into a path are
percent-encoded; a value that would make a path segment ``.`` or ``..`` (also percent-encoded,
any number of times) is refused, so no value can move a call to another path.

The operator may bound where any http credential may point: ``ROTATOR_HTTP_ALLOW_HOSTS``, a
comma-separated list of host names (``api.example.com``), subdomain wildcards
(``*.example.com``: any name under it, not the name itself), IP addresses and CIDR blocks
(``10.0.0.0/8``, ``::1``). When it is set (and not blank), a ``base_url`` whose host is not on
it is refused when the settings are checked (``credential add/update``: bad input, nothing
stored) and again before every request (a rotation fails with nothing sent), so a list made
shorter after a credential was added still holds. Names are compared as written, not resolved,
as the HTTP client parses the host (IDNA-encoded); a host that is no plain name (letters,
digits, ``-``, ``.``) or IP literal matches no entry.
Unset: every host.

Other settings: ``timeout_s`` (per request, default 10), ``ca_file`` (a PEM bundle to trust),
``generator`` token|hex|password with ``length`` and ``prefix`` (new keys, made by the local
connector's generator), and ``verify_method``/``verify_path``/``verify_expect`` for
``credential add --verify`` (an admin request that changes nothing; by default a GET of
base_url that passes unless refused or failing). No redirect is followed, so the admin token
never goes to another host.

Connections: one ``httpx.AsyncClient`` per target (scheme, host, port) and TLS trust (``ca_file``
as read), kept by the connector instance with keep-alive and reused by every call on that
target; ``aclose()`` closes them (see ``base.Closable``). Each request carries its own timeout.
A client takes ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``/``NO_PROXY`` from the environment
when it is made (httpx's ``trust_env``; nothing is read from the environment per request).
No cookie is kept: a response's ``Set-Cookie`` is dropped, so no request carries a cookie.

Errors: connection failures, timeouts, 408, 429 and 5xx are TransientError (the engine
retries); other statuses are PermanentError. Messages name the operation, the method, the URL
*template* (a value placed in a path never shows) and the status; response bodies are never
read into a message, and log lines httpx/httpcore write during a call are redacted the same
way.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import hashlib
import hmac
import http
import http.cookiejar
import ipaddress
import json
import logging
import os
import re
import secrets as secrets_mod
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import httpx
from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from rotator.connectors._resources import Resources
from rotator.connectors.base import (
    ConnectorConfig,
    CreateRequest,
    FinishRequest,
    PermanentError,
    RevokeRequest,
    RollbackRequest,
    SecretResolver,
    SetRequest,
    Strategy,
    TestRequest,
    TransientError,
    VerifyRequest,
)
from rotator.connectors.local import LocalConfig, generate
from rotator.domain.secret import Secret

PLACEHOLDERS = ("value", "previous", "credential", "version")
OPERATIONS = ("set", "test", "revoke", "rollback")
# Which placeholders each operation can fill in.
AVAILABLE: dict[str, tuple[str, ...]] = {
    "set": ("value", "previous", "credential", "version"),
    "test": ("value", "credential"),
    "revoke": ("value", "credential", "version"),
    "rollback": ("value", "previous", "credential", "version"),
    "verify": ("credential",),
}
ADMIN_OPS = frozenset({"set", "revoke", "rollback", "verify"})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
TIMESTAMP_HEADER = "X-Rotator-Timestamp"
NONCE_HEADER = "X-Rotator-Nonce"
SIGNATURE_HEADER = "X-Rotator-Signature"
SIGNATURE_SCHEME = "ROTATOR-HMAC-SHA256"

_TOKEN = re.compile(r"\$\$|\$([A-Za-z_][A-Za-z0-9_]*)", re.ASCII)
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_HEADER_CHARS = re.compile(r"[\r\n\x00]")
_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%?]*", re.ASCII)
_STATUS_ITEM = re.compile(r"([1-5])xx|([1-5][0-9][0-9])")
# Per target client: httpx's defaults (keep-alive 5 s, the expiry most servers use too, so a
# connection is rarely reused just as the server closes it).
DRAIN_LIMIT = 64 * 1024  # bytes of a response body read (and dropped) to keep its connection
CLIENTS_PER_TARGET = 8
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing: a response's ``Set-Cookie`` is dropped, so no request
    carries a cookie. A cookie kept from one call would ride along on the next ones on that
    client, other credentials' calls included, and could make a ``test`` call pass on the
    cookie rather than on the new key. Dropping them also spares httpx's per-response cookie
    parsing (~19 us a response)."""

    def __init__(self) -> None:
        # A policy that accepts no cookie: empty even if something calls the jar directly.
        jar = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        super().__init__(jar)

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _Client(httpx.AsyncClient):
    """``httpx.AsyncClient`` whose cookie jar keeps nothing (see ``_NoCookies``)."""

    def __init__(self, **kwargs: Any) -> None:
        self._no_cookies = _NoCookies()
        super().__init__(**kwargs)

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        return None  # nothing is ever kept


@functools.lru_cache(maxsize=64)
def _timeout_ext(timeout_s: float) -> dict[str, float | None]:
    # A request's timeouts as httpx hands them to httpcore (``Timeout(t).as_dict()``), made
    # once per value instead of a Timeout object per call. Only read, never changed.
    return httpx.Timeout(timeout_s).as_dict()


# ----------------------------------------------------------------------------- templates


@dataclass(frozen=True, slots=True)
class _Ph:
    """A placeholder in a compiled template."""

    name: str


Parts = tuple[str | _Ph, ...]


def _bad(message: str) -> PydanticCustomError:
    # PydanticCustomError keeps the message as written (no "Value error, " prefix); without a
    # context it is not formatted, so braces in it stay as they are.
    return PydanticCustomError("http_setting", message)


def _split(text: str, op: str, where: str) -> Parts:
    """``text`` as literal strings and placeholders; unknown or unavailable ones refused."""
    parts: list[str | _Ph] = []
    pos = 0
    for m in _TOKEN.finditer(text):
        parts.append(text[pos : m.start()])
        pos = m.end()
        name = m.group(1)
        if name is None:  # "$$"
            parts.append("$")
            continue
        if name not in PLACEHOLDERS:
            known = ", ".join("$" + p for p in PLACEHOLDERS)
            raise _bad(f"unknown placeholder ${name} in {where} (known: {known}; $$ for a $)")
        if name not in AVAILABLE[op]:
            avail = ", ".join("$" + p for p in AVAILABLE[op])
            raise _bad(f"${name} is not available in {where} (available: {avail})")
        parts.append(_Ph(name))
    parts.append(text[pos:])
    # Merge neighbouring literals, drop empty ones.
    merged: list[str | _Ph] = []
    for p in parts:
        if isinstance(p, str):
            if not p:
                continue
            if merged and isinstance(merged[-1], str):
                merged[-1] += p
                continue
        merged.append(p)
    return tuple(merged)


def _uses(parts: Parts) -> set[str]:
    return {p.name for p in parts if isinstance(p, _Ph)}


def _compile_body(text: str, op: str, where: str) -> tuple[Any, set[str]]:
    """Parse a JSON body template; placeholders become _Ph objects (whole strings only)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(f"{where} is not valid JSON: {exc.msg} at character {exc.pos}") from None
    used: set[str] = set()

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            parts = _split(node, op, where)
            if len(parts) == 1 and isinstance(parts[0], _Ph):
                used.add(parts[0].name)
                return parts[0]
            if _uses(parts):
                name = next(iter(_uses(parts)))
                raise _bad(
                    f'in {where} "${name}" must be a whole JSON string value, e.g. '
                    f'{{"key": "${name}"}}'
                )
            return "".join(p for p in parts if isinstance(p, str))
        if isinstance(node, list):
            return [walk(x) for x in node]
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                key_parts = _split(k, op, where)
                if _uses(key_parts):
                    raise _bad(f"placeholders cannot be object keys in {where}")
                out["".join(p for p in key_parts if isinstance(p, str))] = walk(v)
            return out
        return node

    return walk(doc), used


def _compile_headers(text: str, op: str, where: str) -> tuple[dict[str, Parts], set[str]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(f"{where} is not valid JSON: {exc.msg} at character {exc.pos}") from None
    if not isinstance(doc, dict):
        raise _bad(f'{where} must be a JSON object, e.g. {{"Authorization": "Bearer $value"}}')
    out: dict[str, Parts] = {}
    used: set[str] = set()
    seen: set[str] = set()
    for name, value in doc.items():
        if not _HEADER_NAME.fullmatch(name):
            raise _bad(f"{where}: {name!r} is not a valid header name")
        if name.lower() in seen:
            raise _bad(f"{where}: header {name!r} appears twice")
        if name.lower() in (h.lower() for h in (TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)):
            raise _bad(f"{where}: header {name!r} is set by hmac_key")
        seen.add(name.lower())
        if not isinstance(value, str):
            raise _bad(f"{where}: the value of header {name!r} must be a string")
        if _BAD_HEADER_CHARS.search(value):
            raise _bad(f"{where}: the value of header {name!r} holds CR, LF or NUL")
        parts = _split(value, op, where)
        used |= _uses(parts)
        out[name] = parts
    return out, used


def _compile_path(text: str, op: str, where: str) -> Parts:
    if not text.startswith("/"):
        raise _bad(f"{where} must start with /")
    if not _PATH_CHARS.fullmatch(text):
        raise _bad(f"{where} holds characters that must be percent-encoded")
    if _dot_segment(text):
        raise _bad(f"{where} holds a '.' or '..' segment")
    return _split(text, op, where)


def _dot_segment(path: str) -> bool:
    """Whether a segment of ``path`` (the query aside) is ``.`` or ``..``, also percent-encoded
    any number of times (a server or proxy that decodes again would still see one)."""
    for segment in path.split("?", 1)[0].split("/"):
        decoded, previous = segment, None
        while decoded != previous:
            if decoded in (".", ".."):
                return True
            previous, decoded = decoded, urllib.parse.unquote(decoded)
    return False


def signing_string(method: str, target: str, body: bytes, timestamp: str, nonce: str) -> bytes:
    """The canonical string an ``hmac_key`` signs (see the module docstring)."""
    return "\n".join(
        (
            SIGNATURE_SCHEME,
            method.upper(),
            target,
            hashlib.sha256(body).hexdigest(),
            timestamp,
            nonce,
        )
    ).encode("utf-8")


def _parse_statuses(text: str, where: str, *, empty_ok: bool) -> frozenset[int]:
    codes: set[int] = set()
    for item in (s.strip().lower() for s in text.split(",")):
        if not item:
            continue
        m = _STATUS_ITEM.fullmatch(item)
        if m is None:
            raise _bad(f"{where}: {item!r} is not a status (use e.g. 2xx or 200,204)")
        if m.group(1):
            first = int(m.group(1)) * 100
            codes.update(range(first, first + 100))
        else:
            codes.add(int(m.group(2)))
    if not codes and not empty_ok:
        raise _bad(f"{where} is empty (use e.g. 2xx or 200,204)")
    return frozenset(codes)


def _check_method(text: str, where: str) -> str:
    method = text.strip().upper()
    if method not in METHODS:
        raise _bad(f"{where}: {text!r} is not one of {', '.join(sorted(METHODS))}")
    return method


@dataclass(frozen=True, slots=True)
class _Op:
    """One compiled operation (what to send, what counts as success)."""

    name: str
    method: str
    path: Parts
    path_text: str
    body: Any | None  # compiled JSON template; None = no body
    has_body: bool
    headers: dict[str, Parts]
    expect: frozenset[int]
    also_ok: frozenset[int]  # "already added" / "already gone"
    uses: frozenset[str]


def _compile_op(name: str, settings: dict[str, tuple[str, str]]) -> _Op:
    """Compile one operation from ``settings``: role -> (setting name, text)."""

    def text(role: str) -> str:
        return settings[role][1]

    def where(role: str) -> str:
        return settings[role][0]

    used: set[str] = set()
    path_parts = _compile_path(text("path"), name, where("path"))
    used |= _uses(path_parts)
    compiled_body: Any | None = None
    if text("body").strip():
        compiled_body, body_used = _compile_body(text("body"), name, where("body"))
        used |= body_used
    compiled_headers: dict[str, Parts] = {}
    if text("headers").strip():
        compiled_headers, header_used = _compile_headers(text("headers"), name, where("headers"))
        used |= header_used
    also_ok: frozenset[int] = frozenset()
    if "also_ok" in settings:
        also_ok = _parse_statuses(text("also_ok"), where("also_ok"), empty_ok=True)
    return _Op(
        name=name,
        method=_check_method(text("method"), where("method")),
        path=path_parts,
        path_text=text("path"),
        body=compiled_body,
        has_body=bool(text("body").strip()),
        headers=compiled_headers,
        expect=_parse_statuses(text("expect"), where("expect"), empty_ok=False),
        also_ok=also_ok,
        uses=frozenset(used),
    )


# The setting naming statuses that also mean success: "already added", "already gone".
_ALSO_OK = {"set": "exists", "revoke": "gone", "rollback": "gone"}


# ------------------------------------------------------------------- the host allow-list

ALLOW_HOSTS_ENV = "ROTATOR_HTTP_ALLOW_HOSTS"
# A host name as matched against the list: IDNA-encoded labels of letters, digits and "-".
_PLAIN_HOST = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)*")


def host_refusal(
    base_url: str, env: dict[str, str] | None = None, *, what: str = "base_url"
) -> str | None:
    """Why ``base_url``'s host is outside the operator's ``ROTATOR_HTTP_ALLOW_HOSTS`` (one
    line naming the host, as ``what``'s, and the variable), or None when it is on the list or
    no list is set. A malformed entry refuses every host (the list is the operator's, and a
    typo must not open it). The openbao sink's ``addr`` is bounded by the same list."""
    raw = (os.environ if env is None else env).get(ALLOW_HOSTS_ENV, "")
    entries = [e.strip().lower().rstrip(".") for e in raw.split(",") if e.strip()]
    if not entries:
        return None
    try:
        # The host as the client that makes the calls (httpx) parses it, IDNA-encoded.
        host = httpx.URL(base_url.strip()).raw_host.decode("ascii").lower().rstrip(".")
    except (httpx.InvalidURL, UnicodeError, ValueError):  # the settings check names it
        host = ""
    ip = _ip(host)
    if ip is None and not _PLAIN_HOST.fullmatch(host):
        # Text that is no plain name (a backslash, a %-escape) must not match "*.domain" by
        # its suffix: the resolver or a proxy may read it as another host.
        return f"{what} host {host[:100]!r} is no plain host name, so not in {ALLOW_HOSTS_ENV}"
    for entry in entries:
        if entry.startswith("*."):
            if ip is None and host.endswith(entry[1:]) and len(host) > len(entry) - 1:
                return None
            continue
        if "/" in entry:
            try:
                net = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                return f"{ALLOW_HOSTS_ENV} holds {entry[:60]!r}, which is no host, *.domain or CIDR"
            if ip is not None and ip.version == net.version and ip in net:
                return None
            continue
        entry_ip = _ip(entry.strip("[]"))
        if (ip is not None and ip == entry_ip) or (entry_ip is None and host == entry):
            return None
    return f"{what} host {host[:100]!r} is not in {ALLOW_HOSTS_ENV}"


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


# -------------------------------------------------------------------------------- config


class HttpConfig(ConnectorConfig):
    """Settings of the ``http`` connector; see the module docstring."""

    base_url: str
    allow_insecure_http: bool = False  # permit http:// (keys and tokens in clear text)
    auth: str = ""  # name of the credential holding the admin API token
    hmac_key: str = ""  # name of the credential holding the HMAC signing key
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    ca_file: str = ""  # PEM bundle to trust instead of the system's
    # create: a new API key, made by rotator.connectors.local.generate
    generator: Literal["token", "hex", "password"] = "token"
    length: int = Field(default=32, ge=16, le=1024)
    prefix: str = Field(default="", max_length=32)

    set_method: str = "POST"
    set_path: str
    set_body: str = ""
    set_headers: str = ""
    set_expect: str = "2xx"
    set_exists: str = "409"

    test_method: str = "GET"
    test_path: str
    test_body: str = ""
    test_headers: str = '{"Authorization": "Bearer $value"}'
    test_expect: str = "2xx"

    revoke_method: str = "DELETE"
    revoke_path: str
    revoke_body: str = ""
    revoke_headers: str = ""
    revoke_expect: str = "2xx"
    revoke_gone: str = "404"

    # Unset: as revoke.
    rollback_method: str | None = None
    rollback_path: str | None = None
    rollback_body: str | None = None
    rollback_headers: str | None = None
    rollback_expect: str | None = None
    rollback_gone: str | None = None

    # verify (credential add --verify): an admin request that changes nothing, expecting
    # verify_expect (default 2xx). Without verify_path it is a GET of base_url, and then
    # (without verify_expect) any answer but 401/403/408/429/5xx passes.
    verify_method: str = "GET"
    verify_path: str = ""
    verify_expect: str = ""

    _ops: dict[str, _Op] = PrivateAttr(default_factory=dict)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, v: str) -> str:
        parts = urllib.parse.urlsplit(v.strip())
        if parts.scheme not in ("http", "https"):
            raise _bad("base_url must start with http:// or https://")
        if not parts.hostname:
            raise _bad("base_url has no host")
        if parts.username is not None or parts.password is not None:
            raise _bad("base_url must not hold a user or password (use auth)")
        if parts.query or parts.fragment:
            raise _bad("base_url must not hold a query or fragment")
        if _dot_segment(parts.path):
            raise _bad("base_url holds a '.' or '..' path segment")
        try:
            _ = parts.port
        except ValueError:
            raise _bad("base_url has an invalid port") from None
        refusal = host_refusal(v)
        if refusal is not None:
            raise _bad(refusal)
        return v.strip().rstrip("/")

    @field_validator(*(f"{op}_method" for op in OPERATIONS), "verify_method")
    @classmethod
    def _check_methods(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else _check_method(v, str(info.field_name))

    @field_validator("auth", "hmac_key")
    @classmethod
    def _check_names(cls, v: str, info: ValidationInfo) -> str:
        if v != v.strip() or any(c in v for c in "\r\n\x00"):
            raise _bad(f"{info.field_name} must be a credential name")
        return v

    @model_validator(mode="after")
    def _compile(self) -> HttpConfig:
        if self.base_url.lower().startswith("http://") and not self.allow_insecure_http:
            raise _bad(
                "base_url is http://: keys and the admin token would cross the network in "
                "clear text; use https:// (or allow_insecure_http=true for a loopback target)"
            )
        ops = {op: self._build(op) for op in (*OPERATIONS, "verify")}
        for op in ("set", "test"):
            if "value" not in ops[op].uses:
                raise _bad(
                    f"{op}_path, {op}_body and {op}_headers never use $value: "
                    f"the {'new key would not reach' if op == 'set' else 'test would not use'} "
                    "the API"
                )
        for op in ("revoke", "rollback"):
            if not {"value", "version"} & ops[op].uses:
                raise _bad(
                    f"{op}_path, {op}_body and {op}_headers must name the key to delete "
                    "with $value or $version"
                )
        if self.auth:
            for op in ADMIN_OPS:
                if any(h.lower() == "authorization" for h in ops[op].headers):
                    raise _bad(f"{op}_headers sets Authorization and auth is set: use one of them")
        self._ops = ops
        return self

    def _build(self, op: str) -> _Op:
        if op == "verify":
            verify = _compile_op(
                "verify",
                {
                    "method": ("verify_method", self.verify_method),
                    "path": ("verify_path", self.verify_path or "/"),
                    "body": ("verify_body", ""),
                    "headers": ("verify_headers", ""),
                    "expect": ("verify_expect", self.verify_expect or "2xx"),
                },
            )
            if not self.verify_expect and not self.verify_path:
                # A GET of base_url: any answer but a refusal or a failure shows it is there.
                anything = frozenset(range(100, 500)) - {401, 403, 408, 429}
                return dataclasses.replace(verify, expect=anything)
            return verify
        roles = ["method", "path", "body", "headers", "expect"]
        if op in _ALSO_OK:
            roles.append("also_ok")
        settings: dict[str, tuple[str, str]] = {}
        for role in roles:
            field = f"{op}_{_ALSO_OK[op] if role == 'also_ok' else role}"
            value = getattr(self, field)
            if value is None:  # rollback_*: unset means as revoke_*
                field = field.replace("rollback_", "revoke_", 1)
                value = getattr(self, field)
            settings[role] = (field, str(value))
        return _compile_op(op, settings)

    def op(self, name: str) -> _Op:
        found = self._ops.get(name)
        if found is None:  # a model built without validation (model_construct)
            found = self._ops[name] = self._build(name)
        return found


# ------------------------------------------------------------------- redacted log lines

# The URL template of the call under way in this task: httpx's INFO line gets it instead of
# the real URL (which may hold a value), and httpcore's DEBUG lines (which print response
# headers) are dropped during our calls.
_CALL: contextvars.ContextVar[str | None] = contextvars.ContextVar("rotator_http", default=None)


class _RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        shown = _CALL.get()
        if shown is None:
            return True
        if record.name == "httpx" and isinstance(record.args, tuple) and len(record.args) == 5:
            method, _url, version, status, _reason = record.args
            record.args = (method, shown, version, status, "")
            return True
        return False


_FILTER = _RedactFilter()
for _name in (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
):
    logging.getLogger(_name).addFilter(_FILTER)


# ----------------------------------------------------------------------------- the calls


def _text(value: Secret, op: str, what: str) -> str:
    try:
        return value.reveal_text()
    except UnicodeDecodeError:
        raise PermanentError(f"{op}: {what} is not UTF-8 text; it cannot be sent") from None


def _render_str(parts: Parts, values: dict[str, str | int | None], op: str, quote: bool) -> str:
    out: list[str] = []
    for p in parts:
        if isinstance(p, str):
            out.append(p)
            continue
        v = values[p.name]
        if v is None:
            raise PermanentError(
                f"{op}: ${p.name} is used but there is none (the credential has no CURRENT value)"
            )
        s = str(v)
        out.append(urllib.parse.quote(s, safe="") if quote else s)
    return "".join(out)


def _render_body(node: Any, values: dict[str, str | int | None]) -> Any:
    if isinstance(node, _Ph):
        return values[node.name]
    if isinstance(node, list):
        return [_render_body(x, values) for x in node]
    if isinstance(node, dict):
        return {k: _render_body(v, values) for k, v in node.items()}
    return node


def _os_reason(exc: BaseException) -> str | None:
    """The operating system's words for a network failure (never a value)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return "TLS certificate verification failed"
        if isinstance(cur, OSError) and isinstance(cur.strerror, str) and cur.strerror:
            return cur.strerror
        cur = cur.__cause__ or cur.__context__
    return None


def _is_tls_trust(exc: BaseException) -> bool:
    cur: BaseException | None = exc
    for _ in range(10):
        if cur is None:
            return False
        if isinstance(cur, ssl.SSLCertVerificationError):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _transient_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


def _tls(cfg: HttpConfig) -> ssl.SSLContext:
    """The TLS context for ``cfg``, built once (loading a CA bundle takes ~0.1 s) and shared:
    an SSLContext does not belong to an event loop. A changed ca_file is read again."""
    if not cfg.ca_file:
        if cfg.base_url.lower().startswith("http://"):
            # No TLS to such a target (its clients are its own, and no redirect is
            # followed): skip loading the default CA bundle, trust no certificate.
            return _no_trust()
        return _tls_context("", 0)
    try:
        mtime = os.stat(cfg.ca_file).st_mtime_ns
    except OSError:
        raise PermanentError(f"ca_file {cfg.ca_file!r} cannot be read") from None
    return _tls_context(cfg.ca_file, mtime)


@functools.cache
def _no_trust() -> ssl.SSLContext:
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


@functools.lru_cache(maxsize=16)
def _tls_context(ca_file: str, mtime_ns: int) -> ssl.SSLContext:
    if not ca_file:
        return httpx.create_ssl_context()  # certifi, or SSL_CERT_FILE / SSL_CERT_DIR
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError):
        raise PermanentError(f"ca_file {ca_file!r} cannot be read as PEM") from None


@functools.lru_cache(maxsize=1024)
def _target_of(base_url: str) -> str:
    # Asked twice per request (the client's slot and the busy count): parse each URL once.
    parts = urllib.parse.urlsplit(base_url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{host}:{port}"


class HttpConnector:
    kind: ClassVar[str] = "http"
    strategy: ClassVar[Strategy] = Strategy.DUAL
    config_model: ClassVar[type[ConnectorConfig]] = HttpConfig
    references: ClassVar[tuple[str, ...]] = ("auth", "hmac_key")

    def __init__(self) -> None:
        self._clients: Resources[httpx.AsyncClient] = Resources(_close_client)
        # Up to CLIENTS_PER_TARGET clients per target, each call on the least busy (the
        # first when idle, so calls one after another share one kept-alive connection):
        # httpcore's pool checks each of its connections on every request, so one client with
        # 32 connections spends more CPU choosing a connection than sending (profiled: about
        # 7 ms a request at 32 concurrent calls).
        self._busy: dict[tuple[str, str], list[int]] = {}

    def __repr__(self) -> str:
        return f"HttpConnector({len(self._clients)} clients)"

    async def aclose(self) -> None:
        """Close every client and its kept-alive connections (see ``base.Closable``).
        Idempotent; a later call opens a client again."""
        await self._clients.aclose()

    async def _client(
        self, cfg: HttpConfig, verify: ssl.SSLContext, shard: int
    ) -> httpx.AsyncClient:
        """The target's client number ``shard``; a changed trust (ca_file rewritten)
        replaces it."""

        async def make() -> httpx.AsyncClient:
            return _Client(follow_redirects=False, verify=verify, limits=LIMITS)

        slot = (self.target_key(cfg), cfg.ca_file, shard)
        # The context is cached per (ca_file, mtime) and kept alive by the client using it,
        # so its id names the trust the client was made with.
        return await self._clients.get(slot, str(id(verify)).encode(), make)

    def target_key(self, config: ConnectorConfig) -> str:
        assert isinstance(config, HttpConfig)
        return _target_of(config.base_url)

    # -- the protocol ---------------------------------------------------------------------

    async def create(self, req: CreateRequest) -> Secret:
        assert isinstance(req.config, HttpConfig)
        cfg = req.config
        return generate(LocalConfig(generator=cfg.generator, length=cfg.length, prefix=cfg.prefix))

    async def set(self, req: SetRequest) -> None:
        assert isinstance(req.config, HttpConfig)
        values: dict[str, str | int | None] = {
            "value": _text(req.pending, "set", "the new value"),
            "previous": None if req.current is None else _text(req.current, "set", "$previous"),
            "credential": req.credential,
            "version": req.version,
        }
        await self._run(req.config, "set", values, req.secrets)

    async def test(self, req: TestRequest) -> None:
        assert isinstance(req.config, HttpConfig)
        values: dict[str, str | int | None] = {
            "value": _text(req.pending, "test", "the new value"),
            "credential": req.credential,
        }
        await self._run(req.config, "test", values, req.secrets)

    async def finish(self, req: FinishRequest) -> None:
        return None  # both keys stay valid; revoke removes the old one after the grace

    async def revoke(self, req: RevokeRequest) -> None:
        assert isinstance(req.config, HttpConfig)
        values: dict[str, str | int | None] = {
            "value": _text(req.value, "revoke", "the value"),
            "credential": req.credential,
            "version": req.version,
        }
        await self._run(req.config, "revoke", values, req.secrets)

    async def rollback(self, req: RollbackRequest) -> None:
        assert isinstance(req.config, HttpConfig)
        values: dict[str, str | int | None] = {
            "value": _text(req.pending, "rollback", "the new value"),
            "previous": (
                None if req.current is None else _text(req.current, "rollback", "$previous")
            ),
            "credential": req.credential,
            "version": req.version,
        }
        await self._run(req.config, "rollback", values, req.secrets)

    async def verify(self, req: VerifyRequest) -> None:
        """Resolve the referenced credentials, make the admin request (``verify_path`` or
        base_url) and, when a current value is given, the test request with it. Changes
        nothing on the target. Every failure is a PermanentError with one line."""
        assert isinstance(req.config, HttpConfig)
        cfg = req.config
        try:
            await self._run(cfg, "verify", {"credential": req.credential}, req.secrets)
            if req.current is not None and not req.extra.get("generated", False):
                values: dict[str, str | int | None] = {
                    "value": _text(req.current, "verify", "the current value"),
                    "credential": req.credential,
                }
                try:
                    await self._run(cfg, "test", values, req.secrets)
                except TransientError as exc:
                    raise PermanentError(str(exc)) from None
                except PermanentError as exc:
                    raise PermanentError(f"the current value does not work: {exc}") from None
        except TransientError as exc:
            raise PermanentError(str(exc)) from None

    # -- the machinery --------------------------------------------------------------------

    async def _run(
        self,
        cfg: HttpConfig,
        name: str,
        values: dict[str, str | int | None],
        secrets: SecretResolver,
    ) -> None:
        op = cfg.op(name)
        values = {p: values.get(p) for p in PLACEHOLDERS}
        if name == "verify" and not cfg.verify_path:
            has_path = bool(urllib.parse.urlsplit(cfg.base_url).path)
            shown = url = cfg.base_url + ("" if has_path else "/")
        else:
            shown = cfg.base_url + op.path_text
            path = _render_str(op.path, values, name, quote=True)
            if _dot_segment(path):
                raise PermanentError(
                    f"{name}: {op.method} {shown}: a value would make a path segment '.' or "
                    "'..' (which moves the call to another path); refused"
                )
            url = cfg.base_url + path
        label = f"{name}: {op.method} {shown}"

        headers: dict[str, bytes] = {}
        for h, parts in op.headers.items():
            rendered = _render_str(parts, values, name, quote=False)
            if _BAD_HEADER_CHARS.search(rendered):
                raise PermanentError(
                    f"{label}: header {h!r} would hold CR, LF or NUL from a value; "
                    "such a value cannot be sent in a header"
                )
            headers[h] = rendered.encode("utf-8")
        body = b""
        if op.has_body:
            doc = _render_body(op.body, values)
            body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            if not any(h.lower() == "content-type" for h in headers):
                headers["Content-Type"] = b"application/json"
        if name in ADMIN_OPS and cfg.auth:
            token = await self._secret(secrets, cfg.auth, label, "auth")
            headers["Authorization"] = b"Bearer " + _header_bytes(token, label, "the admin token")
        if cfg.hmac_key:
            key = await self._secret(secrets, cfg.hmac_key, label, "hmac_key")
            ts = str(int(time.time()))
            nonce = secrets_mod.token_hex(16)
            try:
                target = httpx.URL(url).raw_path.decode("ascii")  # what the request line holds
            except httpx.InvalidURL:
                raise PermanentError(f"{label}: the URL is not valid") from None
            message = signing_string(op.method, target, body, ts, nonce)
            mac = hmac.new(key.reveal(), message, hashlib.sha256).hexdigest()
            headers[TIMESTAMP_HEADER] = ts.encode()
            headers[NONCE_HEADER] = nonce.encode()
            headers[SIGNATURE_HEADER] = f"sha256={mac}".encode()

        status = await self._send(cfg, op.method, url, headers, body, label, shown)
        if status in op.expect or status in op.also_ok:
            return
        what = f"{label} answered {status} {_phrase(status)}".rstrip()
        if _transient_status(status):
            raise TransientError(what)
        if status in (401, 403):
            if name == "test":
                raise PermanentError(f"{what}: the API refused the value")
            if cfg.auth or cfg.hmac_key:
                whom = " and ".join(
                    x
                    for x in (
                        f"the admin token ({cfg.auth!r})" if cfg.auth else "",
                        f"the signature (hmac_key {cfg.hmac_key!r})" if cfg.hmac_key else "",
                    )
                    if x
                )
                raise PermanentError(f"{what}: the API refused {whom}")
            raise PermanentError(f"{what}: the API wants authentication (set auth)")
        if 300 <= status < 400:
            raise PermanentError(f"{what}: redirects are not followed (check base_url)")
        raise PermanentError(what)

    async def _secret(self, secrets: SecretResolver, name: str, label: str, what: str) -> Secret:
        try:
            return await secrets.get(name)
        except PermanentError as exc:
            raise PermanentError(f"{label}: {what}: {exc}") from None

    async def _send(
        self,
        cfg: HttpConfig,
        method: str,
        url: str,
        headers: dict[str, bytes],
        body: bytes,
        label: str,
        shown: str,
    ) -> int:
        """One request; the response body is never read. Raises Transient/PermanentError
        outside any ``except`` block, so no httpx exception (whose text or request may hold
        a value) rides along as a cause or context. A host outside ``ROTATOR_HTTP_ALLOW_HOSTS``
        is a PermanentError before anything is sent."""
        refusal = host_refusal(cfg.base_url)
        if refusal is not None:
            raise PermanentError(f"{label}: {refusal}")
        busy = self._busy.setdefault((self.target_key(cfg), cfg.ca_file), [0] * CLIENTS_PER_TARGET)
        shard = busy.index(min(busy))
        client = await self._client(cfg, _tls(cfg), shard)
        busy[shard] += 1
        token = _CALL.set(shown)
        problem: str | None = None
        transient = True
        status = 0
        try:
            async with asyncio.timeout(cfg.timeout_s):
                request = client.build_request(
                    method,
                    url,
                    headers=[(k.encode("ascii"), v) for k, v in headers.items()],
                    content=body,
                    extensions={"timeout": _timeout_ext(cfg.timeout_s)},
                )
                response = await client.send(request, stream=True)
                status = response.status_code
                try:
                    await _drain(response)
                finally:
                    await response.aclose()
        except (httpx.TimeoutException, TimeoutError):
            problem = f"timed out after {cfg.timeout_s:g}s"
        except httpx.ConnectError as exc:
            if _is_tls_trust(exc):
                problem, transient = "TLS certificate verification failed", False
            else:
                problem = f"cannot connect: {_os_reason(exc) or 'connection failed'}"
        except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
            problem = f"connection failed ({type(exc).__name__})"
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            problem, transient = f"could not send the request ({type(exc).__name__})", False
        finally:
            busy[shard] -= 1
            _CALL.reset(token)
        if problem is not None:
            raise (TransientError if transient else PermanentError)(f"{label} {problem}")
        return status


async def _drain(response: httpx.Response) -> None:
    """Read and discard a short body of a declared length, so the connection is kept alive
    (one whose body is left unread is closed). Any other body is left unread and its
    connection closes instead; a failure while reading changes nothing (the status is in)."""
    length = response.headers.get("content-length", "")
    if not length.isdigit() or int(length) > DRAIN_LIMIT:
        return
    with contextlib.suppress(httpx.HTTPError):
        async for _ in response.aiter_raw():
            pass


async def _close_client(client: httpx.AsyncClient) -> None:
    await client.aclose()


def _header_bytes(value: Secret, label: str, what: str) -> bytes:
    raw = value.reveal()
    if _BAD_HEADER_CHARS.search(raw.decode("latin-1")):
        raise PermanentError(f"{label}: {what} holds CR, LF or NUL; it cannot be sent")
    return raw


__all__ = ["HttpConfig", "HttpConnector", "signing_string"]
