"""The invariants' target probes tell a value the target accepts, one it refuses, and a
target that does not answer apart (real servers): "refused" can never pass for a target
still down, so the check that no rolled-back value logs in cannot pass trivially."""

from __future__ import annotations

import socket
from types import SimpleNamespace
from typing import cast

import pytest

from rotator.domain.model import Credential
from tests.conftest import PgTarget, RedisServer
from tests.faults.invariants import Unreachable, pg_probe, redis_probe


def _cred(**config: str) -> Credential:
    return cast(Credential, SimpleNamespace(name="probe/x", config=config))


def _closed_port() -> int:
    with socket.socket() as s:  # bound, never listening: connections are refused
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.postgres
def test_the_postgres_probe_tells_accepted_refused_and_unreachable_apart(
    pg_target: PgTarget,
) -> None:
    cred = _cred(host=pg_target.host, port=str(pg_target.port), role=pg_target.superuser)
    assert pg_probe(cred, pg_target.password) is True
    assert pg_probe(cred, "not-the-password") is False
    with pytest.raises(Unreachable):
        pg_probe(_cred(host="127.0.0.1", port=str(_closed_port()), role="x"), "any")


def test_the_redis_probe_tells_accepted_refused_and_unreachable_apart(
    redis_server: RedisServer,
) -> None:
    where = {"host": redis_server.host, "port": str(redis_server.port)}
    assert redis_probe(_cred(**where, username="default"), "any") is True  # nopass
    assert redis_probe(_cred(**where, username="probe-no-such-user"), "any") is False
    with pytest.raises(Unreachable):
        redis_probe(_cred(host="127.0.0.1", port=str(_closed_port()), username="x"), "any")
