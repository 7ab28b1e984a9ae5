"""The permission matrix: every service use case x every role x own/other tenant x in/out of
scope, on SQLite and PostgreSQL.

The expected allow/deny is the table ``MATRIX`` below, restated from issue 10 (admin:
everything in its tenant; operator: manage and rotate credentials, read metadata, no values;
auditor: metadata, audit and reports, never values; reader: values of the credentials its
grant matches; app: values of its own credentials, usage reports; the store's owner alone:
master key, recovery, the worker loop). It does not import ``ROLE_ACTIONS``: a change there
that this table does not share fails here.

Scenarios, for a principal of tenant ``a``:

- ``in``: the target is in the principal's scope (a credential under ``prod/payments/*`` for a
  principal with that scope; for a tenant-wide use case or a selector, a principal with
  scope ``*``);
- ``out``: the same principal scoped to ``prod/payments/*`` names ``dev/other/...`` (a
  tenant-wide use case: it acts tenant-wide; a listing or selector: it sees only its scope; a
  stored group or rotation reaching out of scope: NotFound, like an unknown one, audited);
- ``other``: the target exists only in tenant ``b`` (a name under the principal's scope, a
  group, a rollout id or a policy default of ``b``): NotFound, a denial that reveals
  nothing; a listing never shows ``b``'s; creating the name in ``a`` makes an unrelated one.

Every use case taking a name or an id also answers an out-of-scope or other-tenant target
exactly as it answers one that does not exist (no existence oracle). ``audit verify-copy`` is
not a service use case (it reads files, no store, no principal) and has no row.

Every PermissionDenied leaves the stored state as it was plus exactly one ``access.denied``
audit entry naming the principal and the permission; every NotFound leaves it exactly as it
was (audit included); every allowed case checks the operation really happened, then the
case restores what it changed so the next shares the store.
"""

from __future__ import annotations

import json
import re
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine, create_engine, select, text

from rotator.config import Settings
from rotator.domain.group import Group, GroupMember
from rotator.domain.model import Stage
from rotator.domain.principal import LOCAL_PRINCIPAL, Grant, Principal, Role
from rotator.engine import Outcome
from rotator.errors import NotFound, PermissionDenied, RotatorError
from rotator.service import BlockingService, PolicyInput, ValueInput
from rotator.service.events import EventInput
from rotator.service.rotation import Selection
from rotator.service.webhooks import WebhookTiming
from rotator.store import normalize_url
from rotator.store.schema import audit_log, metadata, webhook_dead_letters

# ------------------------------------------------------------------------------ the table

ROLES = ("admin", "operator", "auditor", "reader", "app")

# use case          permission         kind    other      admin op  aud  read app
MATRIX = """
list                credential.read    select  hidden     Y     Y   Y    Y    Y
show                credential.read    name    notfound   Y     Y   Y    Y    Y
get                 value.read         name    notfound   Y     N   N    Y    Y
add                 credential.write   name    created    Y     Y   N    N    N
update              credential.write   name    notfound   Y     Y   N    N    N
remove              credential.write   name    notfound   Y     Y   N    N    N
used                usage.report       name    notfound   Y     Y   N    N    Y
rotate              rotate             name    notfound   Y     Y   N    N    N
rotate_tag          rotate             select  hidden     Y     Y   N    N    N
job_start           rotate             name    notfound   Y     Y   N    N    N
job_start_tag       rotate             select  hidden     Y     Y   N    N    N
job_get             rotation.read      rotation notfound  Y     Y   Y    N    N
job_list            rotation.read      tenant  hidden     Y     Y   Y    N    N
plan                rotate             name    notfound   Y     Y   N    N    N
add_group           group.write        name    notfound   Y     Y   N    N    N
get_group           credential.read    group    notfound   Y     Y   Y    Y    Y
list_groups         credential.read    select  hidden     Y     Y   Y    Y    Y
remove_group        group.write        group    notfound   Y     Y   N    N    N
rotate_group        rotate             group    notfound   Y     Y   N    N    N
plan_group          rotate             group    notfound   Y     Y   N    N    N
policy_set          policy.write       tenant  created    Y     Y   N    N    N
policy_list         policy.read        tenant  hidden     Y     Y   Y    N    N
policy_remove       policy.write       tenant  notfound   Y     Y   N    N    N
event_credential    event.report       name    notfound   Y     Y   N    N    N
event_tag           event.report       tenant  hidden     Y     Y   N    N    N
events_list         rotation.read      tenant  hidden     Y     Y   Y    N    N
rollout_create      rotate             name    notfound   Y     Y   N    N    N
rollout_list        rotation.read      tenant  hidden     Y     Y   Y    N    N
rollout_status      rotation.read      tenant  notfound   Y     Y   Y    N    N
rollout_resume      rotate             tenant  notfound   Y     Y   N    N    N
rollout_abort       rotate             tenant  notfound   Y     Y   N    N    N
rollout_run         rotate             tenant  notfound   Y     Y   N    N    N
audit_credential    audit.read         name    hidden     Y     N   Y    N    N
audit_tenant        audit.read         tenant  hidden     Y     N   Y    N    N
audit_verify        audit.read         tenant  hidden     Y     N   Y    N    N
audit_head          audit.read         tenant  hidden     Y     N   Y    N    N
rotate_master_key   store.admin        tenant  hidden     N     N   N    N    N
recover             store.admin        tenant  hidden     N     N   N    N    N
serve               store.admin        tenant  hidden     N     N   N    N    N
principal_add       principal.write    tenant  created    Y     N   N    N    N
principal_list      principal.read     tenant  hidden     Y     N   N    N    N
principal_remove    principal.write    tenant  notfound   Y     N   N    N    N
token_create        principal.write    tenant  notfound   Y     N   N    N    N
token_list          principal.read     tenant  hidden     Y     N   N    N    N
token_revoke        principal.write    tenant  notfound   Y     N   N    N    N
tenant_add          store.admin        tenant  hidden     N     N   N    N    N
tenant_list         store.admin        tenant  hidden     N     N   N    N    N
make_checkpoint     audit.write        tenant  hidden     Y     N   Y    N    N
list_checkpoints    audit.read         tenant  hidden     Y     N   Y    N    N
audit_public_keys   audit.read         tenant  hidden     Y     N   Y    N    N
audit_export        audit.read         tenant  hidden     Y     N   Y    N    N
rotation_evidence   report.read        rotation notfound  Y     N   Y    N    N
compliance_report   report.read        tenant  hidden     Y     N   Y    N    N
forward_add         audit.forward      tenant  created    Y     N   N    N    N
forward_list        audit.forward      tenant  hidden     Y     N   N    N    N
forward_remove      audit.forward      tenant  notfound   Y     N   N    N    N
forward_run         audit.forward      tenant  hidden     Y     N   N    N    N
webhook_add         webhook.write      tenant  created    Y     N   N    N    N
webhook_list        webhook.read       tenant  hidden     Y     N   N    N    N
webhook_remove      webhook.write      tenant  notfound   Y     N   N    N    N
webhook_dead        webhook.read       tenant  hidden     Y     N   N    N    N
webhook_retry       webhook.write      tenant  notfound   Y     N   N    N    N
webhook_run         webhook.write      tenant  hidden     Y     N   N    N    N
"""
"""kind: ``name`` acts on named credentials (a new group's members, a named rollout
selection): ``out`` is denied; ``group`` acts on a stored group and ``rotation`` on a stored
rotation: ``out`` (a member, the rotation's credential, out of scope) is NotFound, the text of
an unknown one, and audited as a denial; ``select`` lists or selects: ``out`` shows only the
scope;
``tenant`` acts on the tenant as a whole: ``out`` (a scoped principal) is denied.
other: ``notfound`` (b's target is not found in a), ``hidden`` (b's never shows),
``created`` (the name is made in a, unrelated to b's)."""


