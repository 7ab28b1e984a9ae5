"""API tokens: ``rtr_<id>_<secret>``, kept only as a digest, refused when wrong, revoked or
expired (every refusal audited as ``auth.denied``), and never found in the store, the logs or
the audit log. Every test runs on SQLite and PostgreSQL (``db_url``)."""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text

from rotator.config import Settings
from rotator.domain.principal import Action, Grant, Principal, Role
from rotator.errors import (
    AlreadyExists,
    AuthenticationFailed,
    InvalidInput,
    NotFound,
    PermissionDenied,
)
from rotator.service import BlockingService
from rotator.service import access as access_mod
from rotator.store.schema import audit_log, metadata, principals, tenants, tokens

TOKEN_RE = re.compile(r"rtr_[a-z2-7]{12}_[A-Za-z0-9_-]{43}")
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def timed(svc: BlockingService, settings: Settings, clock: Clock) -> Iterator[BlockingService]:
    """A second service on the same store whose clock the test moves."""
    other = BlockingService.open(settings, clock=clock)
    yield other
    other.close()


def audit_rows(raw_db: Engine, action: str | None = None) -> list[dict[str, Any]]:
    with raw_db.connect() as c:
        q = select(audit_log).order_by(audit_log.c.seq)
        if action is not None:
            q = q.where(audit_log.c.action == action)
        return [dict(r._mapping) | {"details": json.loads(r.details)} for r in c.execute(q)]


def team(svc: BlockingService, tenant: str = "team-a") -> None:
    svc.add_tenant(tenant)
    svc.add_principal("alice", Role.ADMIN, tenant=tenant)
    svc.add_principal("rita", Role.READER, scope="prod/*", kind="service", tenant=tenant)


def owner_in(tenant: str) -> Principal:
    return Principal(owner=True).with_tenant(tenant)


def token_for(svc: BlockingService, who: str, tenant: str = "team-a", **kw: Any) -> str:
    _, token = svc.create_token(who, principal=owner_in(tenant), **kw)
    return token


# -- format and success ----------------------------------------------------------------------


def test_a_token_is_shown_once_with_its_prefix_and_stands_for_its_principal(
    svc: BlockingService, raw_db: Engine
) -> None:
    team(svc)
    info, token = svc.create_token("rita", principal=owner_in("team-a"))
    assert TOKEN_RE.fullmatch(token)
    assert token.startswith(f"rtr_{info.id}_")
    p = svc.authenticate(token)
    assert p == Principal(
        "rita", "team-a", (Grant(Role.READER, "prod/*"),), owner=False, token_id=info.id
    )
    assert p.may(Action.VALUE_READ, "prod/db")
    assert not p.may(Action.VALUE_READ, "staging/db")
    created = audit_rows(raw_db, "token.create")
    assert [(e["tenant"], e["details"]) for e in created] == [
        ("team-a", {"token": info.id, "principal": "rita", "expires_at": None})
    ]


def test_two_tokens_never_share_an_id_or_a_secret(svc: BlockingService) -> None:
    team(svc)
    made = [token_for(svc, "rita") for _ in range(20)]
    assert len({t[4:16] for t in made}) == 20
    assert len({t[17:] for t in made}) == 20


def test_last_use_is_recorded_at_most_once_a_minute(
    svc: BlockingService, timed: BlockingService, clock: Clock
) -> None:
    team(svc)
    info, token = timed.create_token("rita", principal=owner_in("team-a"))
    assert info.last_used_at is None

    def last_used() -> datetime | None:
        (t,) = timed.list_tokens(principal=owner_in("team-a"))
        return t.last_used_at

    timed.authenticate(token)
    assert last_used() == T0
    clock.now = T0 + timedelta(seconds=59)
    timed.authenticate(token)
    assert last_used() == T0  # a hot path does not write
    clock.now = T0 + timedelta(seconds=61)
    timed.authenticate(token)
    assert last_used() == T0 + timedelta(seconds=61)


# -- refusals --------------------------------------------------------------------------------


def _wrong_secret(good: str) -> str:
    last = "A" if good[-1] != "A" else "B"
    return good[:-1] + last


