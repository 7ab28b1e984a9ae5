"""``RemoteService``: the use cases the CLI calls, over the REST API of ``rotator serve``.

Same method names, signatures and return types as :class:`rotator.service.BlockingService`
for the commands that run remotely (see :class:`rotator.cli.port.UseCases`); results are
rebuilt from the REST JSON with the inverse views of :mod:`rotator.service.views`. It acts as
its token's principal. Errors are the service's typed errors, with the server's ``detail`` as
the message (status mapping of the SDK, :func:`rotator.client.client._problem`, plus the
statuses only a writing client meets), so the CLI's exit codes are those of local use. The
server cannot be reached (refused, TLS, timeout): InvalidInput naming ``ROTATOR_URL``, never
the token.
"""

from __future__ import annotations

import dataclasses
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import httpx

from rotator.client.client import _problem
from rotator.domain.model import Credential, Stage
from rotator.domain.secret import Secret
from rotator.errors import AlreadyExists, InvalidInput, RotatorError
from rotator.service import (
    BatchResult,
    EventInput,
    EventReport,
    PolicyInput,
    RotationResult,
    ValueInput,
)
from rotator.service.rotation import Selection
from rotator.service.views import (
    AuditEntry,
    EventRow,
    VerifyResult,
    audit_entry_from_json,
    batch_result_from_json,
    credential_from_view,
    event_report_from_json,
    event_row_from_json,
    verify_result_from_json,
)

URL_ENV = "ROTATOR_URL"
CA_ENV = "ROTATOR_CA_FILE"
PAGE = 1000  # the API's largest page
POLL_FIRST_S = 0.05
POLL_MAX_S = 1.0
NO_POLICY = PolicyInput()  # the defaults of BlockingService's use cases
NO_VALUE = ValueInput()


def _path(name: str, suffix: str = "") -> str:
    return "/v1/credentials/" + urllib.parse.quote(name, safe="/") + suffix


