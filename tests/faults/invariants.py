"""The invariants every fault test checks after recovery, by code (never by reading logs).

After any fault and the recovery that follows it, for every credential of the store:

1. it still exists, and every version it had before the fault still exists with the same
   sealed value (values are immutable; a stage may move, a version may never disappear);
2. exactly one version is CURRENT, and the CURRENT value works on the real target (a fresh
   login on PostgreSQL/Redis; ``local`` values only need to open);
3. no rotation is left in a non-final step (every intent was resumed or rolled back);
4. the audit chain verifies.

Use :func:`snapshot` before the fault and :func:`check_recovered` after recovery. A target
probe is a callable ``(credential, value text) -> bool``; :func:`pg_probe` and
:func:`redis_probe` log in for real.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import psycopg
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import create_engine, select

from rotator.config import Settings
from rotator.domain.model import Credential, Stage
from rotator.service import BlockingService
from rotator.store.schema import credentials, rotations, versions

FINAL_STEPS = frozenset({"finished", "rolled_back", "failed"})

Probe = Callable[[Credential, str], bool]


@dataclass(frozen=True)
class StoreSnapshot:
    """Per credential name: version number -> (stage, SHA-256 of its sealed ciphertext)."""

    versions: Mapping[str, Mapping[int, tuple[str, str]]]

    def names(self) -> set[str]:
        return set(self.versions)


def snapshot(db_url: str) -> StoreSnapshot:
    """The store's versions read straight from its tables (no service, no recovery)."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(
                    credentials.c.name, versions.c.number, versions.c.stage, versions.c.ciphertext
                ).join(versions, versions.c.credential_id == credentials.c.id)
            ).all()
    finally:
        engine.dispose()
    out: dict[str, dict[int, tuple[str, str]]] = {}
    for name, number, stage, blob in rows:
        out.setdefault(name, {})[number] = (stage, hashlib.sha256(bytes(blob)).hexdigest())
    return StoreSnapshot(out)


def unfinished_rotations(db_url: str) -> list[tuple[str, str]]:
    """(credential, step) of every rotation row not in a final step."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(rotations.c.credential, rotations.c.step)).all()
    finally:
        engine.dispose()
    return [(c, s) for c, s in rows if s not in FINAL_STEPS]


def _login(value: str, default_user: str) -> tuple[str, str]:
    try:
        data = json.loads(value)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("password"), str):
        return str(data.get("username") or default_user), data["password"]
    return default_user, value


def pg_probe(cred: Credential, value: str) -> bool:
    """A fresh login on the credential's PostgreSQL target with ``value``."""
    cfg = cred.config
    user, password = _login(value, cfg["role"])
    try:
        with psycopg.connect(
            host=cfg.get("host", "127.0.0.1"),
            port=int(cfg.get("port", 5432)),
            dbname=cfg.get("dbname", "postgres"),
            user=user,
            password=password,
            connect_timeout=5,
        ) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


def redis_probe(cred: Credential, value: str) -> bool:
    """A fresh AUTH on the credential's Redis target with ``value``."""
    cfg = cred.config
    user, password = _login(value, cfg["username"])
    # One attempt: redis-py retries a refused AUTH as a connection error (seconds per probe).
    client = redis.Redis(
        host=cfg.get("host", "127.0.0.1"),
        port=int(cfg.get("port", 6379)),
        socket_timeout=5,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        client.auth(password, username=user)
        return True
    except redis.RedisError:
        return False
    finally:
        client.close()


def default_probe(cred: Credential, value: str) -> bool:
    """Log in for postgres/redis credentials; any other connector's value only has to open."""
    if cred.connector == "postgres":
        return pg_probe(cred, value)
    if cred.connector == "redis":
        return redis_probe(cred, value)
    return True


def check_recovered(
    settings: Settings, before: StoreSnapshot, probe: Probe = default_probe
) -> StoreSnapshot:
    """Assert the four invariants (module docstring) against ``before``; return the new
    snapshot. Call it after recovery has run (a rotate, a worker pass, a restarted serve)."""
    db_url = settings.db_url
    after = snapshot(db_url)
    assert before.names() <= after.names(), f"credentials lost: {before.names() - after.names()}"
    for name, old in before.versions.items():
        new = after.versions[name]
        lost = set(old) - set(new)
        assert not lost, f"{name}: versions lost: {sorted(lost)}"
        changed = [n for n in old if old[n][1] != new[n][1]]
        assert not changed, f"{name}: sealed value of versions {changed} changed"
    stuck = unfinished_rotations(db_url)
    assert not stuck, f"rotations left unfinished after recovery: {stuck}"
    svc = BlockingService.open(settings)
    try:
        for name in sorted(after.names()):
            stages = [stage for stage, _ in after.versions[name].values()]
            assert stages.count(Stage.CURRENT.value) == 1, f"{name}: stages {stages}"
            cred = svc.show(name)
            value = svc.get_value(name).reveal_text()
            assert probe(cred, value), f"{name}: CURRENT does not work on its target"
        report = svc.audit_verify()
        assert report.ok, f"audit chain does not verify: {report}"
    finally:
        svc.close()
    return after
