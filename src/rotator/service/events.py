"""Risk events: report one, decide per matched credential (rotator.policy.risk), act, list.

Where decisions live: each event is a row of ``risk_events`` and each credential it matched a
row of ``risk_decisions`` (action, reason, and the outcome of the rotation it started). The
de-duplication and cooldown look-ups read that indexed table, not the audit log. Every event
is audited as ``risk.reported`` and every decision as ``risk.decided``, in the transaction
that stores them; the rotations are audited by the engine as usual (trigger ``risk`` or
``emergency``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

from sqlalchemy import Connection

from rotator.domain import names
from rotator.domain.model import Credential, Stage
from rotator.domain.principal import LOCAL_PRINCIPAL, Action, Principal
from rotator.engine import BatchResult, Outcome, RotationRequest, RotationResult, Trigger
from rotator.engine.types import StillValid
from rotator.errors import InvalidInput, NotFound, StoreError
from rotator.policy.risk import (
    DEFAULT_COOLDOWN,
    Decision,
    PriorDecision,
    RiskAction,
    Severity,
    action_for,
    decide,
    parse_severity,
)
from rotator.service import rotation
from rotator.service.credentials import RotatorService
from rotator.store import events as store_events
from rotator.store.events import EventRow

MAX_DETAIL = 1000
MAX_KIND = 64
_KIND = re.compile(r"[A-Za-z0-9._-]+")
MAX_LIST = 10_000
# An API token (``rtr_<id>_<secret>``, see rotator.domain.access) pasted into a detail.
_TOKEN = re.compile(r"rtr_[A-Za-z0-9_-]{3,}")


@dataclass(frozen=True, slots=True)
class EventInput:
    """A risk event as given on an interface, checked as a whole by :meth:`check` before
    anything is stored. Exactly one of ``credential`` and ``tags`` selects the credentials."""

    kind: str
    severity: str
    credential: str | None = None
    tags: Mapping[str, str] | None = None
    detail: str | None = None

    def check(self) -> Severity:
        """The parsed severity; InvalidInput (one line, never quoting the detail) otherwise."""
        if not 1 <= len(self.kind) <= MAX_KIND or not _KIND.fullmatch(self.kind):
            raise InvalidInput(f"--kind must be 1 to {MAX_KIND} letters, digits or '._-'")
        sev = parse_severity(self.severity)
        if (self.credential is None) == (not self.tags):
            raise InvalidInput("name the credential with --credential or select with --tag")
        if self.credential is not None:
            names.check_credential_name(self.credential)
        names.check_tag_filter(self.tags or {})
        if self.detail is not None:
            if len(self.detail) > MAX_DETAIL:
                raise InvalidInput(f"--detail is longer than {MAX_DETAIL} characters")
            if any(ord(ch) < 32 and ch not in "\t\n" for ch in self.detail):
                raise InvalidInput("--detail holds control characters")
            if _TOKEN.search(self.detail):
                # The detail reaches the audit log and webhook payloads verbatim.
                raise InvalidInput("--detail must not hold a token (rtr_...): say where, not what")
        return sev

    def selector(self) -> dict[str, Any]:
        if self.credential is not None:
            return {"credential": self.credential}
        return {"tags": dict(self.tags or {})}


@dataclass(frozen=True, slots=True)
class CredentialDecision:
    """One matched credential: the decision, and the outcome of the rotation it started
    (None when it only notified)."""

    name: str
    action: RiskAction
    reason: str
    duplicate_of: int | None = None
    outcome: Outcome | None = None
    version: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "action": self.action.value,
            "reason": self.reason,
            "duplicate_of": self.duplicate_of,
            "outcome": None if self.outcome is None else self.outcome.value,
            "version": self.version,
            "error": self.error,
        }


@dataclass
class EventReport:
    """What ``event report`` did: the stored event's id and one decision per credential."""

    event_id: int
    kind: str
    severity: Severity
    decisions: list[CredentialDecision] = field(default_factory=list)
    still_valid: list[StillValid] = field(default_factory=list)
    # Why a sweep after the rotations (revocations, the look-up of old values still valid)
    # did not run: the store went away. The decisions are reported; still_valid is not known.
    sweep_error: str | None = None

    @property
    def ok(self) -> bool:
        """Every rotation it started succeeded and no old value of an emergency is known
        to be valid (not ok when that could not be looked up: ``sweep_error``)."""
        return (
            not self.still_valid
            and self.sweep_error is None
            and all(d.outcome in (None, Outcome.ROTATED) for d in self.decisions)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "kind": self.kind,
            "severity": self.severity.value,
            "decisions": [d.to_json() for d in self.decisions],
            "still_valid": [v.to_json() for v in self.still_valid],
            **({} if self.sweep_error is None else {"sweep_error": self.sweep_error}),
        }


