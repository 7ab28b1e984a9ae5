"""Errors that share a status but not a meaning keep their meaning through the API: the
problem ``type`` tells them apart and the SDK (which the remote CLI uses) raises the same
error class the service raised."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from rotator import errors
from rotator.api import problems
from rotator.cli.app import BAD_INPUT
from rotator.client import client as sdk


def _app(exc: errors.RotatorError) -> FastAPI:
    app = FastAPI()
    problems.install(app)

    @app.get("/boom")
    async def boom() -> None:
        raise exc

    return app


@pytest.mark.parametrize(
    ("exc", "slug", "kind"),
    [
        (errors.StoreFull("database x is full: disk full"), "store-full", errors.StoreFull),
        (errors.StoreUnavailable("cannot reach x"), "unavailable", errors.StoreUnavailable),
    ],
)
def test_a_store_that_is_full_is_told_apart_from_one_not_answering_through_the_api(
    exc: errors.RotatorError, slug: str, kind: type[errors.RotatorError]
) -> None:
    with TestClient(_app(exc)) as http:
        resp = http.get("/boom")
    assert resp.status_code == 503
    assert resp.headers["content-type"] == problems.MEDIA_TYPE
    assert resp.json()["type"] == f"https://rotator.dev/problems/{slug}"
    assert resp.json()["detail"] == str(exc)
    back = sdk._problem(resp)
    assert type(back) is kind
    assert str(back) == str(exc)
    # The CLI: a full store is an operation failure (exit 1), one not answering bad input.
    assert isinstance(back, BAD_INPUT) is (kind is errors.StoreUnavailable)
