"""The dashboard over HTTP (no browser) against a real ``rotator serve`` subprocess, on SQLite
and PostgreSQL (``db_url``): the session cookie's flags, CSRF, the security headers, logout,
a revoked token's session, bad input as one-line 4xx pages, no external URL in any page or
asset, no secret in any page, and the service refusing an auditor's forged emergency rotation.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.dashboard import CSRF, FAILING, OPTIONS, VALUE, Seeded, seed, settings
from tests.support.server import ServeProcess, serve_env

from rotator.api.app import create_app
from rotator.domain.model import Stage
from rotator.domain.principal import Role
from rotator.service import BlockingService, RotatorService, access

CRED = "prod/payments/db"
PAGES = [
    "/",
    "/?tag=env%3Dprod",
    "/?q=search",
    "/?tenant=default",
    "/history",
    "/history?hours=48",
    "/rollouts",
    f"/credentials/{CRED}",
    "/audit",
]
ASSETS = ["/static/dashboard.css", "/static/dashboard.js"]
# Any absolute or scheme-relative URL in an attribute or a CSS url(): the dashboard serves
# every asset itself, so none may appear.
EXTERNAL = re.compile(
    r"""(?:src|href|action)\s*=\s*["']?\s*(?:[a-z]+:|//)|url\(\s*["']?\s*(?:[a-z]+:|//)|@import""",
    re.I,
)


@pytest.fixture
def served(tmp_path: Path, db_url: str) -> Iterator[tuple[ServeProcess, Seeded, BlockingService]]:
    home = tmp_path / "home"
    svc, created = BlockingService.init(settings(home, db_url), options=OPTIONS)
    assert created
    try:
        seeded = seed(svc, home, db_url)
        # No auth cache in the server: a token revoked here (another process) is refused there
        # at the next request, without waiting out a TTL.
        env = serve_env(home, db_url, ROTATOR_API_AUTH_TTL_S="0")
        with ServeProcess(env) as srv:
            yield srv, seeded, svc
        for token in seeded.tokens.values():
            assert token not in srv.stderr
        assert VALUE not in srv.stderr
    finally:
        svc.close()


def _client(srv: ServeProcess) -> httpx.Client:
    return httpx.Client(base_url=srv.base_url, timeout=30, follow_redirects=False)


def _login(c: httpx.Client, token: str) -> str:
    r = c.post("/login", data={"token": token})
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/"
    page = c.get("/")
    assert page.status_code == 200, page.text
    m = CSRF.search(page.text)
    assert m is not None
    return m.group(1)