def _prior(rows: list[tuple[int, str, bool]]) -> PriorDecision | None:
    """The strongest of earlier decisions, by what each achieved: a rotation that did not
    replace the value achieved only a notification (so a repeat may try again); one still
    running, or one that replaced the value but could not revoke the old one, achieved its
    action (see store.events.prior_decisions)."""
    best: PriorDecision | None = None
    for event_id, action, done in rows:
        act = RiskAction(action)
        achieved = act if done else RiskAction.NOTIFY
        if best is None or achieved.strength >= best.achieved.strength:
            best = PriorDecision(event_id, achieved)
    return best


async def _refuse_values_in_detail(
    svc: RotatorService, name: str, detail: str, principal: Principal
) -> None:
    """InvalidInput when ``detail`` holds the CURRENT, PREVIOUS or PENDING value of ``name``
    (it is audited and sent to webhooks verbatim). Read without recording a use: nothing is
    returned. Only for ``--credential``: a ``--tag`` selection is checked for tokens only."""
    text = detail.encode()
    for stage in (Stage.CURRENT, Stage.PREVIOUS, Stage.PENDING):
        try:
            value = await svc._read(
                partial(svc.kernel.find_value, principal=principal, name=name, stage=stage)
            )
        except NotFound:
            continue
        if value[0].reveal() and value[0].reveal() in text:
            raise InvalidInput(f"--detail must not hold a value of {name!r}: say where, not what")


