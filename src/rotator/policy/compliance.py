"""The compliance report's figures, flags and control mapping. Pure: no I/O, ``now`` passed in.

The service gathers per-credential facts from the store (:class:`CredentialFacts`) with a
few aggregate queries; this module turns them into the report: per credential its age,
policy maximum and flags, overall counts, and a static table mapping the figures to
controls with a ``pass`` / ``attention`` status each.

The report is *evidence for* the controls it names, from rotator's own records. It is not a
certification, an audit opinion or an assessment of compliance: a control also covers
people, processes and systems rotator does not see.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from itertools import pairwise
from typing import Any

from rotator.domain.policy import RotationPolicy

# PCI DSS v4.0 8.3.9: passwords changed at least once every 90 days.
PCI_MAX_AGE = timedelta(days=90)
# Cron firings looked at to find a cron policy's longest gap (a year of weekly firings is
# regular; irregular expressions show their longest gap within this many).
CRON_PROBE_FIRINGS = 12
MAX_ERROR_CHARS = 500
# Connectors and local generators whose values are key pairs or certificates, not shared
# secrets: not "password-kind" for PCI DSS 8.3.9.
KEY_PAIR_CONNECTORS = frozenset({"certificate", "jwks"})
KEY_PAIR_GENERATORS = frozenset({"rsa", "ed25519"})
RESULTS = ("finished", "failed", "rolled_back")
DISCLAIMER = (
    "Evidence for the controls listed, drawn from rotator's own records. It is not a "
    "certification or an assessment of compliance: each control also covers people, "
    "processes and systems outside rotator."
)


@dataclass(frozen=True, slots=True)
class LastRotation:
    """The newest rotation of a credential (any time, not only in the period). ``result``
    is the row's step: finished, failed, rolled_back, or an intermediate step while it runs."""

    at: datetime
    trigger: str
    result: str
    finished_at: datetime | None
    error: str | None


@dataclass(frozen=True, slots=True)
class Reader:
    """Reads of one credential's values by one actor (principal name) in the period."""

    actor: str
    count: int
    last_at: datetime


@dataclass(frozen=True, slots=True)
class CredentialFacts:
    """What the store says about one credential; gathered by aggregate queries."""

    name: str
    connector: str
    config: Mapping[str, Any]  # the connector settings (``generator`` is all that is read)
    tags: Mapping[str, str]
    policy: Mapping[str, Any] | str  # the effective policy (RotationPolicy.to_json), or its JSON
    created_at: datetime
    current_created_at: datetime | None  # None: no CURRENT version
    next_rotation_at: datetime | None
    finished_ever: int  # finished rotations, all time
    period_results: Mapping[str, int]  # step -> rotations started in the period
    period_triggers: Mapping[str, int]  # trigger -> rotations started in the period
    last: LastRotation | None
    previous_revoked_at: datetime | None  # newest RETIRED version's stage time
    previous_revoke_due: datetime | None  # a PREVIOUS version's grace end (still valid)
    readers: Sequence[Reader] = ()


@dataclass(frozen=True, slots=True)
class Maximum:
    """How old a credential's value may get under its policy, and which field says so."""

    value: timedelta | None
    source: str | None  # max_age | every | cron; None: no time policy


def maximum(policy: Mapping[str, Any] | str) -> Maximum:
    """The policy maximum: ``max_age`` if set, else the interval ``every``, else for a cron
    policy the longest gap between its next :data:`CRON_PROBE_FIRINGS` firings (plus its
    window); ``None`` without a time policy (on demand, or by uses only). ``policy`` may be
    the policy's JSON text."""
    # Memoized by the policy's text: a tenant has few distinct policies, and parsing one
    # (a cron expression's check above all) costs far more than the rest of a report row.
    if isinstance(policy, str):
        return _maximum(policy)
    return _maximum(json.dumps(dict(policy), sort_keys=True))


@lru_cache(maxsize=4096)
def _maximum(text: str) -> Maximum:
    p = RotationPolicy.from_json(json.loads(text))
    if p.max_age is not None:
        return Maximum(p.max_age, "max_age")
    if p.every is not None:
        return Maximum(p.every, "every")
    if p.cron is not None:
        gap = _cron_gap(p.cron, p.tz)
        return Maximum(gap + (p.window or timedelta(0)), "cron")
    return Maximum(None, None)


# A fixed start, so the figure does not depend on the clock (policy code takes none); the
# longest gap over a year of firings does not depend on where the year starts for the
# expressions people write, and a report over 10,000 credentials computes each once.
_CRON_START = datetime(2001, 1, 1)


@lru_cache(maxsize=1024)
def _cron_gap(cron: str, tz: str | None) -> timedelta:
    from croniter import croniter

    from rotator.domain.policy import zone

    it = croniter(cron, _CRON_START.replace(tzinfo=zone(tz)))
    times = [it.get_next(datetime) for _ in range(CRON_PROBE_FIRINGS + 1)]
    return max(b - a for a, b in pairwise(times))