def _secure_page(r: httpx.Response) -> None:
    h = r.headers
    csp = h["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert h["x-frame-options"] == "DENY"
    assert h["referrer-policy"] == "no-referrer"
    assert h["cache-control"] == "no-store"


def _one_line_page(r: httpx.Response, status: int, tokens: dict[str, str]) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("text/html")
    _secure_page(r)
    problems = re.findall(r'<p class="error" id="problem">([^<]*)</p>', r.text)
    assert len(problems) == 1, r.text
    assert "\n" not in problems[0], r.text
    assert "Traceback" not in r.text
    _no_secret(r.text, tokens)
    return problems[0]


def _no_secret(text: str, tokens: dict[str, str]) -> None:
    assert VALUE not in text
    for token in tokens.values():
        assert token not in text
        assert token.split("_", 2)[2] not in text  # not even the token's secret part


def _versions(svc: BlockingService) -> list[tuple[int, Stage]]:
    return sorted((v.number, v.stage) for v in svc.show(CRED).versions)


def test_dashboard_sessions_csrf_headers_bad_input_and_permissions(
    served: tuple[ServeProcess, Seeded, BlockingService],
) -> None:
    srv, seeded, svc = served
    tokens = seeded.tokens
    before = _versions(svc)
    with _client(srv) as c:
        # Not logged in: every page sends to the login form.
        r = c.get("/")
        assert r.status_code == 303
        assert r.headers["location"] == "/login"
        login = c.get("/login")
        assert login.status_code == 200
        _secure_page(login)

        # A wrong token is refused at login: 401, one line, no cookie set.
        wrong = tokens["operator"][:-4] + "AAAA"
        r = c.post("/login", data={"token": wrong})
        assert r.status_code == 401
        assert "set-cookie" not in r.headers
        assert re.findall(r'id="login-error">([^<]*)<', r.text) == ["invalid token"]
        assert wrong not in r.text

        # An operator logs in: the cookie is HttpOnly, SameSite=Strict, Path=/ (not Secure
        # over plain HTTP: the browser would not send it back).
        r = c.post("/login", data={"token": tokens["operator"]})
        assert r.status_code == 303
        cookie = r.headers["set-cookie"]
        attrs = {a.strip().lower() for a in cookie.split(";")[1:]}
        assert "httponly" in attrs
        assert "samesite=strict" in attrs
        assert "path=/" in attrs
        assert "secure" not in attrs
        csrf = _login(c, tokens["operator"])

        # Every page and asset: the headers, no external URL, no secret.
        for path in PAGES:
            if path == "/audit":
                # An operator's role may not read the audit log: the service's 403.
                _one_line_page(c.get(path), 403, tokens)
                continue
            r = c.get(path)
            assert r.status_code == 200, (path, r.text, srv.stderr[-3000:])
            _secure_page(r)
            assert not EXTERNAL.search(r.text), (path, EXTERNAL.search(r.text))
            _no_secret(r.text, tokens)
        listed = c.get("/?tag=env%3Dprod").text
        assert "prod/search/api" in listed
        assert "dev/tools/cache" not in listed
        searched = c.get("/?q=search").text
        assert "prod/search/api" in searched
        assert "prod/payments/db" not in searched
        for path in ASSETS:
            r = c.get(path)
            assert r.status_code == 200
            assert r.headers["x-content-type-options"] == "nosniff"
            assert not EXTERNAL.search(r.text), path
            assert "http:" not in r.text, path
            assert "https:" not in r.text, path
        home_page = c.get("/").text
        assert re.search(rf'data-name="{FAILING}">\s*<td><span class="pill failed">', home_page)
        assert re.search(r'data-name="prod/search/api">\s*<td><span class="pill due">', home_page)
        assert re.search(rf'data-name="{CRED}">\s*<td><span class="pill ok">', home_page)
        page = c.get(f"/credentials/{CRED}").text
        assert 'id="emergency-rotate"' in page  # an operator may rotate it
        assert re.search(r'class="countdown" data-expires="[^"]+Z"', page)  # PREVIOUS in grace

        # Bad input: one line, a 4xx page, nothing changes.
        assert "malformed tag" in _one_line_page(c.get("/?tag=nope"), 400, tokens)
        _one_line_page(c.get("/history?hours=7"), 400, tokens)
        _one_line_page(c.get("/credentials/Bad%20Name!"), 400, tokens)
        _one_line_page(c.get("/credentials/prod/nothing/here"), 404, tokens)
        _one_line_page(c.get("/jobs/no-such-job"), 400, tokens)  # not a job id

        # POSTs need the session's CSRF token, the typed name, and a same-origin form.
        rotate = f"/credentials/{CRED}/rotate"
        no_csrf = c.post(rotate, data={"confirm": CRED})
        assert "CSRF" in _one_line_page(no_csrf, 403, tokens)
        bad_csrf = c.post(rotate, data={"confirm": CRED, "csrf": "0" * 64})
        _one_line_page(bad_csrf, 403, tokens)
        cross = c.post(
            rotate,
            data={"confirm": CRED, "csrf": csrf},
            headers={"Origin": "https://evil.example"},
        )
        _one_line_page(cross, 403, tokens)
        fetched = c.post(
            rotate,
            data={"confirm": CRED, "csrf": csrf},
            headers={"Sec-Fetch-Site": "cross-site", "Origin": "null"},
        )
        assert "cross-site" in _one_line_page(fetched, 403, tokens)
        unconfirmed = c.post(rotate, data={"confirm": "prod/payments", "csrf": csrf})
        _one_line_page(unconfirmed, 400, tokens)
        assert _versions(svc) == before

        # Logout clears the cookie; the page then sends to the login form again.
        r = c.post("/logout", data={"csrf": csrf})
        assert r.status_code == 303
        assert r.headers["location"] == "/login"
        assert re.search(
            r"rotator_session=\"?\"?;.*(Max-Age=0|expires=)", r.headers["set-cookie"], re.I
        )
        assert "rotator_session" not in c.cookies
        r = c.get("/")
        assert r.status_code == 303
        assert r.headers["location"] == "/login"

    # An auditor sees no button, and a forged POST (with the auditor's own valid CSRF token
    # and the typed name) is refused by the service: 403, nothing rotated.
    with _client(srv) as c:
        csrf = _login(c, tokens["auditor"])
        page = c.get(f"/credentials/{CRED}")
        assert page.status_code == 200
        assert "emergency-rotate" not in page.text
        assert 'id="trail"' in page.text
        audit = c.get("/audit")
        assert audit.status_code == 200
        assert "verified" in audit.text
        forged = c.post(f"/credentials/{CRED}/rotate", data={"confirm": CRED, "csrf": csrf})
        assert "may not rotate" in _one_line_page(forged, 403, tokens)
        assert _versions(svc) == before
        denied = [e for e in svc.audit_entries(CRED) if e.action == "access.denied"]
        assert denied
        assert denied[-1].actor == "auditor"

    # A revoked token's session ends at its next request.
    with _client(srv) as c:
        _login(c, tokens["admin"])
        token_id = tokens["admin"].split("_")[1]
        svc.revoke_token(token_id)
        r = c.get("/")
        assert r.status_code == 303
        assert r.headers["location"].startswith("/login")
        assert "rotator_session" not in c.cookies
        r = c.post(f"/credentials/{CRED}/rotate", data={"confirm": CRED, "csrf": "x"})
        assert r.status_code in (303, 401, 403)
    assert _versions(svc) == before


def test_over_https_the_session_cookie_is_also_secure(tmp_path: Path) -> None:
    # The app in-process behind an https:// URL (as under --tls-cert/--tls-key, which
    # test_serve.py covers): a subprocess with TLS costs seconds for one cookie flag.
    async def run() -> str:
        svc, _ = await RotatorService.init(
            settings(tmp_path / "home", f"sqlite:///{tmp_path}/r.db")
        )
        try:
            await access.add_principal(svc, "operator", Role.OPERATOR)
            token = (await access.create_token(svc, "operator"))[1]
            transport = httpx.ASGITransport(app=create_app(svc))
            async with httpx.AsyncClient(transport=transport, base_url="https://dash") as c:
                r = await c.post("/login", data={"token": token})
                assert r.status_code == 303
                assert (await c.get("/")).status_code == 200
                return r.headers["set-cookie"]
        finally:
            await svc.aclose()

    cookie = asyncio.run(run())
    attrs = {a.strip().lower() for a in cookie.split(";")[1:]}
    assert {"secure", "httponly", "samesite=strict", "path=/"} <= attrs