async def report_event(
    svc: RotatorService, event: EventInput, principal: Principal = LOCAL_PRINCIPAL
) -> EventReport:
    """Record a risk event, decide for every credential it selects, and act.

    Input is checked first (InvalidInput, NotFound for an unknown --credential; nothing is
    stored then). The event, its decisions and their audit entries (``risk.reported``,
    ``risk.decided``) commit in one transaction before any rotation starts; then ``rotate``
    decisions run as rotations with trigger ``risk`` and ``emergency`` ones as emergencies
    (grace 0, old values revoked at once), all in one batch. Each outcome is recorded on its
    decision as soon as the batch ends. Then, for every matched credential whose rule for this
    severity is emergency (de-duplicated ones included), queued revocations are processed now
    and the old values still valid are reported (``still_valid``). A failed rotation does not
    raise: it is in the report (``ok`` is False).

    Two reports at once serialize on the matched credentials (see
    store.events.lock_credentials); a decision without an outcome yet, younger than the
    engine's lease, is a rotation under way and counts as done for the next one.

    Needs EVENT_REPORT on ``--credential``; a ``--tag`` selector needs it tenant-wide (the
    event may rotate any credential of the tenant that carries the tag)."""
    severity = event.check()
    await svc.authorize(principal, Action.EVENT_REPORT, event.credential)
    if event.credential is not None:
        creds: list[Credential] = [await svc.find(event.credential, principal)]
        if event.detail:
            await _refuse_values_in_detail(svc, event.credential, event.detail, principal)
    else:
        creds = await svc.find_credentials(principal, tags=event.tags)
    tenant = await svc.tenant(principal.tenant)
    now = svc.clock()
    kernel = svc.kernel
    # A decision without an outcome younger than a lease is a rotation still running (its
    # owner renews the lease or dies); it counts as done for de-duplication and cooldown.
    running_since = now - timedelta(seconds=svc.engine.opts.lease_s)

    def write(conn: Connection) -> tuple[int, list[tuple[int, Credential, Decision]]]:
        # Before reading earlier decisions: a simultaneous report of the same event waits
        # here until ours commits, then sees our decisions.
        store_events.lock_credentials(conn, [c.id for c in creds])
        event_id = store_events.insert_event(
            conn,
            tenant_id=tenant.id,
            kind=event.kind,
            severity=severity.value,
            selector=event.selector(),
            detail=event.detail,
            reporter=principal.name,
            now=now,
        )
        kernel.audit(
            conn,
            principal,
            "risk.reported",
            None,
            None,
            {
                "event_id": event_id,
                "kind": event.kind,
                "severity": severity.value,
                "selector": event.selector(),
                "detail": event.detail,
                "matched": len(creds),
            },
        )
        decided = []
        for cred in creds:
            cooldown = cred.policy.risk_cooldown
            if cooldown is None:
                cooldown = DEFAULT_COOLDOWN
            prior = _prior(
                store_events.prior_decisions(
                    conn, cred.id, event.kind, now - cooldown, running_since
                )
            )
            d = decide(
                cred.policy.risk_rules,
                severity,
                now=now,
                last_risk_action_at=store_events.last_risk_rotation(conn, cred.id, running_since),
                cooldown=cooldown,
                duplicate_of=prior,
            )
            decision_id = store_events.insert_decision(
                conn,
                event_id=event_id,
                credential_id=cred.id,
                credential=cred.name,
                kind=event.kind,
                action=d.action.value,
                reason=d.reason,
                duplicate_of=d.duplicate_of,
                now=now,
            )
            kernel.audit(
                conn,
                principal,
                "risk.decided",
                cred.name,
                None,
                {
                    "event_id": event_id,
                    "kind": event.kind,
                    "severity": severity.value,
                    "action": d.action.value,
                    "reason": d.reason,
                    "duplicate_of": d.duplicate_of,
                },
            )
            decided.append((decision_id, cred, d))
        return event_id, decided

    event_id, decided = await svc.engine.writer.run(write)
    report = EventReport(event_id, event.kind, severity)
    acting = [(i, c, d) for i, c, d in decided if d.action is not RiskAction.NOTIFY]
    results: dict[str, RotationResult] = {}
    if acting:
        reqs = [
            RotationRequest(
                c.name, principal.tenant, Trigger.EMERGENCY, 0, requested_by=principal.name
            )
            if d.action is RiskAction.EMERGENCY
            else RotationRequest(
                c.name, principal.tenant, Trigger.RISK, requested_by=principal.name
            )
            for _, c, d in acting
        ]
        engine = svc.engine

        async def record(batch: BatchResult) -> None:
            results.update((r.name, r) for r in batch.results)

            def write_outcomes(conn: Connection) -> None:
                for decision_id, cred, _ in acting:
                    r = results.get(cred.name)
                    store_events.record_outcome(
                        conn,
                        decision_id,
                        outcome=(r.outcome if r else Outcome.FAILED).value,
                        rotation_id=r.rotation_id if r else None,
                        version=r.version if r else None,
                        error=r.error if r else "no result",
                    )

            await engine.writer.run(write_outcomes)

        matched = [c.id for c in creds]
        batch = await rotation.run_rotations(
            svc, reqs, {c.name: c.id for c in creds}, sweep=matched, after=record
        )
        report.sweep_error = batch.sweep_error
    # Every credential whose rule for this severity is emergency owes no valid old value,
    # also when this report only repeated an earlier emergency (de-duplicated): an old value
    # whose revoke failed then is revoked again now rather than replaced by a third value.
    owed = [
        c.id for c in creds if action_for(c.policy.risk_rules, severity) is RiskAction.EMERGENCY
    ]
    if owed:
        done = {c.id for _, c, d in acting if d.action is RiskAction.EMERGENCY}
        try:
            await rotation.revoke_now(svc, [i for i in owed if i not in done])
            report.still_valid = await rotation.still_valid(svc, owed)
        except StoreError as exc:
            # The store went away after the rotations: their outcomes are known and must
            # reach the caller; what was due for revocation stays queued.
            report.sweep_error = rotation.join_sweep_errors(
                report.sweep_error, f"old values not revoked or looked up: {exc}"
            )
    for _, cred, d in decided:
        r = results.get(cred.name)
        report.decisions.append(
            CredentialDecision(
                cred.name,
                d.action,
                d.reason,
                d.duplicate_of,
                None if d.action is RiskAction.NOTIFY else (r.outcome if r else Outcome.FAILED),
                r.version if r else None,
                r.error if r else None,
            )
        )
    return report


async def list_events(
    svc: RotatorService,
    limit: int = 50,
    principal: Principal = LOCAL_PRINCIPAL,
    *,
    before: int | None = None,
) -> list[EventRow]:
    """The tenant's newest ``limit`` events (older than event id ``before`` if given: the
    next page), newest first, each with its decisions. Needs ROTATION_READ tenant-wide."""
    if not 1 <= limit <= MAX_LIST:
        raise InvalidInput(f"--limit must be between 1 and {MAX_LIST}")
    await svc.authorize(principal, Action.ROTATION_READ)
    tenant = await svc._existing_tenant(principal)
    if tenant is None:
        return []
    return await svc.engine.runtime.read(
        lambda c: store_events.list_events(c, tenant.id, limit, before)
    )
