"""The dashboard's pages (HTML) and its static files.

Every page authenticates the session cookie through the service (session.py), then calls
the same service use cases as the REST routes as that principal; a use case's refusal is a
page with its one-line reason and the REST status (401 goes back to the login form). Pages
render metadata only: no value, token or secret is ever put into HTML.
"""

from __future__ import annotations

import math
import urllib.parse
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from rotator import errors
from rotator.dashboard import session, views
from rotator.domain import names
from rotator.domain.model import Stage
from rotator.domain.principal import Action, Principal
from rotator.service import RotatorService, access, checkpoints, jobs, rollouts
from rotator.service import dashboard as reads
from rotator.service.rotation import Selection

router = APIRouter(include_in_schema=False)

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("rotator.dashboard", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def _cred_url(name: str) -> str:
    # A name with a "." or ".." (or empty) segment is escaped whole, as the API's Location:
    # a browser would resolve the segment to another credential's page.
    odd = any(part in ("", ".", "..") for part in name.split("/"))
    return "/credentials/" + urllib.parse.quote(name, safe="" if odd else "/")


_templates.filters["cred_url"] = _cred_url
_STATIC = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
        "object-src 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
PAGE_HEADERS = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
# A form body larger than this is refused (the forms hold a token, a name and a CSRF token).
_MAX_FORM = 16 * 1024
# api.limits puts the per-token rate charge here (scope state); read by name so the dashboard
# does not import the API package. Absent (no limiter): nothing is charged.
_CHARGE_KEY = "rotator_rate_charge"

# The REST API's statuses (api.problems), most specific first; a unit test
# (test_dashboard_views) keeps the two tables equal, since the dashboard may not import the API.
_STATUS: tuple[tuple[type[errors.RotatorError], int], ...] = (
    (errors.AuthenticationFailed, 401),
    (errors.PermissionDenied, 403),
    (errors.NotFound, 404),
    (errors.AlreadyExists, 409),
    (errors.ConcurrentModification, 409),
    (errors.InvalidInput, 400),
    (errors.NotInitialized, 503),
    (errors.StoreFull, 503),
    (errors.StoreUnavailable, 503),
    (errors.AuditKeyUnavailable, 503),
    (errors.ConnectorError, 502),
)


class _Refused(Exception):
    """A request refused by the dashboard itself (CSRF, a bad form): status and one line."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class _Ctx:
    """One authenticated request: the service, the principal, the session's CSRF token."""

    def __init__(self, svc: RotatorService, principal: Principal, token: str) -> None:
        self.svc = svc
        self.principal = principal
        self.csrf = session.csrf_token(token)
        self.token = token


def _svc(request: Request) -> RotatorService:
    svc: RotatorService = request.app.state.service
    return svc


def render(
    request: Request, name: str, http_status: int = 200, ctx: _Ctx | None = None, **data: Any
) -> HTMLResponse:
    """A template as a page with the dashboard's headers."""
    principal = ctx.principal if ctx is not None else None
    data.setdefault("nav", "")
    html = _templates.get_template(name).render(
        principal=principal,
        csrf=ctx.csrf if ctx is not None else None,
        may_audit=principal is not None and principal.may(Action.AUDIT_READ),
        may_rotations=principal is not None and principal.may(Action.ROTATION_READ),
        csrf_field=session.CSRF_FIELD,
        **data,
    )
    return HTMLResponse(html, status_code=http_status, headers=PAGE_HEADERS)


def _error_page(request: Request, status: int, detail: str, ctx: _Ctx | None) -> HTMLResponse:
    return render(
        request, "error.html", http_status=status, ctx=ctx, status_code=status, detail=detail
    )


def _to_login(request: Request, reason: str | None = None) -> Response:
    target = "/login" if reason is None else "/login?" + urllib.parse.urlencode({"why": reason})
    resp = RedirectResponse(target, status_code=303, headers=PAGE_HEADERS)
    _clear_cookie(request, resp)
    return resp


def _clear_cookie(request: Request, resp: Response) -> None:
    resp.delete_cookie(
        session.COOKIE,
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )


async def _authenticate(request: Request) -> _Ctx | None:
    """The request's session (None: no cookie). AuthenticationFailed when the service
    refuses its token (revoked, expired, unknown): audited there, as for the API."""
    token = session.cookie_token(request.cookies.get(session.COOKIE))
    if token is None:
        if request.cookies.get(session.COOKIE) is not None:
            raise errors.AuthenticationFailed("invalid session")
        return None
    svc = _svc(request)
    principal = await access.authenticate(svc, token)
    charge = request.scope.get("state", {}).get(_CHARGE_KEY)
    if charge is not None:
        wait = charge(principal)
        if wait > 0:
            raise _Refused(429, f"rate limit exceeded: retry in {max(1, math.ceil(wait))} s")
    return _Ctx(svc, principal, token)


def _same_origin(request: Request) -> bool:
    # Browsers send Sec-Fetch-Site on every request: a form posted from another site says
    # "cross-site" (or "same-site" from a sibling host). Under Referrer-Policy no-referrer a
    # form POST's Origin is "null", so Origin is only the fallback of a browser without
    # Fetch Metadata. (Neither header: a non-browser client, which cannot ride on a victim's
    # cookie; the CSRF token still applies.)
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return True
    parsed = urllib.parse.urlsplit(origin)
    return parsed.netloc == request.headers.get("host", "") and parsed.scheme == request.url.scheme


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > _MAX_FORM:
        raise _Refused(413, "form too large")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise _Refused(415, "expected a form (application/x-www-form-urlencoded)")
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=False
        )
    except UnicodeDecodeError:
        raise _Refused(400, "the form is not UTF-8") from None
    out: dict[str, str] = {}
    for k, v in pairs:
        out.setdefault(k, v)
    return out