def password_kind(connector: str, config: Mapping[str, Any]) -> bool:
    """Whether the credential's value is a shared secret (password, API key, token) rather
    than a key pair or a certificate; the scope of PCI DSS 8.3.9's 90-day figure."""
    if connector in KEY_PAIR_CONNECTORS:
        return False
    return not (connector == "local" and config.get("generator") in KEY_PAIR_GENERATORS)


@dataclass(frozen=True, slots=True)
class CredentialRow:
    """One credential of the report."""

    name: str
    connector: str
    tags: Mapping[str, str]
    password_kind: bool
    age: timedelta | None
    maximum: Maximum
    last: LastRotation | None
    next_rotation_at: datetime | None
    previous_revoked_at: datetime | None
    previous_revoke_due: datetime | None
    period_results: Mapping[str, int]
    readers: Sequence[Reader]
    overdue: bool
    never_rotated: bool
    older_than_policy: bool
    revoke_overdue: bool

    @property
    def reads(self) -> int:
        return sum(r.count for r in self.readers)

    @property
    def last_read_at(self) -> datetime | None:
        return max((r.last_at for r in self.readers), default=None)


def credential_row(f: CredentialFacts, now: datetime) -> CredentialRow:
    """The report row of one credential at ``now``: flags as the module docstring of
    :func:`build` defines them."""
    age = None if f.current_created_at is None else now - f.current_created_at
    mx = maximum(f.policy)
    older = age is not None and mx.value is not None and age > mx.value
    overdue = older or (f.next_rotation_at is not None and f.next_rotation_at < now)
    last = f.last
    if last is not None and last.error is not None and len(last.error) > MAX_ERROR_CHARS:
        last = LastRotation(
            last.at, last.trigger, last.result, last.finished_at, last.error[:MAX_ERROR_CHARS]
        )
    return CredentialRow(
        name=f.name,
        connector=f.connector,
        tags=dict(sorted(f.tags.items())),
        password_kind=password_kind(f.connector, f.config),
        age=age,
        maximum=mx,
        last=last,
        next_rotation_at=f.next_rotation_at,
        previous_revoked_at=f.previous_revoked_at,
        previous_revoke_due=f.previous_revoke_due,
        period_results={k: f.period_results.get(k, 0) for k in RESULTS},
        readers=sorted(f.readers, key=lambda r: (-r.count, r.actor)),
        overdue=overdue,
        never_rotated=f.finished_ever == 0,
        older_than_policy=older,
        revoke_overdue=f.previous_revoke_due is not None and f.previous_revoke_due < now,
    )


@dataclass(frozen=True, slots=True)
class Control:
    """One control the figures are evidence for."""

    id: str
    framework: str
    title: str
    evidence: str  # what the figures show for it, in modest words
    figures: Mapping[str, Any]
    status: str  # pass | attention
    reason: str


