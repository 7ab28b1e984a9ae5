"""An open ``GET /v1/watch`` stream does not outlive its token: revoked, or its principal
removed (by another process, here the test's), the stream ends within the authentication
cache's TTL (1 s here) plus the feed's recheck interval (2 s).

Against a real ``rotator serve`` subprocess on SQLite and PostgreSQL; the stream is read in
a thread and the test waits (bounded, never a sleep) for it to end.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
from tests.support.server import ServeProcess, serve_env

from rotator.config import Settings
from rotator.domain.principal import LOCAL_PRINCIPAL, Role
from rotator.service import BlockingService, ValueInput, access, watch

WAIT_S = 30.0  # a bound on waiting for the stream to end (the fix ends it in about 3 s)


@pytest.fixture
def store(tmp_path: Path, db_url: str) -> Iterator[tuple[BlockingService, Path, str]]:
    home = tmp_path / "home"
    svc, _ = BlockingService.init(Settings(home=home, db_url=db_url))
    try:
        yield svc, home, db_url
    finally:
        svc.close()


class Stream:
    """``GET /v1/watch`` read line by line in a thread until the server ends it."""

    def __init__(self, url: str, token: str) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.ended = threading.Event()
        self.error: BaseException | None = None
        self._args = (url, token)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        url, token = self._args
        try:
            with httpx.stream(
                "GET",
                f"{url}/v1/watch",
                headers={"Authorization": f"Bearer {token}"},
                timeout=httpx.Timeout(30, read=None),
            ) as resp:
                assert resp.status_code == 200, resp.read()
                for line in resp.iter_lines():
                    self.lines.append(line)
                    if line.startswith("event: ready"):
                        self.ready.set()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.ended.set()


@pytest.mark.parametrize("how", ["token revoked", "principal removed"])
def test_an_open_watch_stream_ends_when_its_token_is_revoked_or_its_principal_removed(
    store: tuple[BlockingService, Path, str], how: str
) -> None:
    svc, home, db_url = store
    svc.add_credential("app/db", "local", value=ValueInput(generate=True))
    svc.add_principal("reader", Role.READER, kind="service")
    token = svc.create_token("reader")[1]
    token_id = token[len("rtr_") : len("rtr_") + 12]
    env = serve_env(home, db_url, ROTATOR_API_AUTH_TTL_S="1")
    with ServeProcess(env) as srv:
        stream = Stream(srv.base_url, token)
        assert stream.ready.wait(WAIT_S), (stream.lines, stream.error)
        assert not stream.ended.is_set()
        if how == "token revoked":
            svc.revoke_token(token_id)
        else:
            svc.remove_principal("reader")
        assert stream.ended.wait(WAIT_S), "the stream outlived the revocation"
        assert stream.error is None, stream.error
        assert not any(line.startswith("event: current") for line in stream.lines)
        # The client reconnecting is refused.
        r = httpx.get(
            f"{srv.base_url}/v1/watch",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert r.status_code == 401, r.text


def test_a_feed_that_rechecks_its_token_never_shows_the_token_in_its_repr(
    store: tuple[BlockingService, Path, str],
) -> None:
    svc = store[0]
    secret = "rtr_aaaaaaaaaaaa_" + "S" * 43
    sub = svc.run(
        watch.subscribe(
            svc.service, LOCAL_PRINCIPAL, recheck=partial(access.authenticate, svc.service, secret)
        )
    )
    assert secret not in repr(sub)
    assert "S" * 43 not in repr(sub)