Page = Callable[[Request, _Ctx], Awaitable[Response]]


async def _run(request: Request, page: Page, *, post: bool = False) -> Response:
    """Authenticate, check a POST's origin and CSRF token, run ``page``; map failures to
    pages with one line (never a traceback)."""
    ctx: _Ctx | None = None
    try:
        if post and not _same_origin(request):
            raise _Refused(403, "cross-site form refused")
        ctx = await _authenticate(request)
        if ctx is None:
            if post:
                raise _Refused(401, "not logged in")
            return _to_login(request)
        if post:
            form = await _form(request)
            if not session.csrf_ok(ctx.token, form.get(session.CSRF_FIELD)):
                raise _Refused(403, "missing or wrong CSRF token: reload the page and retry")
            request.state.form = form
        return await page(request, ctx)
    except errors.AuthenticationFailed as exc:
        if post:
            resp = _error_page(request, 401, str(exc).splitlines()[0], None)
            _clear_cookie(request, resp)
            return resp
        return _to_login(request, "session ended: log in again")
    except _Refused as exc:
        return _error_page(request, exc.status, exc.detail, ctx)
    except errors.RotatorError as exc:
        status = next((s for cls, s in _STATUS if isinstance(exc, cls)), 500)
        detail = str(exc).splitlines()[0] if status < 500 or status in (502, 503) else ""
        return _error_page(request, status, detail or type(exc).__name__, ctx)


# -- login ------------------------------------------------------------------------------------


@router.get("/login")
async def login_form(request: Request) -> Response:
    why = request.query_params.get("why")
    # Only the fixed notice this module sends is shown (not any text put in the URL).
    notice = why if why == "session ended: log in again" else None
    return render(request, "login.html", error=None, notice=notice)


