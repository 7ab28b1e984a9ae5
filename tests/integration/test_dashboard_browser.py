"""The dashboard in a real headless browser (Debian's chromium driven by Playwright) against a
real ``rotator serve`` subprocess on SQLite: an operator logs in, filters by tag, searches,
opens a credential and runs an emergency rotation through the typed confirmation (checked in
the store afterwards); an auditor sees no button and a forged POST is refused by the service;
a wrong token is refused at login. The permission checks also run on PostgreSQL without a
browser (test_dashboard_http.py).

Every page is saved as a screenshot under ``$ROTATOR_TEST_ARTIFACTS`` (default
``test-artifacts/dashboard/`` in the repository); with ``ROTATOR_DASHBOARD_DOCS=1`` they are
also written to ``docs/dashboard/`` (how the committed screenshots are regenerated).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright import sync_api as playwright_api
from tests.support.dashboard import FAILING, OPTIONS, VALUE, seed, settings
from tests.support.server import ServeProcess, serve_env

from rotator.domain.model import Stage
from rotator.service import BlockingService

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("ROTATOR_TEST_ARTIFACTS") or REPO / "test-artifacts" / "dashboard")
DOCS = REPO / "docs" / "dashboard"
CRED = "prod/payments/db"


class Shots:
    """Numbered full-page screenshots of each page visited."""

    def __init__(self, page: playwright_api.Page) -> None:
        self.page = page
        self.n = 0
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.docs = os.environ.get("ROTATOR_DASHBOARD_DOCS") == "1"

    def __call__(self, name: str) -> None:
        self.n += 1
        path = ARTIFACTS / f"{self.n:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        if self.docs and name != "failure":
            DOCS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, DOCS / f"{name}.png")


@pytest.fixture
def browser() -> Iterator[playwright_api.Browser]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def _stages(svc: BlockingService) -> dict[int, Stage]:
    return {v.number: v.stage for v in svc.show(CRED).versions}


def test_operator_filters_searches_and_emergency_rotates_while_an_auditor_is_refused(
    tmp_path: Path, browser: playwright_api.Browser
) -> None:
    expect = playwright_api.expect
    home = tmp_path / "home"
    db_url = f"sqlite:///{tmp_path}/rotator.db"
    svc, _ = BlockingService.init(settings(home, db_url), options=OPTIONS)
    try:
        seeded = seed(svc, home, db_url)
        tokens = seeded.tokens
        with ServeProcess(serve_env(home, db_url)) as srv:
            base = srv.base_url
            ctx = browser.new_context(viewport={"width": 1280, "height": 800})
            page = ctx.new_page()
            page.set_default_timeout(15_000)
            shot = Shots(page)
            seen: list[str] = []  # every page's HTML, checked for secrets at the end
            page.on(
                "response",
                lambda r: (
                    seen.append(r.text())
                    if r.ok and "html" in r.headers.get("content-type", "")
                    else None
                ),
            )
            external: list[str] = []
            # Script errors and CSP violations (a blocked inline script or style) both land
            # here; a 4xx page's own "Failed to load resource" line is expected.
            console: list[str] = []
            page.on(
                "console",
                lambda m: (
                    console.append(m.text)
                    if m.type == "error" and not m.text.startswith("Failed to load resource")
                    else None
                ),
            )
            page.on("pageerror", lambda e: console.append(str(e)))
            page.on(
                "request", lambda r: external.append(r.url) if not r.url.startswith(base) else None
            )

            try:
                # A wrong token is refused at login.
                page.goto(base + "/")
                assert page.url == base + "/login"
                shot("login")
                page.fill("#token", tokens["operator"][:-4] + "AAAA")
                page.click("#login")
                expect(page.locator("#login-error")).to_have_text("invalid token")
                shot("login-refused")

                # The operator logs in; the session cookie is out of reach of scripts.
                page.fill("#token", tokens["operator"])
                page.click("#login")
                expect(page.locator("#credentials tbody tr")).to_have_count(4)
                (cookie,) = ctx.cookies()
                assert cookie["httpOnly"]
                assert cookie["sameSite"] == "Strict"
                assert cookie["path"] == "/"
                assert page.evaluate("document.cookie") == ""
                expect(page.locator("tr[data-name='prod/search/api'] .pill")).to_have_text(
                    "due soon"
                )
                expect(page.locator(f"tr[data-name='{FAILING}'] .pill")).to_have_text("failed")
                shot("credentials")

                # Filter by tag, then search within it.
                page.select_option("#tag", "env=prod")
                page.click("#apply")
                expect(page.locator("#credentials tbody tr")).to_have_count(2)
                page.fill("#q", "payments")
                page.click("#apply")
                expect(page.locator("#credentials tbody tr")).to_have_count(1)
                shot("credentials-filtered")

                # Open the credential: versions and stages, a grace countdown, no audit trail
                # (an operator does not read the audit log).
                page.click(f"a:text-is('{CRED}')")
                expect(page.locator("h1")).to_contain_text(CRED)
                expect(page.locator("#versions tbody tr")).to_have_count(2)
                expect(page.locator(".countdown")).to_have_count(1)
                expect(page.locator("#trail-hidden")).to_be_visible()
                shot("credential")

                # Emergency rotation behind the typed confirmation.
                before = _stages(svc)
                current = next(n for n, s in before.items() if s is Stage.CURRENT)
                button = page.locator("#emergency-rotate")
                expect(button).to_be_disabled()
                page.fill("#confirm", "prod/payments")
                expect(button).to_be_disabled()
                page.fill("#confirm", CRED)
                expect(button).to_be_enabled()
                shot("emergency-confirm")
                button.click()
                expect(page.locator("#job-status")).to_have_text("done", timeout=30_000)
                expect(page.locator("#job-rotated")).to_have_text(CRED)
                shot("rotation-job")
                after = _stages(svc)
                new_current = [n for n, s in after.items() if s is Stage.CURRENT]
                assert new_current == [current + 1], after
                assert after[current] is Stage.RETIRED, after  # grace 0: revoked at once
                assert Stage.PREVIOUS not in after.values(), after
                assert svc.get_value(CRED).reveal_text() != VALUE
                page.click("a.back")
                expect(page.locator("#versions tbody tr")).to_have_count(3)
                shot("credential-after-emergency")

                page.click("text=History")
                expect(page.locator("#history rect.ok")).not_to_have_count(0)
                shot("history")
                page.click("text=Rollouts")
                expect(page.locator("#rollouts tbody tr.rollout-running")).to_have_count(1)
                shot("rollouts")
                page.click("#logout")
                expect(page.locator("#token")).to_be_visible()
                assert ctx.cookies() == []

                # The auditor: the audit chain and trail, no button; a forged form is refused.
                page.fill("#token", tokens["auditor"])
                page.click("#login")
                page.goto(f"{base}/credentials/{CRED}")
                expect(page.locator("#trail tbody tr")).not_to_have_count(0)
                expect(page.locator("#emergency-rotate")).to_have_count(0)
                shot("credential-auditor")
                page.click("text=Audit")
                expect(page.locator("#chain-status")).to_contain_text("verified")
                expect(page.locator("#checkpoint")).to_contain_text("seq")
                shot("audit")
                stages = _stages(svc)
                csrf = page.locator("input[name=csrf]").first.get_attribute("value")
                # A same-origin form the page never offered, with the auditor's own CSRF token
                # and the typed name: only the service stands in the way.
                page.evaluate(
                    """([action, csrf, name]) => {
                        const f = document.createElement("form");
                        f.method = "post"; f.action = action;
                        for (const [k, v] of [["csrf", csrf], ["confirm", name]]) {
                            const i = document.createElement("input");
                            i.type = "hidden"; i.name = k; i.value = v; f.appendChild(i);
                        }
                        document.body.appendChild(f); f.submit();
                    }""",
                    [f"/credentials/{CRED}/rotate", csrf, CRED],
                )
                expect(page.locator("#problem")).to_contain_text("may not rotate")
                expect(page.locator("h1")).to_have_text("403")
                shot("forged-rotation-refused")
                assert _stages(svc) == stages
            except BaseException:
                shot("failure")  # the page as it was when the test failed
                raise
            ctx.close()

        assert external == []
        assert console == []
        for html in seen:
            assert VALUE not in html
            assert all(t not in html for t in tokens.values())
        assert all(t not in srv.stderr for t in tokens.values())
        assert VALUE not in srv.stderr
    finally:
        svc.close()