def safe_url(url: str) -> str:
    """``url`` without any user:password part (for messages)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def error_of(resp: httpx.Response) -> RotatorError:
    """The typed error of a non-2xx answer (see the module docstring)."""
    err = _problem(resp)
    status = resp.status_code
    if status == 409:
        return AlreadyExists(str(err))
    if status in (413, 415):
        return InvalidInput(str(err))
    if status == 429:
        after = resp.headers.get("Retry-After", "").strip()
        wait = after if after.isdigit() else "a few"
        return InvalidInput(f"rate limited: retry after {wait} s")
    return err


class RemoteService:
    """See the module docstring. Keeps one keep-alive connection; close it (or ``with``)."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        ca_file: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("http", "https"):
            raise InvalidInput(f"{URL_ENV} must be an http:// or https:// URL")
        self.url = safe_url(url)
        # https verifies the server's certificate: against the system's CAs, or only the
        # private CA of ROTATOR_CA_FILE.
        verify: ssl.SSLContext | bool = True
        if ca_file:
            try:
                verify = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise InvalidInput(
                    f"{CA_ENV} {ca_file[:200]!r} is not a readable PEM CA file"
                ) from exc
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            verify=verify,
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RemoteService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ----------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json: Any = None,
    ) -> httpx.Response:
        try:
            resp = self.http.request(method, path, params=params, json=json)
        except httpx.TransportError as exc:
            # The exception's text may quote the URL with its user part: name only the type.
            raise InvalidInput(
                f"cannot reach the server at {URL_ENV} {self.url}: {type(exc).__name__}"
            ) from None
        if resp.status_code >= 400:
            raise error_of(resp)
        return resp

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        resp = self._call(method, path, **kw)
        try:
            return resp.json()
        except ValueError:
            raise RotatorError(f"the server's answer to {method} {path} is not JSON") from None

    def _pages(
        self, path: str, params: list[tuple[str, Any]], page: int = PAGE
    ) -> Iterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            query = [*params, ("limit", page)] + ([("cursor", cursor)] if cursor else [])
            data = self._json("GET", path, params=query)
            yield from data["items"]
            cursor = data.get("next_cursor")
            if not cursor:
                return

    # -- credentials -------------------------------------------------------------------------

    def add_credential(
        self,
        name: str,
        connector: str,
        *,
        settings: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        policy: PolicyInput = NO_POLICY,
        value: ValueInput = NO_VALUE,
        verify: bool = False,
        sinks: Sequence[str] = (),
    ) -> Credential:
        body: dict[str, Any] = {"name": name, "connector": connector, "verify": verify}
        body.update(_fields(settings, tags, policy, value, list(sinks) if sinks else None))
        return credential_from_view(self._json("POST", "/v1/credentials", json=body))

    def list_credentials(
        self, *, tags: Mapping[str, str] | None = None, due: bool = False
    ) -> list[Credential]:
        params: list[tuple[str, Any]] = [("tag", f"{k}={v}") for k, v in (tags or {}).items()]
        if due:
            params.append(("due", "true"))
        return [credential_from_view(v) for v in self._pages("/v1/credentials", params)]

    def show(self, name: str) -> Credential:
        return credential_from_view(self._json("GET", _path(name)))

    def get_value(self, name: str, stage: Stage = Stage.CURRENT) -> Secret:
        data = self._json("GET", _path(name, "/value"), params={"stage": stage.value})
        value = data.get("value") if isinstance(data, dict) else None
        if not isinstance(value, str):
            raise RotatorError("the server's answer has no value")
        return Secret(value.encode("utf-8"))

    def update_credential(
        self,
        name: str,
        *,
        connector: str | None = None,
        settings: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        policy: PolicyInput = NO_POLICY,
        value: ValueInput = NO_VALUE,
        sinks: Sequence[str] | None = None,
    ) -> Credential:
        body = _fields(settings, tags, policy, value, None if sinks is None else list(sinks))
        if connector is not None:
            body["connector"] = connector
        return credential_from_view(self._json("PATCH", _path(name), json=body))

    def report_usage(self, name: str, count: int = 1) -> Credential:
        self._call("POST", _path(name, "/usage"), json={"count": count})
        # The usage answer has only the count; the command shows the next rotation too.
        return self.show(name)

    def remove_credential(self, name: str) -> None:
        self._call("DELETE", _path(name))

    # -- rotations ---------------------------------------------------------------------------

    def plan(self, sel: Selection, *, emergency: bool = False) -> list[dict[str, Any]]:
        data = self._json(
            "POST", "/v1/rotations", json={**_selection(sel, emergency), "dry_run": True}
        )
        plan: list[dict[str, Any]] = data["plan"]
        return plan

    def rotate(
        self,
        sel: Selection,
        *,
        emergency: bool = False,
        progress: Callable[[RotationResult], None] | None = None,
        on_selected: Callable[[int], None] | None = None,
    ) -> BatchResult:
        """Start the rotation job, poll it until it is done, then report its results: the
        callbacks run at the end (the job's results are known only then)."""
        job = self._json("POST", "/v1/rotations", json=_selection(sel, emergency))
        href = f"/v1/rotations/{urllib.parse.quote(str(job['id']), safe='')}"
        wait = POLL_FIRST_S
        while job.get("status") == "running":
            # Polling a server: there is no clock to pass in, only its answer to wait for.
            time.sleep(wait)
            wait = min(wait * 2, POLL_MAX_S)
            job = self._json("GET", href)
        if job.get("result") is None:
            raise RotatorError(f"rotation job {job['id']} {job.get('status')}: {job.get('error')}")
        result = batch_result_from_json(job["result"])
        if on_selected is not None:
            on_selected(len(result.results))
        if progress is not None:
            for r in result.results:
                progress(r)
        return result

    # -- audit ---------------------------------------------------------------------------------

    def audit_entries(
        self, credential: str | None = None, limit: int | None = None
    ) -> list[AuditEntry]:
        params: list[tuple[str, Any]] = [] if credential is None else [("credential", credential)]
        entries = [audit_entry_from_json(e) for e in self._pages("/v1/audit", params)]
        return entries if limit is None else entries[-limit:]

    def audit_verify(self, expect_head: tuple[int, str] | None = None) -> VerifyResult:
        body = {
            "expect_head": None if expect_head is None else f"{expect_head[0]}:{expect_head[1]}"
        }
        return verify_result_from_json(self._json("POST", "/v1/audit/verify", json=body))

    def audit_head(self) -> tuple[int, str]:
        data = self._json("GET", "/v1/audit/head")
        return int(data["seq"]), str(data["hash"])

    # -- risk events ---------------------------------------------------------------------------

    def report_event(self, event: EventInput) -> EventReport:
        body: dict[str, Any] = {"kind": event.kind, "severity": event.severity}
        if event.credential is not None:
            body["credential"] = event.credential
        if event.tags is not None:
            body["tags"] = dict(event.tags)
        if event.detail is not None:
            body["detail"] = event.detail
        return event_report_from_json(self._json("POST", "/v1/events", json=body))

    def list_events(self, limit: int = 50) -> list[EventRow]:
        """The newest ``limit`` events, newest first (pages of the API until ``limit``)."""
        if limit < 1:
            raise InvalidInput("--limit must be at least 1")
        rows: list[EventRow] = []
        for e in self._pages("/v1/events", [], page=min(limit, PAGE)):
            rows.append(event_row_from_json(e))
            if len(rows) == limit:
                break
        return rows

    # -- reports (as the server renders them) -----------------------------------------------

    def compliance_text(self, fmt: str, since: str) -> str:
        """The compliance report of the token's tenant, as the server renders it in ``fmt``."""
        return self._call(
            "GET", "/v1/reports/compliance", params={"format": fmt, "since": since}
        ).text

    def evidence_json(self, rotation_id: str) -> dict[str, Any]:
        """One rotation's evidence record, as ``Evidence.to_json`` shows it."""
        path = "/v1/reports/evidence/" + urllib.parse.quote(rotation_id, safe="")
        data: dict[str, Any] = self._json("GET", path)
        return data


def _fields(
    settings: Mapping[str, str] | None,
    tags: Mapping[str, str] | None,
    policy: PolicyInput,
    value: ValueInput,
    sinks: list[str] | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if settings is not None:
        body["settings"] = dict(settings)
    if tags is not None:
        body["tags"] = dict(tags)
    given = {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in dataclasses.asdict(policy).items()
        if v is not None
    }
    if given:
        body["policy"] = given
    if value.value is not None:
        body["value"] = value.value.reveal_text()
    if value.generate:
        body["generate"] = True
    if sinks is not None:
        body["sinks"] = sinks
    return body


def _selection(sel: Selection, emergency: bool) -> dict[str, Any]:
    return {
        "names": list(sel.names),
        "tags": dict(sel.tags or {}),
        "all": sel.all,
        "emergency": emergency,
    }
