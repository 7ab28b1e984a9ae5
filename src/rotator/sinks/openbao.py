"""The ``openbao`` sink: the new CURRENT value written to a KV v2 secret of OpenBao (or
HashiCorp Vault, same API) after each rotation.

Spec: ``openbao:addr=https://bao:8200,mount=secret,path=app/db,key=password,auth=token,
token=CRED`` or ``...,auth=approle,role_id=ROLE,secret_id=CRED``; optional ``ca=/path.pem``
(a PEM bundle to trust), ``timeout_s`` (default 10: per request, and 4 x ``timeout_s`` bounds a
whole write attempt, so a server trickling its answer cannot hold a rotation) and
``allow_insecure_http=true`` (``http://``, refused for any host but ``localhost`` and loopback
addresses: the token travels in every request). ``token`` and ``secret_id`` are
NAMES of rotator credentials holding the token / the AppRole secret_id, never values: the
engine reads them through its secret resolver, audited as ``value.read`` like a connector's
admin secret. An AppRole login's client token is used for the write, then revoked.

A write never overwrites someone else's: it reads the secret first and

- writes with ``cas=0`` when the path holds nothing (never written, or its metadata deleted);
- does nothing when the key holds the new value already (a retry after a lost answer);
- writes with ``cas`` = the version read when the key holds the value this rotation replaced
  or any earlier value of the credential (what the sink wrote last time, a write that was
  missed since, or what the operator put there to match);
- otherwise, or when the check-and-set fails because someone wrote in between, raises
  SinkConflict: the other writer's value stays, and the rotation stays done;
- after its read, right before it decides and writes, asks the engine whether the value is
  still the credential's CURRENT and writes nothing when a later rotation has replaced it
  (SinkSuperseded: that rotation writes its own value; audited ``sink.skipped``).

Other keys of the secret are kept. Connection failures, timeouts, 429 and 5xx are
SinkUnavailable (the engine retries); a refused login and a 403 are SinkDenied (the engine
re-reads the token or secret_id credential once and retries), a certificate that does not verify
and other statuses are SinkError. No message holds a value, a token or a response body.
``ROTATOR_HTTP_ALLOW_HOSTS`` (see ``rotator.connectors.http``) bounds ``addr`` too: checked when
the sink is added or updated (:meth:`OpenBaoSink.host_refusal`) and before every write, not when
a stored sink is loaded or shown (a changed allow list must not break ``credential list``).
The token needs ``read``, ``create`` and ``update`` on ``MOUNT/data/PATH``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import os
import re
import ssl
import urllib.parse
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rotator.connectors._hosts import is_loopback
from rotator.connectors.base import SecretResolver
from rotator.connectors.http import host_refusal
from rotator.domain.names import CREDENTIAL_NAME
from rotator.domain.secret import Secret
from rotator.errors import ConnectorError, RotatorError
from rotator.sinks.base import (
    SinkConflict,
    SinkDenied,
    SinkError,
    SinkRequest,
    SinkSuperseded,
    SinkUnavailable,
)

_SEGMENT = re.compile(r"[A-Za-z0-9_.@+-]+")
_KEY = re.compile(r"[A-Za-z0-9_.-]+")
_ROLE_ID = re.compile(r"[A-Za-z0-9_.-]{1,200}")
_TOKEN = re.compile(r"[\x21-\x7e]{1,4096}")  # printable ASCII: nothing that can split a header
_EARLIER = 20  # earlier values compared at most (the newest; older ones are long replaced)


def _segments(text: str, what: str) -> str:
    parts = text.strip("/").split("/")
    for p in parts:
        if not _SEGMENT.fullmatch(p) or p in (".", ".."):
            raise ValueError(
                f"{what} must be segments of letters, digits and _ . @ + - joined by /, "
                "none of them . or .."
            )
    return "/".join(parts)


_HTTPS = (
    "addr must be https:// (the token travels with every request); "
    "allow_insecure_http=true permits http:// only for a server on loopback"
)
_REQUESTS = 4  # at most per write: login, read, write, revoke (bounds an attempt's time)


class OpenBaoSink(BaseModel):
    """Settings of an ``openbao`` sink (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    addr: str
    mount: str = "secret"
    path: str
    key: str = "value"
    auth: Literal["token", "approle"] = "token"
    token: str | None = None
    role_id: str | None = None
    secret_id: str | None = None
    ca: str | None = None
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    allow_insecure_http: bool = False

    @field_validator("addr")
    @classmethod
    def _addr(cls, v: str) -> str:
        try:
            url = httpx.URL(v)
        except (httpx.InvalidURL, ValueError):
            raise ValueError("addr must be a URL like https://bao.example.com:8200") from None
        if url.scheme not in ("https", "http") or not url.host:
            raise ValueError("addr must be a URL like https://bao.example.com:8200")
        if url.userinfo or url.query or url.fragment or url.path not in ("", "/"):
            raise ValueError("addr must be scheme://host[:port] only, with no path or query")
        return f"{url.scheme}://{url.netloc.decode('ascii')}"

    @field_validator("mount")
    @classmethod
    def _mount(cls, v: str) -> str:
        out = _segments(v, "mount")
        if "/" in out:
            raise ValueError("mount must be one path segment (the KV v2 engine's mount)")
        return out

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return _segments(v, "path")

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        if not _KEY.fullmatch(v):
            raise ValueError("key must be letters, digits and _ . -")
        return v

    @field_validator("token", "secret_id")
    @classmethod
    def _credential_name(cls, v: str | None) -> str | None:
        # The message never repeats the input: a pasted token must not reach a terminal or log.
        if v is not None and not CREDENTIAL_NAME.fullmatch(v):
            raise ValueError(
                "must be the NAME of the rotator credential that holds it, never the value"
            )
        return v

    @field_validator("role_id")
    @classmethod
    def _role_id(cls, v: str | None) -> str | None:
        if v is not None and not _ROLE_ID.fullmatch(v):
            raise ValueError("role_id must be letters, digits and _ . -")
        return v

    @field_validator("ca")
    @classmethod
    def _ca(cls, v: str | None) -> str | None:
        if v is not None and (not os.path.isabs(v) or "\x00" in v):
            raise ValueError("ca must be an absolute path")
        return v

    @model_validator(mode="after")
    def _auth_settings(self) -> OpenBaoSink:
        if self.auth == "token" and (self.token is None or self.role_id or self.secret_id):
            raise ValueError("auth=token needs token=CREDENTIAL and no role_id or secret_id")
        if self.auth == "approle" and (
            self.role_id is None or self.secret_id is None or self.token is not None
        ):
            raise ValueError("auth=approle needs role_id=ID and secret_id=CREDENTIAL, no token")
        if self.addr.startswith("http://") and not self.allow_insecure_http:
            raise ValueError(_HTTPS)
        return self

    def host_refusal(self) -> str | None:
        """Why ``addr`` may not be written to, or None: an ``http://`` host that is not
        loopback, or one ``ROTATOR_HTTP_ALLOW_HOSTS`` leaves out. Checked when a sink is added
        or updated and before each write; not in the model, so a stored sink still loads (and
        shows) after the allow list changed."""
        if self.addr.startswith("http://") and not is_loopback(httpx.URL(self.addr).host):
            return _HTTPS
        return host_refusal(self.addr, what="addr")

    # ------------------------------------------------------------------ descriptions

    def describe(self) -> str:
        """One value-free line; :func:`from_description` reads it back."""
        auth = (
            f"token {self.token}"
            if self.auth == "token"
            else (f"approle {self.role_id} {self.secret_id}")
        )
        return f"openbao {self._url} ({self.key}; {auth})"

    @property
    def _url(self) -> str:
        return f"{self.addr}/v1/{self.mount}/data/{self.path}"

    def references(self) -> frozenset[str]:
        """Names of the credentials this sink reads (its token or secret_id)."""
        return frozenset(x for x in (self.token, self.secret_id) if x is not None)

    # ------------------------------------------------------------------------ writing

    async def write(self, req: SinkRequest) -> None:
        """Write ``req.value`` under ``key`` (see the module docstring). Idempotent: a retry
        after a write whose answer was lost finds the value there and returns. Raises
        SinkUnavailable (retry), SinkConflict or SinkError; never a third-party error."""
        refusal = self.host_refusal()
        if refusal is not None:
            raise SinkError(refusal)
        try:
            new = req.value.reveal_text()
        except UnicodeDecodeError:
            raise SinkError("the value is not UTF-8 text; a KV secret holds text") from None
        bound = _REQUESTS * self.timeout_s
        try:
            # httpx's timeout is per network read: a server sending a byte a second never
            # trips it. The whole attempt is bounded here.
            async with asyncio.timeout(bound):
                await self._write(req, new)
        except TimeoutError as exc:
            raise SinkUnavailable(f"write: {self.addr} took over {bound:g} s") from exc

    async def _write(self, req: SinkRequest, new: str) -> None:
        async with httpx.AsyncClient(
            base_url=self.addr, verify=self._tls(), timeout=self.timeout_s, follow_redirects=False
        ) as client:
            token, revoke = await self._login(client, req.secrets)
            try:
                await self._put(client, token, new, req)
            finally:
                if revoke:
                    await self._revoke(client, token)

    def _tls(self) -> ssl.SSLContext:
        if self.ca is None:
            return _tls_context("", 0)
        try:
            mtime = os.stat(self.ca).st_mtime_ns
            return _tls_context(self.ca, mtime)
        except (OSError, ssl.SSLError) as exc:
            raise SinkError(f"ca {self.ca!r} cannot be read as PEM") from exc

    async def _secret(self, secrets: SecretResolver, name: str, what: str) -> str:
        try:
            value = await secrets.get(name)
        except (ConnectorError, RotatorError) as exc:  # no such credential, tampered store...
            raise SinkError(f"{what}: {exc}") from exc
        try:
            text = value.reveal_text().strip()
        except UnicodeDecodeError:
            text = ""
        if not _TOKEN.fullmatch(text):
            raise SinkError(f"{what}: credential {name!r} does not hold a usable {what}")
        return text

    async def _login(self, client: httpx.AsyncClient, secrets: SecretResolver) -> tuple[str, bool]:
        """The token for the write, and whether to revoke it afterwards (an AppRole login's)."""
        if self.auth == "token":
            assert self.token is not None
            return await self._secret(secrets, self.token, "token"), False
        assert self.secret_id is not None
        secret_id = await self._secret(secrets, self.secret_id, "secret_id")
        resp = await self._call(
            client,
            "POST",
            "/v1/auth/approle/login",
            "approle login",
            json={"role_id": self.role_id, "secret_id": secret_id},
        )
        if resp.status_code in (400, 401, 403):
            raise SinkDenied(
                f"approle login refused (HTTP {resp.status_code}): wrong role_id or secret_id"
            )
        if resp.status_code != 200:
            raise SinkError(f"approle login: HTTP {resp.status_code} {_phrase(resp)}")
        token = _dig(resp, "auth", "client_token")
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            raise SinkError("approle login: the answer holds no client token")
        return token, True

    async def _put(self, client: httpx.AsyncClient, token: str, new: str, req: SinkRequest) -> None:
        url = "/v1/{}/data/{}".format(
            urllib.parse.quote(self.mount, safe=""),
            "/".join(urllib.parse.quote(p, safe="") for p in self.path.split("/")),
        )
        headers = {"X-Vault-Token": token}
        resp = await self._call(client, "GET", url, "read", headers=headers)
        data: dict[str, Any] = {}
        if resp.status_code not in (200, 404):
            raise self._refused(resp, "read")
        # Before judging what is there: a later rotation may have written its value (which
        # this value's replaced one does not match) or be about to.
        if not await req.still_current():
            raise SinkSuperseded(
                "superseded: a later rotation replaced this value before it was written; "
                "not written"
            )
        if resp.status_code == 404:
            if isinstance(_dig(resp, "data", "metadata", "version"), int):
                raise SinkConflict(
                    "conflict: the secret's latest version was deleted by someone else; "
                    "not overwritten (write the CURRENT value there, or delete its "
                    "metadata, to resume)"
                )
            cas = 0
        else:
            found = _dig(resp, "data", "data")
            version = _dig(resp, "data", "metadata", "version")
            if not isinstance(version, int) or not isinstance(found, dict):
                raise SinkError("read: the answer is not a KV v2 secret (is the mount KV v2?)")
            held = found.get(self.key)
            if isinstance(held, str) and _same(held, new):
                return  # written already: a retry after a lost answer
            if not isinstance(held, str) or not await _ours(held, req):
                raise SinkConflict(
                    f"conflict: version {version} of the secret has a {self.key!r} that is "
                    "not a value rotator wrote for this credential; not overwritten"
                )
            data, cas = found, version
        body = {"options": {"cas": cas}, "data": {**data, self.key: new}}
        resp = await self._call(client, "POST", url, "write", headers=headers, json=body)
        if resp.status_code in (200, 204):
            return
        if resp.status_code == 400 and "check-and-set" in resp.text:
            raise SinkConflict(
                f"conflict: the secret was written by someone else after version {cas} was "
                "read (check-and-set failed); not overwritten"
            )
        raise self._refused(resp, "write")

    def _refused(self, resp: httpx.Response, op: str) -> SinkError:
        if resp.status_code == 403:
            return SinkDenied(
                f"{op}: permission denied (HTTP 403): the token is wrong, expired, or lacks "
                f"read/create/update on {self.mount}/data/{self.path}"
            )
        return SinkError(f"{op}: HTTP {resp.status_code} {_phrase(resp)}")

    async def _revoke(self, client: httpx.AsyncClient, token: str) -> None:
        # Best effort: the login's token expires with its TTL anyway. Bounded on its own: it
        # also runs when the attempt's time ran out.
        with contextlib.suppress(httpx.HTTPError, TimeoutError):
            async with asyncio.timeout(self.timeout_s):
                await client.post("/v1/auth/token/revoke-self", headers={"X-Vault-Token": token})

    async def _call(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        op: str,
        *,
        headers: dict[str, str] | None = None,
        json: Any = None,
    ) -> httpx.Response:
        """One request; transport failures, 429 and 5xx are SinkUnavailable."""
        try:
            resp = await client.request(method, url, headers=headers, json=json)
        except httpx.TimeoutException as exc:
            raise SinkUnavailable(f"{op}: {self.addr} timed out") from exc
        except httpx.HTTPError as exc:
            if _untrusted(exc):
                # Not a passing failure: retrying cannot make the certificate verify.
                raise SinkError(
                    f"{op}: the TLS certificate of {self.addr} is not trusted (set ca=)"
                ) from exc
            # The class names the failure; str(exc) could quote a request detail.
            raise SinkUnavailable(f"{op}: cannot reach {self.addr} ({type(exc).__name__})") from exc
        if resp.status_code == 429 or resp.status_code >= 500:
            raise SinkUnavailable(f"{op}: HTTP {resp.status_code} {_phrase(resp)}")
        return resp


@functools.lru_cache(maxsize=16)
def _tls_context(ca: str, mtime_ns: int) -> ssl.SSLContext:
    # Built once per CA file version (loading a bundle takes ~0.1 s; a batch writes many
    # sinks); an SSLContext belongs to no event loop, so one is shared.
    return ssl.create_default_context(cafile=ca) if ca else httpx.create_ssl_context()


def from_description(text: str) -> dict[str, Any]:
    """The stored form whose :meth:`OpenBaoSink.describe` is ``text``."""
    _, _, rest = text.partition(" ")
    url, _, inner = rest.rpartition(" (")
    key, _, auth = inner.removesuffix(")").partition("; ")
    addr, _, tail = url.partition("/v1/")
    mount, _, path = tail.partition("/data/")
    out: dict[str, Any] = {"kind": "openbao", "addr": addr, "mount": mount, "path": path}
    out["key"] = key
    words = auth.split(" ")
    if words[0] == "approle" and len(words) == 3:
        out.update(auth="approle", role_id=words[1], secret_id=words[2])
    else:
        out.update(auth="token", token=words[-1])
    if addr.startswith("http://"):
        out["allow_insecure_http"] = True
    return out


def _same(a: str, b: str | Secret) -> bool:
    other = b.reveal() if isinstance(b, Secret) else b.encode()
    return hmac.compare_digest(a.encode(), other)


async def _ours(held: str, req: SinkRequest) -> bool:
    """Is ``held`` a value of this credential: the one this rotation replaced, or an earlier
    one (read only when needed: it opens stored versions)?"""
    if req.previous is not None and _same(held, req.previous):
        return True
    earlier = await req.earlier()
    return any(_same(held, v) for v in earlier[:_EARLIER])


def _dig(resp: httpx.Response, *keys: str) -> Any:
    try:
        node: Any = resp.json()
    except ValueError:
        return None
    for k in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(k)
    return node


def _phrase(resp: httpx.Response) -> str:
    return resp.reason_phrase or ""


def _untrusted(exc: BaseException) -> bool:
    """Does the chain of ``exc`` hold a certificate verification failure?"""
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        if isinstance(node, ssl.SSLCertVerificationError):
            return True
        seen.add(id(node))
        node = node.__cause__ or node.__context__
    return False