@dataclass(frozen=True, slots=True)
class Report:
    tenant: str
    generated_at: datetime
    since: datetime
    summary: Mapping[str, Any]
    controls: Sequence[Control]
    credentials: Sequence[CredentialRow] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data: ``summary``, ``controls``, ``credentials``."""
        return {
            "tenant": self.tenant,
            "generated_at": iso(self.generated_at),
            "since": iso(self.since),
            "disclaimer": DISCLAIMER,
            "summary": dict(self.summary),
            "controls": [
                {
                    "id": c.id,
                    "framework": c.framework,
                    "title": c.title,
                    "evidence": c.evidence,
                    "figures": dict(c.figures),
                    "status": c.status,
                    "reason": c.reason,
                }
                for c in self.controls
            ],
            "credentials": [row_json(r) for r in self.credentials],
        }


def iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat().replace("+00:00", "Z")


def seconds(d: timedelta | None) -> float | None:
    return None if d is None else round(d.total_seconds(), 3)


def row_json(r: CredentialRow) -> dict[str, Any]:
    last = r.last
    return {
        "name": r.name,
        "connector": r.connector,
        "tags": dict(r.tags),
        "password_kind": r.password_kind,
        "age_s": seconds(r.age),
        "max_age_s": seconds(r.maximum.value),
        "max_source": r.maximum.source,
        "last_rotation": None
        if last is None
        else {
            "at": iso(last.at),
            "trigger": last.trigger,
            "result": last.result,
            "finished_at": iso(last.finished_at),
            "error": last.error,
        },
        "next_rotation_at": iso(r.next_rotation_at),
        "previous_revoked_at": iso(r.previous_revoked_at),
        "previous_revoke_due": iso(r.previous_revoke_due),
        "rotations": dict(r.period_results),
        "reads": r.reads,
        "readers": [
            {"actor": x.actor, "count": x.count, "last_at": iso(x.last_at)} for x in r.readers
        ],
        "last_read_at": iso(r.last_read_at),
        "overdue": r.overdue,
        "never_rotated": r.never_rotated,
        "older_than_policy": r.older_than_policy,
        "revoke_overdue": r.revoke_overdue,
    }


def build(
    facts: Sequence[CredentialFacts],
    *,
    tenant: str,
    now: datetime,
    since: datetime,
    denied: int,
) -> Report:
    """The report at ``now`` over the period [``since``, ``now``].

    Per credential: ``age`` is now minus the CURRENT version's creation; ``overdue`` when its
    next rotation time has passed or its age exceeds the policy maximum; ``never_rotated``
    when no rotation of it ever finished (it holds the value it was added with);
    ``older_than_policy`` when its age exceeds the maximum; ``revoke_overdue`` when a
    PREVIOUS value's grace has ended but it is not revoked yet. Rotations and reads count
    only those in the period; ``denied`` is the access denials audited in it.
    """
    rows = [credential_row(f, now) for f in sorted(facts, key=lambda f: f.name)]
    triggers: dict[str, int] = {}
    for f in facts:
        for k, n in f.period_triggers.items():
            triggers[k] = triggers.get(k, 0) + n
    results = {k: sum(r.period_results[k] for r in rows) for k in RESULTS}
    ended = sum(results.values())
    pw_old = [r for r in rows if r.password_kind and r.age is not None and r.age > PCI_MAX_AGE]
    readers = {x.actor for r in rows for x in r.readers}
    summary: dict[str, Any] = {
        "credentials": len(rows),
        "password_kind": sum(r.password_kind for r in rows),
        "rotations": {**results, "total": ended},
        "rotations_by_trigger": dict(sorted(triggers.items())),
        "success_rate": None if ended == 0 else round(results["finished"] / ended, 4),
        "overdue": sum(r.overdue for r in rows),
        "never_rotated": sum(r.never_rotated for r in rows),
        "older_than_policy": sum(r.older_than_policy for r in rows),
        "no_time_policy": sum(r.maximum.value is None for r in rows),
        "revoke_overdue": sum(r.revoke_overdue for r in rows),
        "password_kind_older_than_90d": len(pw_old),
        "reads": sum(r.reads for r in rows),
        "readers": len(readers),
        "denied": denied,
    }
    return Report(tenant, now, since, summary, controls(summary), rows)


def controls(s: Mapping[str, Any]) -> list[Control]:
    """The static control table with each control's figures and a status derived from
    them: ``pass`` when the figures show nothing to look at, ``attention`` otherwise."""

    def pick(*keys: str) -> dict[str, Any]:
        return {k: s[k] for k in keys}

    def status(problems: list[str]) -> tuple[str, str]:
        if problems:
            return "attention", "; ".join(problems)
        return "pass", "no figure needs attention"

    def nonzero(*keys: str) -> list[str]:
        return [f"{k.replace('_', ' ')}: {s[k]}" for k in keys if s[k]]

    out = []
    st, why = status(nonzero("password_kind_older_than_90d"))
    out.append(
        Control(
            "8.3.9",
            "PCI DSS v4.0",
            "Passwords/passphrases changed at least once every 90 days (or dynamic analysis)",
            "the age of every password-kind value rotator manages (API keys, tokens and "
            "passwords; not key pairs or certificates) against 90 days",
            pick("password_kind", "password_kind_older_than_90d"),
            st,
            why,
        )
    )
    st, why = status(nonzero("older_than_policy", "overdue", "no_time_policy", "revoke_overdue"))
    out.append(
        Control(
            "8.6.3",
            "PCI DSS v4.0",
            "Application and system account passwords protected against misuse: changed "
            "periodically and upon suspicion or confirmation of compromise",
            "each credential's time policy and whether it is kept; rotations in the period "
            "by trigger (risk and emergency rotations answer suspected compromise); "
            "previous values revoked after their grace",
            pick(
                "credentials",
                "no_time_policy",
                "older_than_policy",
                "overdue",
                "revoke_overdue",
                "rotations",
                "rotations_by_trigger",
            ),
            st,
            why,
        )
    )
    st, why = status(nonzero("denied"))
    out.append(
        Control(
            "ITGC access control",
            "SOX",
            "Access to credentials is authorized and logged; changes are authorized and logged",
            "every value read in the period by principal (from the audit log), access "
            "denials to review, and rotations recorded with their trigger and result",
            pick("reads", "readers", "denied", "rotations"),
            st,
            why,
        )
    )
    st, why = status(nonzero("older_than_policy", "overdue"))
    out.append(
        Control(
            "IA-5(1)",
            "NIST SP 800-53 Rev. 5",
            "Password-based authentication: authenticator management",
            "password-based authenticators are changed on their defined schedule and stored "
            "only encrypted (AES-256-GCM under per-tenant data keys)",
            pick("credentials", "older_than_policy", "overdue", "never_rotated", "success_rate"),
            st,
            why,
        )
    )
    st, why = status(nonzero("no_time_policy", "overdue"))
    out.append(
        Control(
            "A.5.17",
            "ISO/IEC 27001:2022",
            "Authentication information: allocation and management controlled by a process",
            "every credential under a time policy, kept; who read values, and how often",
            pick("credentials", "no_time_policy", "overdue", "never_rotated", "reads", "readers"),
            st,
            why,
        )
    )
    return out