@dataclass(frozen=True)
class Row:
    use_case: str
    permission: str
    kind: str
    other: str
    allowed: dict[str, bool]


def _rows() -> dict[str, Row]:
    out = {}
    for line in MATRIX.strip().splitlines():
        uc, perm, kind, other, *flags = line.split()
        assert len(flags) == len(ROLES), line
        out[uc] = Row(
            uc, perm, kind, other, {r: f == "Y" for r, f in zip(ROLES, flags, strict=True)}
        )
    return out


ROWS = _rows()


def expected(row: Row, role: str, scenario: str) -> str:
    """allow | denied | notfound | masked (NotFound, audited as a denial) for one cell."""
    if not row.allowed[role]:
        return "denied"
    if scenario == "in":
        return "allow"
    if scenario == "out":
        return {"select": "allow", "group": "masked", "rotation": "masked"}.get(row.kind, "denied")
    return "notfound" if row.other == "notfound" else "allow"


# ------------------------------------------------------------------------------ the world

IN, IN2, SPARE_IN = "prod/payments/db", "prod/payments/db2", "prod/payments/spare"
OUT, OUT2, SPARE_OUT = "dev/other/db", "dev/other/db2", "dev/other/spare"
B_ONLY, B_ONLY2 = "prod/payments/bonly", "prod/payments/bonly2"
SCOPE = "prod/payments/*"
SEL = {"sel": "yes"}  # the selector tag: on IN and OUT in a, and B_ONLY in b
OWNER_A = LOCAL_PRINCIPAL.with_tenant("a")
OWNER_B = LOCAL_PRINCIPAL.with_tenant("b")
ADMIN_B = Principal(name="b-admin", tenant="b", grants=(Grant(Role.ADMIN),))


def make_tenant(svc: BlockingService, name: str) -> None:
    """Tenants are explicit: only ``init`` and ``add_tenant`` make one."""
    svc.add_tenant(name)


@dataclass
class World:
    svc: BlockingService
    raw: Engine
    rollout_a: str = ""
    rollout_b: str = ""
    event_b: int = 0
    scratch: dict[str, Any] = field(default_factory=dict)


def _add(svc: BlockingService, name: str, owner: Principal, tags: dict[str, str]) -> None:
    svc.add_credential(
        name,
        "local",
        tags=tags,
        policy=PolicyInput(grace="0s"),
        value=ValueInput(generate=True),
        principal=owner,
    )


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ],
)
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    """One store per database for the whole module (the cases restore what they change)."""
    with pytest.MonkeyPatch.context() as mp:
        # The tenants' webhooks point at loopback ports: the operator allows them.
        mp.setenv("ROTATOR_WEBHOOK_ALLOW", "127.0.0.0/8")
        yield from _world(request)


def _world(request: pytest.FixtureRequest) -> Iterator[World]:
    home = Path(tempfile.mkdtemp(prefix="rotator-matrix-"))
    dbname = None
    if request.param == "sqlite":
        url = f"sqlite:///{home}/rotator.db"
    else:
        pg = request.getfixturevalue("pg_server")
        dbname = f"test_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        url = pg.url(dbname)
    svc, _ = BlockingService.init(Settings(home=home / "home", db_url=url))
    raw = create_engine(normalize_url(url))
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        make_tenant(svc, "a")
        make_tenant(svc, "b")
        for n in (IN, OUT):
            _add(svc, n, OWNER_A, {**SEL, "env": "prod"})
        for n in (IN2, SPARE_IN, OUT2, SPARE_OUT):
            _add(svc, n, OWNER_A, {"env": "prod"})
        _add(svc, B_ONLY, OWNER_B, {**SEL, "env": "prod"})
        _add(svc, B_ONLY2, OWNER_B, {"env": "prod"})
        svc.add_group(_group("g-in", IN, IN2), principal=OWNER_A)
        svc.add_group(_group("g-out", OUT, OUT2), principal=OWNER_A)
        svc.add_group(_group("g-b", B_ONLY, B_ONLY2), principal=OWNER_B)
        svc.set_policy_default(
            policy=PolicyInput(grace="1m"), tag=("pol", "b-only"), principal=OWNER_B
        )
        # Principals with a token each, in a and in b (the ``other`` target of the
        # principal and token use cases).
        svc.add_principal("pa", Role.READER, tenant="a")
        svc.add_principal("pb", Role.READER, tenant="b")
        token_a = svc.create_token("pa", principal=OWNER_A)[0].id
        token_b = svc.create_token("pb", principal=OWNER_B)[0].id
        w = World(svc, raw)
        w.scratch.update(token_a=token_a, token_b=token_b)
        w.rollout_a = _rollout(svc, OWNER_A, [IN], timedelta(hours=1))
        w.rollout_b = _rollout(svc, OWNER_B, [B_ONLY], timedelta(hours=1))
        w.event_b = svc.report_event(
            EventInput("leak", "low", credential=B_ONLY), principal=OWNER_B
        ).event_id
        # Rotations to ask evidence of; a checkpoint asked for by b's admin (its name never
        # shows in a); a syslog forwarder in a and in b, to a UDP socket held open (a closed
        # port would answer ICMP unreachable and the sender would retry).
        for n, owner in ((IN, OWNER_A), (OUT, OWNER_A), (B_ONLY, OWNER_B)):
            svc.rotate(Selection(names=[n]), principal=owner)
            w.scratch[f"rotation:{n}"] = [
                e.rotation_id
                for e in svc.audit_entries(credential=n, principal=owner)
                if e.rotation_id
            ][-1]
        # A finished rotation job (REST) per credential, to ask for.
        for n, owner in ((IN, OWNER_A), (OUT, OWNER_A), (B_ONLY, OWNER_B)):
            w.scratch[f"job:{n}"] = _job_done(
                svc, svc.start_job(Selection(names=[n]), principal=owner).id, owner
            ).id
        svc.make_checkpoint(principal=ADMIN_B)
        sink.bind(("127.0.0.1", 0))
        w.scratch["closed_url"] = f"http://127.0.0.1:{_closed_port()}/hook"
        w.scratch["syslog"] = f"udp://127.0.0.1:{sink.getsockname()[1]}"
        svc.add_forwarder("fw-a", syslog=w.scratch["syslog"], tenant="a")
        svc.add_forwarder("fw-b", syslog=w.scratch["syslog"], tenant="b")
        # A webhook in a and in b (to a closed port; subscribed to an event no case makes),
        # and a dead letter of each, as a receiver that kept failing leaves them.
        for t, owner in (("a", OWNER_A), ("b", OWNER_B)):
            hook = svc.add_webhook(
                w.scratch["closed_url"],
                events="audit.verification_failed",
                secret_ref=IN if t == "a" else B_ONLY,
                tenant=t,
                principal=owner,
            ).webhook
            w.scratch[f"webhook_{t}"] = hook.id
            w.scratch[f"dead_{t}"] = _dead_letter(raw, hook.id, t)
        yield w
    finally:
        sink.close()
        svc.close()
        raw.dispose()
        if dbname is not None:
            pg = request.getfixturevalue("pg_server")
            with psycopg.connect(pg.dsn(), autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(dbname)
                    )
                )


