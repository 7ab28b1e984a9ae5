"""The invariants every fault test checks after recovery, by code (never by reading logs).

After any fault and the recovery that follows it, for every credential of the store:

1. it still exists, and every version it had before the fault still exists with the same
   sealed value (values are immutable; a stage may move, a version may never disappear);
2. exactly one version is CURRENT, and the CURRENT value works on the real target (a fresh
   login on PostgreSQL/Redis; ``local`` values only need to open);
3. no FAILED (rolled-back or abandoned) version's value is accepted by the target: a value
   the store gave up must not stay valid where no one would ever remove it;
4. no rotation is left in a non-final step (every intent was resumed or rolled back);
5. the audit chain verifies.

Use :func:`snapshot` before the fault and :func:`check_recovered` after recovery. A target
probe is a callable ``(credential, value text) -> True | False | None``: True the target
accepts the value, False it refuses it, None there is no target to ask (the value only has
to open); it raises :class:`Unreachable` when the target cannot be reached, so a probe of a
target still down can never pass for "refused". :func:`pg_probe` and :func:`redis_probe` log
in for real.
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
from rotator.store import credentials as store_creds
from rotator.store.schema import credentials, rotations, versions

FINAL_STEPS = frozenset({"finished", "rolled_back", "failed"})

Probe = Callable[[Credential, str], "bool | None"]


class Unreachable(Exception):
    """A probe could not reach the target: it can tell neither accepted nor refused."""


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


# SQLSTATEs of a login the server refused: invalid_password, invalid_authorization_specification.
_PG_REFUSED = frozenset({"28P01", "28000"})


def pg_probe(cred: Credential, value: str) -> bool:
    """A fresh login on the credential's PostgreSQL target with ``value``: True accepted,
    False refused by the server; Unreachable when no server answered."""
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
    except psycopg.OperationalError as exc:
        text = str(exc)
        if exc.sqlstate in _PG_REFUSED or "authentication failed" in text:
            return False
        raise Unreachable(f"{cred.name}: PostgreSQL target: {text.splitlines()[0]}") from exc


def redis_probe(cred: Credential, value: str) -> bool:
    """A fresh AUTH on the credential's Redis target with ``value``: True accepted, False
    refused (WRONGPASS); Unreachable when no server answered."""
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
    except redis.AuthenticationError:  # checked first: it is a ConnectionError too
        return False
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise Unreachable(f"{cred.name}: Redis target: {exc}") from exc
    except redis.ResponseError as exc:
        if str(exc).startswith(("WRONGPASS", "NOPERM")):
            return False
        raise
    finally:
        client.close()


def default_probe(cred: Credential, value: str) -> bool | None:
    """Log in for postgres/redis credentials; None for any other connector (no target to
    ask: its value only has to open)."""
    if cred.connector == "postgres":
        return pg_probe(cred, value)
    if cred.connector == "redis":
        return redis_probe(cred, value)
    return None


def check_recovered(
    settings: Settings, before: StoreSnapshot, probe: Probe = default_probe
) -> StoreSnapshot:
    """Assert the invariants (module docstring) against ``before``; return the new
    snapshot. Call it after recovery has run (a rotate, a worker pass, a restarted serve),
    with every target up (a probe that cannot reach one raises Unreachable)."""
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
            assert probe(cred, value) is not False, f"{name}: CURRENT does not work on its target"
            kernel = svc.kernel
            with kernel.db.read() as conn:
                for v in cred.versions:
                    if v.stage is not Stage.FAILED:
                        continue
                    sealed = store_creds.sealed_version(conn, cred.id, number=v.number)
                    assert sealed is not None
                    stale = kernel.open_version(conn, sealed).reveal_text()
                    assert probe(cred, stale) is not True, (
                        f"{name}: version {v.number} is FAILED but its target accepts it"
                    )
        report = svc.audit_verify()
        assert report.ok, f"audit chain does not verify: {report}"
    finally:
        svc.close()
    return after