@router.post("/login")
async def login(request: Request) -> Response:
    try:
        if not _same_origin(request):
            raise _Refused(403, "cross-site form refused")
        form = await _form(request)
    except _Refused as exc:
        return _error_page(request, exc.status, exc.detail, None)
    token = form.get("token", "").strip()
    if not token:
        return render(
            request, "login.html", http_status=400, error="enter an API token", notice=None
        )
    try:
        await access.authenticate(_svc(request), token)
    except errors.AuthenticationFailed as exc:
        # The service's one line never quotes the token.
        line = str(exc).splitlines()[0]
        return render(request, "login.html", http_status=401, error=line, notice=None)
    except errors.RotatorError as exc:
        return _error_page(request, 503, type(exc).__name__, None)
    resp = RedirectResponse("/", status_code=303, headers=PAGE_HEADERS)
    resp.set_cookie(
        session.COOKIE,
        token,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return resp


@router.post("/logout")
async def logout(request: Request) -> Response:
    async def page(request: Request, ctx: _Ctx) -> Response:
        return _to_login(request)

    return await _run(request, page, post=True)


# -- pages ------------------------------------------------------------------------------------


@router.get("/")
async def credentials_page(request: Request) -> Response:
    async def page(request: Request, ctx: _Ctx) -> Response:
        q = request.query_params
        tag_items = [t for t in q.getlist("tag") if t.strip()]
        tags = names.parse_pairs(tag_items, "tag", names.TAG_KEY)
        tenant = q.get("tenant", "").strip()
        search = q.get("q", "").strip()
        if len(search) > 200 or len(tenant) > 200:
            raise errors.InvalidInput("a filter is longer than 200 characters")
        if tenant:
            names.check_tenant_name(tenant)
        found = await reads.credential_overview(ctx.svc, tags=tags, principal=ctx.principal)
        now = ctx.svc.clock()
        tenants = sorted({c.tenant for c, _ in found} | {ctx.principal.tenant})
        all_tags = sorted({f"{k}={v}" for c, _ in found for k, v in c.tags.items()})
        rows = []
        for cred, last in found:
            if tenant and cred.tenant != tenant:
                continue
            if search and search.lower() not in cred.name.lower():
                continue
            status = views.status_of(cred, last, now)
            rows.append(
                {
                    "name": cred.name,
                    "tenant": cred.tenant,
                    "connector": cred.connector,
                    "tags": sorted(cred.tags.items()),
                    "age": views.age(cred, now),
                    "next": views.relative(cred.next_rotation_at, now),
                    "next_iso": views.iso(cred.next_rotation_at),
                    "status": status,
                    "status_label": views.STATUS_LABELS[status],
                }
            )
        counts = {s: sum(1 for r in rows if r["status"] == s) for s in views.STATUS_LABELS}
        return render(
            request,
            "credentials.html",
            ctx=ctx,
            rows=rows,
            counts=counts,
            labels=views.STATUS_LABELS,
            tag_filter=tag_items,
            all_tags=all_tags,
            tenants=tenants,
            tenant=tenant,
            search=search,
            nav="credentials",
        )

    return await _run(request, page)


@router.get("/history")
async def history_page(request: Request) -> Response:
    async def page(request: Request, ctx: _Ctx) -> Response:
        raw = request.query_params.get("hours", "24")
        if raw not in ("24", "48"):
            raise errors.InvalidInput("hours must be 24 or 48")
        hours = await reads.rotation_history(ctx.svc, int(raw), principal=ctx.principal)
        return render(
            request,
            "history.html",
            ctx=ctx,
            chart=views.chart(hours),
            hours=int(raw),
            nav="history",
        )

    return await _run(request, page)


@router.get("/rollouts")
async def rollouts_page(request: Request) -> Response:
    async def page(request: Request, ctx: _Ctx) -> Response:
        found = await rollouts.list_rollouts(ctx.svc, principal=ctx.principal)
        rows = []
        for ro in reversed(found):  # newest first
            done = ro.total - ro.counts.get("pending", 0) - ro.counts.get("running", 0)
            rows.append(
                {
                    "id": ro.id,
                    "status": ro.status,
                    "counts": ro.counts,
                    "total": ro.total,
                    "done": done,
                    "pct": 0 if ro.total == 0 else round(100 * done / ro.total),
                    "halt_reason": ro.halt_reason,
                    "created": views.iso(ro.created_at),
                    "finished": views.iso(ro.finished_at),
                    "selector": _selector_text(ro.selector),
                }
            )
        return render(request, "rollouts.html", ctx=ctx, rows=rows, nav="rollouts")

    return await _run(request, page)


def _selector_text(sel: dict[str, Any]) -> str:
    if sel.get("all"):
        return "all"
    parts = [f"{k}={v}" for k, v in sorted((sel.get("tags") or {}).items())]
    parts += list(sel.get("names") or [])
    return ", ".join(parts) or "-"


@router.get("/audit")
async def audit_page(request: Request) -> Response:
    async def page(request: Request, ctx: _Ctx) -> Response:
        result = await ctx.svc.audit_verify(principal=ctx.principal)
        try:
            seq, mac = await ctx.svc.audit_head(principal=ctx.principal)
            head: str | None = f"{seq}:{mac}"
        except errors.NotFound:
            head = None
        cps = await checkpoints.list_checkpoints(ctx.svc, principal=ctx.principal)
        last = cps[-1] if cps else None
        return render(
            request,
            "audit.html",
            ctx=ctx,
            result=result,
            head=head,
            checkpoint=last,
            checkpoints=len(cps),
            nav="audit",
        )

    return await _run(request, page)


@router.get("/jobs/{job_id}")
async def job_page(request: Request, job_id: str) -> Response:
    async def page(request: Request, ctx: _Ctx) -> Response:
        if len(job_id) > 64:
            raise errors.InvalidInput("a rotation id is at most 64 characters")
        job = await jobs.get_job(ctx.svc, job_id, principal=ctx.principal)
        return render(
            request,
            "job.html",
            ctx=ctx,
            job=job,
            names=list(job.selector.get("names") or []),
            created=views.iso(job.created_at),
            finished=views.iso(job.finished_at),
            nav="credentials",
        )

    return await _run(request, page)


@router.post("/credentials/{name:path}/rotate")
async def emergency_rotate(request: Request, name: str) -> Response:
    async def page(request: Request, ctx: _Ctx) -> Response:
        names.check_credential_name(name)
        form: dict[str, str] = request.state.form
        if form.get("confirm", "") != name:
            raise errors.InvalidInput("type the credential's name exactly to confirm")
        # The service decides: a principal that may not ROTATE it is refused (and audited)
        # before anything is stored, whatever this page showed.
        job = await jobs.start_job(
            ctx.svc, Selection(names=[name]), emergency=True, principal=ctx.principal
        )
        return RedirectResponse(f"/jobs/{job.id}", status_code=303, headers=PAGE_HEADERS)

    return await _run(request, page, post=True)


@router.get("/credentials/{name:path}")
async def credential_page(request: Request, name: str) -> Response:
    async def page(request: Request, ctx: _Ctx) -> Response:
        names.check_credential_name(name)
        cred = await ctx.svc.show(name, principal=ctx.principal)
        now = ctx.svc.clock()
        last = await reads.last_outcome(ctx.svc, cred, principal=ctx.principal)
        versions = []
        for v in sorted(cred.versions, key=lambda v: v.number, reverse=True):
            in_grace = v.stage is Stage.PREVIOUS and v.expires_at is not None and v.expires_at > now
            versions.append(
                {
                    "number": v.number,
                    "stage": v.stage.value,
                    "created": views.iso(v.created_at),
                    "staged": views.iso(v.staged_at),
                    "expires": views.iso(v.expires_at),
                    "grace_left": views.human(v.expires_at - now)
                    if in_grace and v.expires_at is not None
                    else None,
                }
            )
        # Only asked for when the role may read it, so a page view is not an audited denial.
        trail = None
        if ctx.principal.may(Action.AUDIT_READ, cred.name):
            entries = await ctx.svc.audit_entries(
                credential=cred.name, limit=50, principal=ctx.principal
            )
            trail = [
                {
                    "seq": e.seq,
                    "ts": e.ts,
                    "actor": e.actor,
                    "action": e.action,
                    "details": _details(e.details),
                }
                for e in reversed(entries)
            ]
        status = views.status_of(cred, last, now)
        return render(
            request,
            "credential.html",
            ctx=ctx,
            cred=cred,
            tags=sorted(cred.tags.items()),
            versions=versions,
            trail=trail,
            status=status,
            status_label=views.STATUS_LABELS[status],
            last=last,
            last_at=views.iso(last.finished_at) if last else "",
            age=views.age(cred, now),
            next=views.relative(cred.next_rotation_at, now),
            next_iso=views.iso(cred.next_rotation_at),
            may_rotate=ctx.principal.may(Action.ROTATE, cred.name),
            nav="credentials",
        )

    return await _run(request, page)


def _details(details: dict[str, Any]) -> str:
    # Audit details are metadata by contract (never a value); shown as short k=v pairs.
    text = ", ".join(f"{k}={v}" for k, v in sorted(details.items()))
    return text if len(text) <= 200 else text[:199] + "…"


@router.get("/static/{file}")
async def static(file: str) -> Response:
    media = _STATIC.get(file)
    if media is None:
        return Response("not found\n", status_code=404, headers=SECURITY_HEADERS)
    body = resources.files("rotator.dashboard").joinpath("static", file).read_bytes()
    headers = {**SECURITY_HEADERS, "Cache-Control": "public, max-age=300"}
    return Response(body, media_type=media, headers=headers)