def _closed_port() -> int:
    """A port nothing listens on (bound, then closed): connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dead_letter(raw: Engine, webhook_id: int, tenant: str) -> int:
    """Insert a dead letter of the webhook, as the runner stores one; its id."""
    event = {"id": f"{tenant}:1", "type": "audit.verification_failed", "at": "", "tenant": tenant}
    with raw.begin() as conn:
        done = conn.execute(
            webhook_dead_letters.insert().values(
                webhook_id=webhook_id,
                seq=1,
                event_type="audit.verification_failed",
                delivery_id=f"wh{webhook_id}-1-audit.verification_failed",
                event=event,
                error="HTTP 500",
                attempts=5,
                created_at=datetime.now(UTC),
            )
        )
        pk = done.inserted_primary_key
        assert pk is not None
        return int(pk[0])


def _group(name: str, a: str, b: str) -> Group:
    return Group(name, (GroupMember(a), GroupMember(b)))


def _rollout(svc: BlockingService, owner: Principal, names: list[str], stagger: timedelta) -> str:
    view = svc.create_rollout(
        Selection(names=names), stagger=stagger, max_per_minute=600, principal=owner
    )
    return view.id


def _job_done(svc: BlockingService, job_id: str, owner: Principal) -> Any:
    """The job once it ended (it runs in the background on the facade's loop)."""
    deadline = time.monotonic() + 60
    while True:
        job = svc.get_job(job_id, principal=owner)
        if job.status != "running":
            return job
        assert time.monotonic() < deadline, "the job never ended"
        time.sleep(0.02)


def principal(role: str, scope: str) -> Principal:
    return Principal(
        name=f"{role}-{'wide' if scope == '*' else 'narrow'}",
        tenant="a",
        grants=(Grant(Role(role), scope),),
    )


# ------------------------------------------------------------------------ stored state


def snapshot(raw: Engine) -> tuple[list[str], int]:
    """Every stored row but the audit log's (as sorted text), and the newest audit seq."""
    rows: list[str] = []
    with raw.connect() as conn:
        for table in metadata.sorted_tables:
            if table.name in ("audit_log", "audit_head"):
                continue
            rows += sorted(f"{table.name}:{tuple(r)!r}" for r in conn.execute(select(table)))
        head = conn.execute(text("SELECT coalesce(max(seq), 0) FROM audit_log")).scalar_one()
    return rows, int(head)


def audit_after(raw: Engine, seq: int) -> list[Any]:
    with raw.connect() as conn:
        return list(conn.execute(select(audit_log).where(audit_log.c.seq > seq)))


def b_entries(raw: Engine) -> set[int]:
    """Seqs of tenant b's audit entries (there are some: its setup wrote them)."""
    with raw.connect() as conn:
        seqs = set(conn.execute(select(audit_log.c.seq).where(audit_log.c.tenant == "b")).scalars())
    assert seqs
    return seqs


def version_of(w: World, name: str, owner: Principal = OWNER_A) -> int:
    cred = w.svc.show(name, principal=owner)
    current = cred.version_in(Stage.CURRENT)
    assert current is not None
    return current.number


# ------------------------------------------------------------------------- the use cases
# Each takes the world, the principal and the scenario, and returns (call, check, restore):
# call() does the use case; check(result) proves an allowed one really happened; restore()
# puts back what it changed.

Case = tuple[Callable[[], Any], Callable[[Any], None], Callable[[], None]]


def _none(_: Any = None) -> None:
    return None


def _target(scenario: str, inside: str, outside: str, other: str) -> str:
    return {"in": inside, "out": outside, "other": other}[scenario]


def case(w: World, uc: str, p: Principal, scenario: str) -> Case:
    svc = w.svc
    name = _target(scenario, IN, OUT, B_ONLY)
    if uc == "list":

        def check_list(creds: Any) -> None:
            got = {c.name for c in creds}
            assert IN in got
            assert B_ONLY not in got
            assert (OUT in got) == (p.grants[0].scope == "*")
            assert {c.tenant for c in creds} == {"a"}

        return (lambda: svc.list_credentials(principal=p)), check_list, _none
    if uc == "show":
        return (lambda: svc.show(name, principal=p)), (lambda c: _eq(c.name, IN)), _none
    if uc == "get":
        expect = svc.get_value(IN, principal=OWNER_A).reveal_text()
        return (
            (lambda: svc.get_value(name, principal=p)),
            (lambda v: _eq(v.reveal_text(), expect)),
            _none,
        )
    if uc == "add":
        new = _target(scenario, "prod/payments/new", "dev/other/new", B_ONLY)
        b_version = version_of(w, B_ONLY, OWNER_B)

        def check_add(cred: Any) -> None:
            assert cred.name == new
            assert cred.tenant == "a"
            assert version_of(w, new) == 1
            assert version_of(w, B_ONLY, OWNER_B) == b_version, "b's credential untouched"

        return (
            (lambda: _add(svc, new, p, {"env": "prod"})),
            lambda _: check_add(svc.show(new, principal=OWNER_A)),
            lambda: svc.remove_credential(new, principal=OWNER_A),
        )
    if uc == "update":
        grace = f"{ROLES.index(p.grants[0].role.value) + 2}m"
        return (
            (lambda: svc.update_credential(name, policy=PolicyInput(grace=grace), principal=p)),
            lambda c: _eq(c.policy.grace, timedelta(minutes=int(grace[:-1]))),
            _none,
        )
    if uc == "remove":
        target = _target(scenario, SPARE_IN, SPARE_OUT, B_ONLY)

        def check_removed(_: Any) -> None:
            assert SPARE_IN not in {c.name for c in svc.list_credentials(principal=OWNER_A)}

        return (
            (lambda: svc.remove_credential(target, principal=p)),
            check_removed,
            lambda: _add(svc, SPARE_IN, OWNER_A, {"env": "prod"}),
        )
    if uc == "used":
        before = svc.show(IN, principal=OWNER_A).use_count
        return (
            (lambda: svc.report_usage(name, 3, principal=p)),
            lambda c: _eq(c.use_count, before + 3),
            _none,
        )
    if uc == "rotate":
        before = version_of(w, IN)

        def check_rotated(result: Any) -> None:
            assert [(r.name, r.outcome) for r in result.results] == [(IN, Outcome.ROTATED)]
            assert version_of(w, IN) == before + 1

        return (lambda: svc.rotate(Selection(names=[name]), principal=p)), check_rotated, _none
    if uc == "rotate_tag":
        before = {n: version_of(w, n) for n in (IN, OUT)}
        b_before = version_of(w, B_ONLY, OWNER_B)
        wide = p.grants[0].scope == "*"

        def check_tag(result: Any) -> None:
            want = {IN, OUT} if wide else {IN}
            assert {r.name for r in result.results if r.outcome is Outcome.ROTATED} == want
            for n in (IN, OUT):
                assert version_of(w, n) == before[n] + (n in want)
            assert version_of(w, B_ONLY, OWNER_B) == b_before, "b's credential untouched"

        return (lambda: svc.rotate(Selection(tags=SEL), principal=p)), check_tag, _none
    if uc in ("job_start", "job_start_tag"):
        before = {n: version_of(w, n) for n in (IN, OUT)}
        b_before = version_of(w, B_ONLY, OWNER_B)
        if uc == "job_start":
            want, sel = {IN}, Selection(names=[name])
        else:
            want = {IN, OUT} if p.grants[0].scope == "*" else {IN}
            sel = Selection(tags=SEL)

        def check_job(job: Any) -> None:
            done = _job_done(svc, job.id, OWNER_A)
            assert (done.status, done.requested_by) == ("done", p.name)
            assert set(done.result["rotated"]) == want
            for n in (IN, OUT):
                assert version_of(w, n) == before[n] + (n in want)
            assert version_of(w, B_ONLY, OWNER_B) == b_before, "b's credential untouched"

        return (lambda: svc.start_job(sel, principal=p)), check_job, _none
    if uc == "job_get":
        job_id = w.scratch[f"job:{name}"]
        return (
            (lambda: svc.get_job(job_id, principal=p)),
            lambda j: _eq((j.id, j.status, j.result["rotated"]), (job_id, "done", [IN])),
            _none,
        )
    if uc == "job_list":

        def check_jobs(found: Any) -> None:
            ids = {j.id for j in found}
            assert {w.scratch[f"job:{IN}"], w.scratch[f"job:{OUT}"]} <= ids
            assert w.scratch[f"job:{B_ONLY}"] not in ids

        return (lambda: svc.list_jobs(principal=p)), check_jobs, _none
    if uc == "plan":
        return (
            (lambda: svc.plan(Selection(names=[name]), principal=p)),
            lambda steps: _eq([s["name"] for s in steps], [IN]),
            _none,
        )
    if uc == "add_group":
        a, b = {"in": (IN2, SPARE_IN), "out": (OUT2, SPARE_OUT), "other": (B_ONLY, B_ONLY2)}[
            scenario
        ]
        return (
            (lambda: svc.add_group(_group("g-new", a, b), principal=p)),
            lambda _: _eq(svc.get_group("g-new", principal=OWNER_A).name, "g-new"),
            lambda: svc.remove_group("g-new", principal=OWNER_A),
        )
    group = _target(scenario, "g-in", "g-out", "g-b")
    if uc == "get_group":
        return (lambda: svc.get_group(group, principal=p)), (lambda g: _eq(g.name, "g-in")), _none
    if uc == "list_groups":

        def check_groups(groups: Any) -> None:
            want = {"g-in", "g-out"} if p.grants[0].scope == "*" else {"g-in"}
            assert {g.name for g in groups} == want

        return (lambda: svc.list_groups(principal=p)), check_groups, _none
    if uc == "remove_group":

        def check_gone(_: Any) -> None:
            with pytest.raises(NotFound):
                svc.get_group("g-in", principal=OWNER_A)

        return (
            (lambda: svc.remove_group(group, principal=p)),
            check_gone,
            lambda: svc.add_group(_group("g-in", IN, IN2), principal=OWNER_A),
        )
    if uc == "rotate_group":
        before = {n: version_of(w, n) for n in (IN, IN2)}

        def check_group_rotated(result: Any) -> None:
            assert {r.name for r in result.results if r.outcome is Outcome.ROTATED} == {IN, IN2}
            assert {n: version_of(w, n) for n in (IN, IN2)} == {n: v + 1 for n, v in before.items()}

        return (lambda: svc.rotate_group(group, principal=p)), check_group_rotated, _none
    if uc == "plan_group":
        return (
            (lambda: svc.plan_group(group, principal=p)),
            lambda steps: _eq({s["name"] for s in steps}, {IN, IN2}),
            _none,
        )
    if uc == "policy_set":

        def check_set(d: Any) -> None:
            assert d.tenant == "a"
            assert d.tag == ("pol", "x")
            tags_a = [x.tag for x in svc.list_policy_defaults(principal=OWNER_A)]
            tags_b = [x.tag for x in svc.list_policy_defaults(principal=OWNER_B)]
            assert ("pol", "x") in tags_a
            assert tags_b == [("pol", "b-only")]

        return (
            (
                lambda: svc.set_policy_default(
                    policy=PolicyInput(grace="3m"), tag=("pol", "x"), principal=p
                )
            ),
            check_set,
            lambda: svc.remove_policy_default(tag=("pol", "x"), principal=OWNER_A),
        )
    if uc == "policy_list":
        svc.set_policy_default(policy=PolicyInput(grace="4m"), tag=("pol", "a"), principal=OWNER_A)
        return (
            (lambda: svc.list_policy_defaults(principal=p)),
            lambda ds: _eq([(d.tenant, d.tag) for d in ds], [("a", ("pol", "a"))]),
            _none,
        )
    if uc == "policy_remove":
        tag = ("pol", "b-only") if scenario == "other" else ("pol", "a")
        if scenario != "other":
            svc.set_policy_default(policy=PolicyInput(grace="4m"), tag=tag, principal=OWNER_A)

        def check_removed_default(_: Any) -> None:
            assert svc.list_policy_defaults(principal=OWNER_A) == []

        return (
            (lambda: svc.remove_policy_default(tag=tag, principal=p)),
            check_removed_default,
            _none,
        )
    if uc == "event_credential":
        return (
            (lambda: svc.report_event(EventInput("leak", "low", credential=name), principal=p)),
            lambda r: _eq([d.name for d in r.decisions], [IN]),
            _none,
        )
    if uc == "event_tag":
        return (
            (lambda: svc.report_event(EventInput("leak", "low", tags=SEL), principal=p)),
            lambda r: _eq(sorted(d.name for d in r.decisions), sorted([IN, OUT])),
            _none,
        )
    if uc == "events_list":
        svc.report_event(EventInput("seen", "low", credential=IN), principal=OWNER_A)

        def check_events(events: Any) -> None:
            assert events
            assert w.event_b not in {e.id for e in events}
            assert all(d.credential != B_ONLY for e in events for d in e.decisions)

        return (lambda: svc.list_events(principal=p)), check_events, _none
    rollout = w.rollout_b if scenario == "other" else w.rollout_a
    if uc == "rollout_create":
        return (
            (
                lambda: svc.create_rollout(
                    Selection(names=[name]),
                    stagger=timedelta(hours=1),
                    max_per_minute=60,
                    principal=p,
                )
            ),
            lambda v: _eq((v.status, v.total), ("running", 1)),
            _none,
        )
    if uc == "rollout_list":
        return (
            (lambda: svc.list_rollouts(principal=p)),
            lambda vs: _eq(
                w.rollout_a in {v.id for v in vs} and w.rollout_b not in {v.id for v in vs}, True
            ),
            _none,
        )
    if uc == "rollout_status":
        return (
            (lambda: svc.rollout_status(rollout, principal=p)),
            lambda v: _eq((v.id, v.status), (w.rollout_a, "running")),
            _none,
        )
    if uc == "rollout_resume":
        return (
            (lambda: svc.resume_rollout(rollout, principal=p)),
            lambda v: _eq((v.id, v.status), (w.rollout_a, "running")),
            _none,
        )
    if uc == "rollout_abort":
        fresh = rollout if scenario == "other" else _rollout(svc, OWNER_A, [IN], timedelta(hours=1))
        return (
            (lambda: svc.abort_rollout(fresh, principal=p)),
            lambda v: _eq(
                (v.id, v.status, svc.rollout_status(fresh, principal=OWNER_A).status),
                (fresh, "aborted", "aborted"),
            ),
            _none,
        )
    if uc == "rollout_run":
        fresh = rollout if scenario == "other" else _rollout(svc, OWNER_A, [IN2], timedelta(0))
        before = version_of(w, IN2)

        def check_run(v: Any) -> None:
            assert (v.id, v.status, v.counts["rotated"]) == (fresh, "done", 1)
            assert version_of(w, IN2) == before + 1

        return (lambda: svc.run_rollout(fresh, poll_s=0.05, principal=p)), check_run, _none
    if uc == "audit_credential":

        def check_audit_credential(entries: Any) -> None:
            assert all((e.tenant, e.credential) == ("a", name) for e in entries)
            # b's own entries for B_ONLY never show; a's may (a denial, an add in a).
            assert entries or scenario != "in"

        return (
            (lambda: svc.audit_entries(credential=name, principal=p)),
            check_audit_credential,
            _none,
        )
    if uc == "audit_tenant":

        def check_audit(entries: Any) -> None:
            assert entries
            assert {e.tenant for e in entries} == {"a"}
            assert not {e.seq for e in entries} & b_entries(w.raw), "b's entries never show"

        return (lambda: svc.audit_entries(principal=p)), check_audit, _none
    if uc == "audit_verify":
        return (lambda: svc.audit_verify(principal=p)), lambda r: _eq(r.ok, True), _none
    if uc == "audit_head":
        return (
            (lambda: svc.audit_head(principal=p)),
            lambda h: _eq(h, _head(w.raw)),
            _none,
        )
    if uc == "rotate_master_key":
        return (lambda: svc.rotate_master_key(principal=p)), _none, _none
    if uc == "recover":
        return (lambda: svc.recover(principal=p)), _none, _none
    if uc == "serve":
        return (lambda: svc.serve(poll_s=0.05, principal=p)), _none, _none
    if uc.startswith(("principal_", "token_", "tenant_")):
        return _access_case(w, uc, p, scenario)
    return _audit_case(w, uc, p, scenario)


def _fw(w: World, tenant: str) -> dict[str, Any]:
    """Tenant's forwarders, by name (as the owner sees them; ``head`` is left out)."""
    return {
        v.name: (v.tenant, v.target, v.cursor, v.delivered)
        for v in w.svc.list_forwarders()
        if v.tenant == tenant
    }


def _audit_case(w: World, uc: str, p: Principal, scenario: str) -> Case:
    """Checkpoints, export, evidence, the compliance report and SIEM forwarders. Tenant-wide
    but for evidence, whose target is a rotation of IN (in), OUT (out) or B_ONLY (other)."""
    svc = w.svc
    if uc == "make_checkpoint":
        return (
            (lambda: svc.make_checkpoint(principal=p)),
            lambda cp: _eq(cp.seq >= _head(w.raw)[0] - 1, True),  # its own entry may follow
            _none,
        )
    if uc == "list_checkpoints":

        def check_checkpoints(cps: Any) -> None:
            assert cps
            assert ADMIN_B.name not in {cp.created_by for cp in cps}, "b's names never show"

        return (lambda: svc.list_checkpoints(principal=p)), check_checkpoints, _none
    if uc == "audit_public_keys":

        def check_keys(keys: Any) -> None:
            assert keys
            assert all(k.pem.startswith("-----BEGIN PUBLIC KEY-----") for k in keys)

        return (lambda: svc.audit_public_keys(principal=p)), check_keys, _none
    if uc == "audit_export":

        def check_export(lines: Any) -> None:
            shown = [json.loads(x) for x in lines]
            assert len(shown) >= _head(w.raw)[0] - 1
            assert {e["tenant"] for e in shown if "tenant" in e} == {"a"}
            assert not {e["seq"] for e in shown if "tenant" in e} & b_entries(w.raw)

        return (lambda: svc.audit_export(principal=p)), check_export, _none
    if uc == "rotation_evidence":
        rid = w.scratch[f"rotation:{_target(scenario, IN, OUT, B_ONLY)}"]
        return (
            (lambda: svc.rotation_evidence(rid, principal=p)),
            lambda ev: _eq((ev.tenant, ev.credential), ("a", IN)),
            _none,
        )
    if uc == "compliance_report":

        def check_report(report: Any) -> None:
            assert report.tenant == "a"
            names = {c.name for c in report.credentials}
            assert {IN, OUT} <= names
            assert B_ONLY not in names

        return (lambda: svc.compliance_report(principal=p)), check_report, _none
    if uc == "forward_add":
        new = "fw-b" if scenario == "other" else "fw-new"
        b_before = _fw(w, "b")

        def check_forward_add(view: Any) -> None:
            assert (view.name, view.tenant) == (new, "a")
            assert _fw(w, "b") == b_before, "b's forwarder of that name is untouched"

        return (
            (lambda: svc.add_forwarder(new, syslog=w.scratch["syslog"], principal=p)),
            check_forward_add,
            lambda: svc.remove_forwarder(new, tenant="a"),
        )
    if uc == "forward_list":

        def check_forward_list(views: Any) -> None:
            assert {(v.name, v.tenant) for v in views} == {("fw-a", "a")}

        return (lambda: svc.list_forwarders(principal=p)), check_forward_list, _none
    if uc == "forward_remove":
        victim = "fw-b" if scenario == "other" else "fw-victim"
        if victim == "fw-victim" and victim not in _fw(w, "a"):
            svc.add_forwarder(victim, syslog=w.scratch["syslog"], tenant="a")
        return (
            (lambda: svc.remove_forwarder(victim, principal=p)),
            lambda _: _eq(victim in _fw(w, "a"), False),
            _none,
        )
    if uc == "forward_run":
        b_cursor = _fw(w, "b")["fw-b"][2]

        def check_run(_: Any) -> None:
            assert _fw(w, "a")["fw-a"][2] > 0, "a's forwarder delivered"
            assert _fw(w, "b")["fw-b"][2] == b_cursor, "b's is not worked from a"

        return (lambda: svc.run_forwarders(once=True, principal=p)), check_run, _none
    if uc.startswith("webhook_"):
        return _webhook_case(w, uc, p, scenario)
    raise AssertionError(f"no case for {uc}")


async def _no_sleep(_: float) -> None:
    return None


_FAST = WebhookTiming(attempts=1, initial=0.0, cap=0.0, sleep=_no_sleep)


def _hooks(w: World, tenant: str) -> dict[int, tuple[str, int]]:
    """Tenant's webhooks by id: (url, cursor), as the owner sees them."""
    return {v.id: (v.url, v.cursor) for v in w.svc.list_webhooks() if v.tenant == tenant}


def _webhook_case(w: World, uc: str, p: Principal, scenario: str) -> Case:
    svc = w.svc
    url = w.scratch["closed_url"]
    if uc == "webhook_add":
        b_before = _hooks(w, "b")
        made: list[int] = []

        def check_add(added: Any) -> None:
            made.append(added.webhook.id)
            assert added.webhook.tenant == "a"
            assert added.generated_secret is None
            assert _hooks(w, "b") == b_before, "b's webhooks are untouched"

        def restore() -> None:
            for wid in made:
                svc.remove_webhook(wid)

        return (
            (lambda: svc.add_webhook(url, events="all", secret_ref=IN, principal=p)),
            check_add,
            restore,
        )
    if uc == "webhook_list":

        def check_list(views: Any) -> None:
            assert w.scratch["webhook_a"] in {v.id for v in views}
            assert {v.tenant for v in views} == {"a"}, "b's never show"

        return (lambda: svc.list_webhooks(principal=p)), check_list, _none
    if uc == "webhook_dead":

        def check_dead(views: Any) -> None:
            assert {(v.id, v.tenant) for v in views} == {(w.scratch["dead_a"], "a")}

        return (lambda: svc.webhook_dead_letters(principal=p)), check_dead, _none
    if uc == "webhook_remove":
        if scenario == "other":
            victim = w.scratch["webhook_b"]
        else:
            if w.scratch.get("webhook_victim") not in _hooks(w, "a"):
                w.scratch["webhook_victim"] = svc.add_webhook(
                    url,
                    events="audit.verification_failed",
                    secret_ref=IN,
                    tenant="a",
                    principal=OWNER_A,
                ).webhook.id
            victim = w.scratch["webhook_victim"]
        return (
            (lambda: svc.remove_webhook(victim, principal=p)),
            lambda _: _eq(victim in _hooks(w, "a"), False),
            (lambda: None) if scenario == "other" else _none,
        )
    if uc == "webhook_retry":
        dead = w.scratch["dead_b" if scenario == "other" else "dead_a"]

        def check_retry(result: Any) -> None:
            # The receiver's port is closed: the retry ran, failed and left it waiting.
            assert (result.delivered, result.failed) == (0, 1)
            assert dead in {v.id for v in svc.webhook_dead_letters()}

        return (
            (lambda: svc.retry_webhook_dead_letters(dead, timing=_FAST, principal=p)),
            check_retry,
            _none,
        )
    if uc == "webhook_run":
        b_cursor = _hooks(w, "b")[w.scratch["webhook_b"]][1]
        head = _head(w.raw)[0]

        def check_run(_: Any) -> None:
            assert _hooks(w, "a")[w.scratch["webhook_a"]][1] >= head, "a's webhook was worked"
            assert _hooks(w, "b")[w.scratch["webhook_b"]][1] == b_cursor, "not b's"

        return (
            (lambda: svc.run_webhooks(once=True, timing=_FAST, principal=p)),
            check_run,
            _none,
        )
    raise AssertionError(f"no case for {uc}")


def _b_principals(w: World) -> list[Any]:
    return w.svc.list_principals(principal=OWNER_B)


def _access_case(w: World, uc: str, p: Principal, scenario: str) -> Case:
    """Principals, tokens and tenants. b holds principal ``pb`` and its token; a holds
    ``pa`` and its token."""
    svc = w.svc
    if uc == "principal_add":
        new = "pb" if scenario == "other" else "pa-new"
        b_before = _b_principals(w)

        def check_principal_add(info: Any) -> None:
            assert (info.name, info.tenant) == (new, "a")
            assert _b_principals(w) == b_before, "b's principal of that name is untouched"

        return (
            (lambda: svc.add_principal(new, Role.READER, principal=p)),
            check_principal_add,
            lambda: svc.remove_principal(new, principal=OWNER_A),
        )
    if uc == "principal_list":

        def check_principal_list(found: Any) -> None:
            assert "pa" in {x.name for x in found}
            assert "pb" not in {x.name for x in found}
            assert {x.tenant for x in found} == {"a"}

        return (lambda: svc.list_principals(principal=p)), check_principal_list, _none
    if uc == "principal_remove":
        victim = "pb" if scenario == "other" else "pa-victim"
        if victim == "pa-victim" and victim not in {
            x.name for x in svc.list_principals(principal=OWNER_A)
        }:
            svc.add_principal(victim, Role.READER, principal=OWNER_A)

        def check_principal_remove(_: Any) -> None:
            assert victim not in {x.name for x in svc.list_principals(principal=OWNER_A)}

        return (lambda: svc.remove_principal(victim, principal=p)), check_principal_remove, _none
    if uc == "token_create":
        who = "pb" if scenario == "other" else "pa"

        def check_token_create(made: Any) -> None:
            info, token = made
            assert (info.principal, info.tenant) == ("pa", "a")
            assert token.startswith(f"rtr_{info.id}_")
            w.scratch["made"] = info.id

        def drop_token() -> None:
            svc.revoke_token(w.scratch.pop("made"), principal=OWNER_A)

        return (lambda: svc.create_token(who, principal=p)), check_token_create, drop_token
    if uc == "token_list":

        def check_token_list(found: Any) -> None:
            ids = {t.id for t in found}
            assert w.scratch["token_a"] in ids
            assert w.scratch["token_b"] not in ids
            assert {t.tenant for t in found} == {"a"}

        return (lambda: svc.list_tokens(principal=p)), check_token_list, _none
    if uc == "token_revoke":
        if scenario == "other":
            target = w.scratch["token_b"]
        else:
            target = svc.create_token("pa", principal=OWNER_A)[0].id

        def check_token_revoke(info: Any) -> None:
            assert (info.id, info.tenant) == (target, "a")
            assert info.revoked_at is not None

        return (lambda: svc.revoke_token(target, principal=p)), check_token_revoke, _none
    if uc == "tenant_add":
        return (lambda: svc.add_tenant("c", principal=p)), _none, _none
    if uc == "tenant_list":
        return (lambda: svc.list_tenants(principal=p)), _none, _none
    raise AssertionError(f"no case for {uc}")


def _eq(got: Any, want: Any) -> None:
    assert got == want


def _head(raw: Engine) -> tuple[int, str]:
    with raw.connect() as conn:
        seq, mac = conn.execute(
            select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
        ).one()
    return int(seq), str(mac)


# ------------------------------------------------------------------------------ the test


@pytest.mark.parametrize("scenario", ["in", "out", "other"])
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("use_case", list(ROWS))
def test_each_use_case_allows_exactly_what_the_matrix_says(
    world: World, use_case: str, role: str, scenario: str
) -> None:
    row = ROWS[use_case]
    want = expected(row, role, scenario)
    wide = row.kind in ("select", "tenant") and scenario != "out"
    p = principal(role, "*" if wide else SCOPE)
    call, check, restore = case(world, use_case, p, scenario)
    before, seq = snapshot(world.raw)
    if want == "allow":
        result = call()
        try:
            check(result)
        finally:
            restore()
        return
    error = PermissionDenied if want == "denied" else NotFound
    with pytest.raises(error):
        call()
    after, _ = snapshot(world.raw)
    assert after == before, "a refused call changed nothing stored"
    new = audit_after(world.raw, seq)
    if want == "notfound":
        assert new == [], "a not-found call writes no audit entry"
        return
    # denied, and masked (NotFound to the caller, a denial for the tenant's auditors)
    assert [(e.tenant, e.actor, e.action, json.loads(e.details)["permission"]) for e in new] == [
        ("a", p.name, "access.denied", row.permission)
    ]


# Every use case that takes a name or an id: how to call it with one. A name out of scope
# (``out``) and a name of tenant b (``other``) must each read the same whether it exists or
# not: the same error, the same text but for the name itself.
NAMED: dict[str, Callable[[BlockingService, Principal, str], Any]] = {
    "show": lambda svc, p, t: svc.show(t, principal=p),
    "get": lambda svc, p, t: svc.get_value(t, principal=p),
    "update": lambda svc, p, t: svc.update_credential(
        t, policy=PolicyInput(grace="9m"), principal=p
    ),
    "remove": lambda svc, p, t: svc.remove_credential(t, principal=p),
    "used": lambda svc, p, t: svc.report_usage(t, 1, principal=p),
    "rotate": lambda svc, p, t: svc.rotate(Selection(names=[t]), principal=p),
    "plan": lambda svc, p, t: svc.plan(Selection(names=[t]), principal=p),
    "job_start": lambda svc, p, t: svc.start_job(Selection(names=[t]), principal=p),
    "job_get": lambda svc, p, t: svc.get_job(t, principal=p),
    "event_credential": lambda svc, p, t: svc.report_event(
        EventInput("leak", "low", credential=t), principal=p
    ),
    "rollout_create": lambda svc, p, t: svc.create_rollout(
        Selection(names=[t]), stagger=timedelta(hours=1), max_per_minute=60, principal=p
    ),
    "audit_credential": lambda svc, p, t: svc.audit_entries(credential=t, principal=p),
    "get_group": lambda svc, p, t: svc.get_group(t, principal=p),
    "remove_group": lambda svc, p, t: svc.remove_group(t, principal=p),
    "rotate_group": lambda svc, p, t: svc.rotate_group(t, principal=p),
    "plan_group": lambda svc, p, t: svc.plan_group(t, principal=p),
    "rotation_evidence": lambda svc, p, t: svc.rotation_evidence(t, principal=p),
    "rollout_status": lambda svc, p, t: svc.rollout_status(t, principal=p),
    "rollout_resume": lambda svc, p, t: svc.resume_rollout(t, principal=p),
    "rollout_abort": lambda svc, p, t: svc.abort_rollout(t, principal=p),
    "principal_remove": lambda svc, p, t: svc.remove_principal(t, principal=p),
    "token_revoke": lambda svc, p, t: svc.revoke_token(t, principal=p),
    "forward_remove": lambda svc, p, t: svc.remove_forwarder(t, principal=p),
    "webhook_remove": lambda svc, p, t: svc.remove_webhook(int(t), principal=p),
    "webhook_retry": lambda svc, p, t: svc.retry_webhook_dead_letters(
        int(t), timing=_FAST, principal=p
    ),
}
# Tenant-wide use cases taking an id or name: no scope to be out of, only another tenant.
NO_OUT = {"rollout_status", "rollout_resume", "rollout_abort", "principal_remove"}
NO_OUT |= {"token_revoke", "forward_remove", "webhook_remove", "webhook_retry"}


def _missing(existing: str) -> str:
    """An id or name of the same shape that names nothing."""
    last = existing[-1]
    if re.fullmatch(r"[0-9a-f-]{36}", existing):  # a rotation id: stay hex
        return existing[:-1] + ("1" if last == "0" else "0")
    # Names and base32 token ids: a letter no fixture name ends with.
    return existing[:-1] + ("y" if last == "z" else "z")


def _targets(w: World, use_case: str, scenario: str) -> tuple[str, str]:
    """(existing, missing) for ``use_case`` in ``scenario`` (out: in a but out of scope;
    other: in b only)."""
    kind = ROWS[use_case].kind
    if use_case == "rotation_evidence":
        existing = w.scratch[f"rotation:{OUT if scenario == 'out' else B_ONLY}"]
    elif use_case == "job_get":
        existing = w.scratch[f"job:{OUT if scenario == 'out' else B_ONLY}"]
    elif kind == "group":
        existing = "g-out" if scenario == "out" else "g-b"
    elif use_case.startswith("rollout_") and use_case != "rollout_create":
        existing = w.rollout_b
    elif use_case == "principal_remove":
        existing = "pb"
    elif use_case == "token_revoke":
        existing = w.scratch["token_b"]
    elif use_case == "forward_remove":
        existing = "fw-b"
    elif use_case in ("webhook_remove", "webhook_retry"):
        # Ids: the missing one is a number too (no letter appended).
        existing = str(w.scratch["webhook_b" if use_case == "webhook_remove" else "dead_b"])
        return existing, str(int(existing) + 1000)
    else:
        existing = OUT if scenario == "out" else B_ONLY
    return existing, _missing(existing)


def _outcome(call: Callable[[], Any], target: str) -> tuple[str, str]:
    try:
        call()
    except RotatorError as exc:
        return type(exc).__name__, str(exc).replace(target, "<target>")
    return "returned", ""


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    ("use_case", "scenario"),
    [(uc, sc) for uc in NAMED for sc in ("out", "other") if not (sc == "out" and uc in NO_OUT)],
)
def test_a_name_out_of_scope_or_of_another_tenant_reads_the_same_whether_it_exists_or_not(
    world: World, use_case: str, role: str, scenario: str
) -> None:
    p = principal(role, SCOPE if scenario == "out" else "*")
    existing, missing = _targets(world, use_case, scenario)
    fn = NAMED[use_case]
    before, _ = snapshot(world.raw)
    got = _outcome(lambda: fn(world.svc, p, existing), existing)
    assert got == _outcome(lambda: fn(world.svc, p, missing), missing)
    assert got[0] != "returned" or use_case == "audit_credential", "never allowed here"
    assert snapshot(world.raw)[0] == before, "nothing stored changed"