REFUSED: dict[str, tuple[Callable[[str], str], str, bool]] = {
    # case: (token made from a good one, audited reason, whether the id is audited)
    "right id, wrong secret": (_wrong_secret, "wrong secret", True),
    "unknown id": (lambda good: "rtr_aaaaaaaaaaaa" + good[16:], "unknown id", True),
    "no prefix": (lambda good: good[4:], "malformed", False),
    "upper-case id": (lambda good: good[:4] + good[4:16].upper() + good[16:], "malformed", False),
    "secret one character short": (lambda good: good[:-1], "malformed", False),
    "trailing newline": (lambda good: good + "\n", "malformed", False),
    "empty": (lambda good: "", "malformed", False),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_wrong_token_is_refused_with_one_line_and_audited(
    svc: BlockingService, raw_db: Engine, case: str
) -> None:
    team(svc)
    good = token_for(svc, "alice")
    make, reason, with_id = REFUSED[case]
    bad = make(good)
    before = len(audit_rows(raw_db))
    with pytest.raises(AuthenticationFailed) as err:
        svc.authenticate(bad)
    assert str(err.value) == "invalid token"
    new = audit_rows(raw_db)[before:]
    assert [e["action"] for e in new] == ["auth.denied"]
    (entry,) = new
    assert entry["actor"] == "anonymous"
    expected = {"reason": reason} | ({"token": bad[4:16]} if with_id else {})
    assert entry["details"] == expected
    # The id names the tenant when it is known; a stranger's guess lands in the default.
    assert entry["tenant"] == ("team-a" if reason == "wrong secret" else "default")
    assert good[17:] not in json.dumps(entry)


@pytest.mark.parametrize("case", ["right id, wrong secret", "unknown id", "no prefix"])
def test_every_refusal_does_one_constant_time_comparison(
    svc: BlockingService, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """A malformed token or an unknown id is compared against a dummy digest, so no refusal
    returns sooner than a wrong secret does."""
    team(svc)
    bad = REFUSED[case][0](token_for(svc, "alice"))
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(access_mod, "compare_digest", spy)
    with pytest.raises(AuthenticationFailed):
        svc.authenticate(bad)
    assert len(calls) == 1
    assert all(len(a) == len(b) == 64 for a, b in calls)


def test_a_revoked_token_is_refused_and_audited(svc: BlockingService, raw_db: Engine) -> None:
    team(svc)
    info, token = svc.create_token("alice", principal=owner_in("team-a"))
    svc.authenticate(token)
    revoked = svc.revoke_token(info.id, principal=owner_in("team-a"))
    assert revoked.revoked_at is not None
    assert svc.revoke_token(info.id, principal=owner_in("team-a")) == revoked  # idempotent
    with pytest.raises(AuthenticationFailed, match=rf"^token {info.id} was revoked$"):
        svc.authenticate(token)
    assert len(audit_rows(raw_db, "token.revoke")) == 1
    (denied,) = audit_rows(raw_db, "auth.denied")
    assert denied["details"] == {"token": info.id, "reason": "revoked"}
    # A revoked token with a wrong secret says no more than any wrong token.
    with pytest.raises(AuthenticationFailed, match=r"^invalid token$"):
        svc.authenticate(_wrong_secret(token))


def test_an_expired_token_is_refused_from_its_expiry_on(
    svc: BlockingService, timed: BlockingService, clock: Clock, raw_db: Engine
) -> None:
    team(svc)
    info, token = timed.create_token(
        "alice", expires=timedelta(hours=1), principal=owner_in("team-a")
    )
    assert info.expires_at == T0 + timedelta(hours=1)
    clock.now = T0 + timedelta(minutes=59, seconds=59)
    assert timed.authenticate(token).name == "alice"
    clock.now = T0 + timedelta(hours=1)
    with pytest.raises(AuthenticationFailed) as err:
        timed.authenticate(token)
    assert str(err.value) == f"token {info.id} expired at 2030-01-01T13:00:00+00:00"
    (denied,) = audit_rows(raw_db, "auth.denied")
    assert denied["details"] == {"token": info.id, "reason": "expired"}
    (t,) = timed.list_tokens(principal=owner_in("team-a"))
    assert t.state(clock.now) == "expired"


def test_removing_a_principal_removes_its_tokens(svc: BlockingService, raw_db: Engine) -> None:
    team(svc)
    token = token_for(svc, "rita")
    svc.remove_principal("rita", principal=owner_in("team-a"))
    with pytest.raises(AuthenticationFailed, match=r"^invalid token$"):
        svc.authenticate(token)
    with raw_db.connect() as c:
        assert c.execute(select(tokens.c.id)).all() == []
    (removed,) = audit_rows(raw_db, "principal.remove")
    assert removed["details"] == {"principal": "rita", "tokens": [token[4:16]]}


def test_a_zero_or_negative_lifetime_is_bad_input(svc: BlockingService, raw_db: Engine) -> None:
    team(svc)
    for bad in (timedelta(0), timedelta(seconds=-1)):
        with pytest.raises(InvalidInput, match="--expires"):
            svc.create_token("alice", expires=bad, principal=owner_in("team-a"))
    with raw_db.connect() as c:
        assert c.execute(select(tokens.c.id)).all() == []


# -- the token appears nowhere ---------------------------------------------------------------


def _exercise(svc: BlockingService, timed: BlockingService, clock: Clock) -> list[str]:
    """Make tokens and use them every way; return every token made."""
    team(svc)
    made = []
    _, token = timed.create_token("alice", expires=timedelta(days=1), principal=owner_in("team-a"))
    made.append(token)
    admin = timed.authenticate(token)
    rita_info, rita = timed.create_token("rita", principal=admin)
    made.append(rita)
    timed.authenticate(rita)
    for bad in (_wrong_secret(token), "rtr_aaaaaaaaaaaa" + token[16:], token[4:]):
        with pytest.raises(AuthenticationFailed):
            timed.authenticate(bad)
    timed.list_tokens(principal=admin)
    timed.revoke_token(rita_info.id, principal=admin)
    with pytest.raises(AuthenticationFailed):
        timed.authenticate(rita)
    clock.now = T0 + timedelta(days=2)
    with pytest.raises(AuthenticationFailed):
        timed.authenticate(token)
    return made


def _secrets_of(made: list[str]) -> list[str]:
    return [*made, *(t[17:] for t in made)]


def test_the_token_is_in_no_table_of_the_store(
    svc: BlockingService, timed: BlockingService, clock: Clock, raw_db: Engine, db_url: str
) -> None:
    made = _exercise(svc, timed, clock)
    dump = []
    with raw_db.connect() as c:
        for table in metadata.sorted_tables:
            dump.extend(str(tuple(r)) for r in c.execute(select(table)))
    text_dump = "\n".join(dump)
    assert "auth.denied" in text_dump  # the dump reads what was written
    for s in _secrets_of(made):
        assert s not in text_dump
    if db_url.startswith("sqlite"):
        svc.close()
        timed.close()
        path = Path(db_url.removeprefix("sqlite:///"))
        raw = b"".join(
            p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists()
        )
        assert b"auth.denied" in raw
        for s in _secrets_of(made):
            assert s.encode() not in raw
    else:
        # The whole database as text, the way pg_dump would see the rows.
        with raw_db.connect() as c:
            names = c.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            ).scalars()
            whole = "\n".join(
                str(r) for n in list(names) for r in c.execute(text(f'SELECT * FROM "{n}"'))
            )
        for s in _secrets_of(made):
            assert s not in whole


def test_the_token_is_in_no_log_record_and_no_audit_entry(
    svc: BlockingService,
    timed: BlockingService,
    clock: Clock,
    raw_db: Engine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    made = _exercise(svc, timed, clock)
    logged = "\n".join(
        f"{r.name} {r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records
    )
    entries = json.dumps(audit_rows(raw_db), default=str)
    assert "token.create" in entries
    assert "auth.denied" in entries
    for s in _secrets_of(made):
        assert s not in logged
        assert s not in entries
    listed = repr(timed.list_tokens(principal=owner_in("team-a")))
    with raw_db.connect() as c:
        digests = list(c.execute(select(tokens.c.digest)).scalars())
    for s in [*_secrets_of(made), *digests]:
        assert s not in listed


# -- principals ------------------------------------------------------------------------------


def test_principals_are_listed_per_tenant_with_their_grants(svc: BlockingService) -> None:
    team(svc)
    svc.add_tenant("team-b")
    svc.add_principal("bob", Role.AUDITOR, tenant="team-b")
    a = svc.list_principals(principal=owner_in("team-a"))
    assert [(p.name, p.kind.value, p.grants) for p in a] == [
        ("alice", "person", (Grant(Role.ADMIN, "*"),)),
        ("rita", "service", (Grant(Role.READER, "prod/*"),)),
    ]
    assert [p.name for p in svc.list_principals(principal=owner_in("team-b"))] == ["bob"]
    # The same name may exist in two tenants; never twice in one.
    svc.add_principal("alice", Role.READER, tenant="team-b")
    with pytest.raises(AlreadyExists, match="'alice' exists already in tenant 'team-a'"):
        svc.add_principal("alice", Role.READER, tenant="team-a")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Alice"}, "invalid principal name 'Alice'"),
        ({"name": "a" * 101}, "invalid principal name"),
        ({"role": "root"}, "unknown role 'root'"),
        ({"scope": ""}, "invalid scope ''"),
        ({"scope": "prod/{a,b}"}, "invalid scope"),
        ({"scope": "p" * 201}, "invalid scope"),
        ({"kind": "robot"}, "unknown principal kind 'robot'"),
        ({"tenant": "ghost"}, "no tenant 'ghost': add it with `rotator tenant add ghost`"),
    ],
)
def test_bad_principal_input_is_refused_and_nothing_is_stored(
    svc: BlockingService, raw_db: Engine, kwargs: dict[str, str], message: str
) -> None:
    args = {"name": "carol", "role": "reader", "scope": "*", "kind": "person"} | kwargs
    with pytest.raises((InvalidInput, NotFound), match=re.escape(message)):
        svc.add_principal(args.pop("name"), args.pop("role"), **args, principal=owner_in("default"))
    with raw_db.connect() as c:
        assert c.execute(select(principals.c.id)).all() == []
        assert [n for (n,) in c.execute(select(tenants.c.name))] == ["default"]


def test_an_admin_manages_principals_of_its_tenant_only(
    svc: BlockingService, raw_db: Engine
) -> None:
    team(svc)
    svc.add_tenant("team-b")
    admin = svc.authenticate(token_for(svc, "alice"))
    added = svc.add_principal("ops", Role.OPERATOR, principal=admin)
    assert added.tenant == "team-a"
    assert [p.name for p in svc.list_principals(principal=admin)] == ["alice", "ops", "rita"]
    with pytest.raises(PermissionDenied, match=r"may not principal\.write in tenant 'team-b'"):
        svc.add_principal("mole", Role.ADMIN, tenant="team-b", principal=admin)
    with pytest.raises(PermissionDenied):
        svc.add_tenant("team-c", principal=admin)
    with pytest.raises(PermissionDenied):
        svc.list_tenants(principal=admin)
    with raw_db.connect() as c:
        names = sorted(c.execute(select(principals.c.name)).scalars())
        assert names == ["alice", "ops", "rita"]
        assert sorted(c.execute(select(tenants.c.name)).scalars()) == [
            "default",
            "team-a",
            "team-b",
        ]
    denied = audit_rows(raw_db, "access.denied")
    assert [(e["actor"], e["details"]["permission"]) for e in denied] == [
        ("alice", "principal.write"),
        ("alice", "store.admin"),
        ("alice", "store.admin"),
    ]
    assert denied[0]["details"]["tenant"] == "team-b"


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.AUDITOR, Role.READER, Role.APP])
def test_only_an_admin_manages_principals_and_tokens(
    svc: BlockingService, raw_db: Engine, role: Role
) -> None:
    team(svc)
    svc.add_principal("someone", role, tenant="team-a")
    info, _ = svc.create_token("alice", principal=owner_in("team-a"))
    p = svc.authenticate(token_for(svc, "someone"))
    for call in (
        lambda: svc.add_principal("x", Role.ADMIN, principal=p),
        lambda: svc.remove_principal("alice", principal=p),
        lambda: svc.create_token("alice", principal=p),
        lambda: svc.revoke_token(info.id, principal=p),
        lambda: svc.list_principals(principal=p),
        lambda: svc.list_tokens(principal=p),
    ):
        with pytest.raises(PermissionDenied):
            call()
    assert svc.authenticate(token_for(svc, "alice")).name == "alice"
    assert len(audit_rows(raw_db, "access.denied")) == 6


def test_a_token_of_another_tenant_cannot_be_revoked_or_listed(svc: BlockingService) -> None:
    team(svc)
    svc.add_tenant("team-b")
    svc.add_principal("bob", Role.ADMIN, tenant="team-b")
    theirs, token = svc.create_token("rita", principal=owner_in("team-a"))
    bob = svc.authenticate(token_for(svc, "bob", tenant="team-b"))
    with pytest.raises(NotFound, match=f"no token '{theirs.id}' in tenant 'team-b'"):
        svc.revoke_token(theirs.id, principal=bob)
    assert [t.principal for t in svc.list_tokens(principal=bob)] == ["bob"]
    with pytest.raises(NotFound, match="no principal 'rita' in tenant 'team-b'"):
        svc.list_tokens("rita", principal=bob)
    assert svc.authenticate(token).name == "rita"