def test_the_owner_alone_may_recover(world: World) -> None:
    assert world.svc.recover(principal=OWNER_A) == []


def test_a_credential_may_reference_only_credentials_the_caller_may_read(
    svc: BlockingService, raw_db: Engine
) -> None:
    """A leaf certificate's ``ca`` (like an admin secret) is used by rotator on a target the
    caller names, so referencing it needs a grant that may read it: an operator (no values)
    may not, even in its scope; with a reader grant on the CA too, it may."""
    make_tenant(svc, "a")
    for ca in ("prod/payments/ca", "dev/other/ca"):
        svc.add_credential(
            ca,
            "certificate",
            settings={"role": "ca", "common_name": "Internal CA", "validity": "365d"},
            value=ValueInput(generate=True),
            principal=OWNER_A,
        )
    operator = principal("operator", SCOPE)

    def add_leaf(name: str, ca: str) -> None:
        svc.add_credential(
            name,
            "certificate",
            settings={"ca": ca, "common_name": "api.internal", "validity": "30d"},
            value=ValueInput(generate=True),
            principal=operator,
        )

    before, seq = snapshot(raw_db)
    with pytest.raises(PermissionDenied):
        add_leaf("prod/payments/tls", "dev/other/ca")
    assert snapshot(raw_db)[0] == before, "nothing stored"
    [denied] = audit_after(raw_db, seq)
    assert (denied.actor, denied.action, denied.credential) == (
        "operator-narrow",
        "access.denied",
        "dev/other/ca",
    )
    with pytest.raises(PermissionDenied):
        svc.update_credential(
            "prod/payments/ca",
            connector="certificate",
            settings={"ca": "dev/other/ca", "common_name": "api.internal"},
            principal=operator,
        )
    with pytest.raises(PermissionDenied):
        add_leaf("prod/payments/tls", "prod/payments/ca")
    operator = Principal(
        name="operator-narrow",
        tenant="a",
        grants=(Grant(Role.OPERATOR, SCOPE), Grant(Role.READER, "prod/payments/ca")),
    )
    add_leaf("prod/payments/tls", "prod/payments/ca")
    assert version_of_in(svc, "prod/payments/tls") == 1


def version_of_in(svc: BlockingService, name: str) -> int:
    current = svc.show(name, principal=OWNER_A).version_in(Stage.CURRENT)
    assert current is not None
    return current.number
