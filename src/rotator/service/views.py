"""Plain-data views of domain objects, shared by every interface (CLI --json, REST, MCP)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from rotator.audit.chain import GENESIS
from rotator.audit.chain import AuditEntry as AuditEntry
from rotator.audit.chain import VerifyResult as VerifyResult
from rotator.domain.model import Credential, Stage, Version
from rotator.domain.policy import RotationPolicy, format_duration, parse_duration
from rotator.engine.types import BatchResult, Outcome, RotationResult, StillValid
from rotator.policy.risk import RiskAction, Severity
from rotator.sinks import describe_sink, sink_from_description
from rotator.store.events import DecisionRow
from rotator.store.events import EventRow as EventRow

if TYPE_CHECKING:
    from rotator.service.events import EventReport


def _ts(d: datetime | None) -> str | None:
    return None if d is None else d.isoformat().replace("+00:00", "Z")


def version_view(v: Version) -> dict[str, Any]:
    return {
        "version": v.number,
        "stage": v.stage.value,
        "created_at": _ts(v.created_at),
        "staged_at": _ts(v.staged_at),
        "expires_at": _ts(v.expires_at),
    }


def credential_view(c: Credential) -> dict[str, Any]:
    """Metadata of a credential; never a value."""
    p = c.policy
    cur = next((v.number for v in c.versions if v.stage.value == "CURRENT"), None)
    return {
        "name": c.name,
        "tenant": c.tenant,
        "connector": c.connector,
        "settings": dict(c.config),
        "tags": dict(c.tags),
        "policy": {
            "every": None if p.every is None else format_duration(p.every),
            "cron": p.cron,
            "window": None if p.window is None else format_duration(p.window),
            "grace": format_duration(p.grace),
            "max_uses": p.max_uses,
            "jitter": None if p.jitter is None else format_duration(p.jitter),
            "blackout": list(p.blackout),
            "tz": p.tz,
            "max_age": None if p.max_age is None else format_duration(p.max_age),
        },
        "current_version": cur,
        "created_at": _ts(c.created_at),
        "updated_at": _ts(c.updated_at),
        "last_rotated_at": _ts(c.last_rotated_at),
        "next_rotation_at": _ts(c.next_rotation_at),
        "next_rotation_rule": c.next_rotation_rule,
        "use_count": c.use_count,
        "sinks": [describe_sink(dict(x)) for x in c.sinks],
        "versions": [version_view(v) for v in c.versions],
    }


def partial_policy_view(partial: dict[str, Any]) -> dict[str, Any]:
    """The fields a partial policy sets, durations as text (``30d``), others as stored."""
    full = RotationPolicy.from_json(dict(partial))
    out: dict[str, Any] = {}
    for key in partial:
        value = getattr(full, key, partial[key])
        if isinstance(value, timedelta):
            value = format_duration(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


# -- inverse views: the objects a remote client rebuilds from the REST JSON -------------------
#
# Each is the inverse of the view above (or of the object's ``to_json``) for every field the
# view carries, so an interface printing the rebuilt object prints what it prints locally.
# What a view does not carry comes back as its default: a credential's id (0), a version's
# credential id (0), the risk fields of its policy, a rotation's per-credential ids.


def _dt(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))


def _req_dt(text: str | None) -> datetime:
    d = _dt(text)
    if d is None:
        raise ValueError("a required timestamp is missing")
    return d


def version_from_view(v: dict[str, Any]) -> Version:
    return Version(
        credential_id=0,
        number=int(v["version"]),
        stage=Stage(v["stage"]),
        created_at=_req_dt(v["created_at"]),
        staged_at=_req_dt(v.get("staged_at") or v["created_at"]),
        expires_at=_dt(v.get("expires_at")),
    )


def credential_from_view(d: dict[str, Any]) -> Credential:
    """The credential :func:`credential_view` shows: ``credential_view(credential_from_view(v))
    == v`` for every view."""
    p = d["policy"]

    def td(text: str | None) -> float | None:
        return None if text is None else parse_duration(text).total_seconds()

    policy = RotationPolicy.from_json(
        {
            "every": td(p.get("every")),
            "cron": p.get("cron"),
            "window": td(p.get("window")),
            "grace": td(p.get("grace")),
            "max_uses": p.get("max_uses"),
            "jitter": td(p.get("jitter")),
            "blackout": list(p.get("blackout") or ()),
            "tz": p.get("tz"),
            "max_age": td(p.get("max_age")),
            "on_risk": p.get("on_risk"),
            "risk_cooldown": td(p.get("risk_cooldown")),
        }
    )
    return Credential(
        id=0,
        tenant=d["tenant"],
        name=d["name"],
        connector=d["connector"],
        config=dict(d["settings"]),
        tags=dict(d["tags"]),
        policy=policy,
        created_at=_req_dt(d["created_at"]),
        updated_at=_req_dt(d["updated_at"]),
        next_rotation_at=_dt(d.get("next_rotation_at")),
        last_rotated_at=_dt(d.get("last_rotated_at")),
        use_count=int(d.get("use_count") or 0),
        versions=tuple(version_from_view(v) for v in d.get("versions") or ()),
        sinks=tuple(sink_from_description(s) for s in d.get("sinks") or ()),
        next_rotation_rule=d.get("next_rotation_rule"),
    )


def batch_result_from_json(data: dict[str, Any]) -> BatchResult:
    """The result ``BatchResult.to_json`` shows (``rotate --json``; a job's ``result``):
    ``batch_result_from_json(r.to_json()).to_json() == r.to_json()``. The order of results is
    rotated, failed, skipped (the JSON keeps no other); warnings join their credential's
    result (or a rotated one of that name)."""
    warnings: dict[str, list[str]] = {}
    for w in data.get("warnings") or ():
        warnings.setdefault(w["name"], []).append(w["warning"])
    rolled_back = set(data.get("rolled_back") or ())
    results: list[RotationResult] = []
    for name in data.get("rotated") or ():
        results.append(
            RotationResult(name, Outcome.ROTATED, warnings=tuple(warnings.pop(name, ())))
        )
    for f in data.get("failed") or ():
        outcome = Outcome.ROLLED_BACK if f["name"] in rolled_back else Outcome.FAILED
        results.append(
            RotationResult(
                f["name"], outcome, error=f["error"], warnings=tuple(warnings.pop(f["name"], ()))
            )
        )
    for s in data.get("skipped") or ():
        results.append(
            RotationResult(
                s["name"],
                Outcome.SKIPPED,
                error=s["reason"],
                warnings=tuple(warnings.pop(s["name"], ())),
            )
        )
    for name, ws in warnings.items():  # a warning of no listed result: keep it visible
        results.append(RotationResult(name, Outcome.ROTATED, warnings=tuple(ws)))
    still = data.get("still_valid")
    return BatchResult(
        results=results,
        duration_s=float(data.get("duration_s") or 0.0),
        still_valid=None
        if still is None
        else [StillValid(v["name"], int(v["version"]), v.get("error")) for v in still],
        sweep_error=data.get("sweep_error"),
    )


def audit_entry_from_json(e: dict[str, Any]) -> AuditEntry:
    """The entry ``AuditEntry.to_json`` shows (``audit list --json``; ``GET /v1/audit``)."""
    return AuditEntry(
        seq=int(e["seq"]),
        ts=e["ts"],
        tenant=e["tenant"],
        actor=e["actor"],
        action=e["action"],
        credential=e.get("credential"),
        rotation_id=e.get("rotation_id"),
        details=dict(e.get("details") or {}),
        prev_hash=e.get("prev_hash") or GENESIS,
        hash=e.get("hash") or "",
        key_id=e.get("key_id"),
    )


def verify_result_from_json(data: dict[str, Any]) -> VerifyResult:
    """The result ``POST /v1/audit/verify`` shows."""
    return VerifyResult(
        ok=bool(data["ok"]),
        entries=int(data["entries"]),
        first_bad_seq=data.get("first_bad_seq"),
        reason=data.get("reason"),
    )


def event_report_from_json(data: dict[str, Any]) -> EventReport:
    """The report ``EventReport.to_json`` shows (``event report --json``; ``POST
    /v1/events``): ``event_report_from_json(r.to_json()).to_json() == r.to_json()``."""
    # Imported here: rotator.service.events brings the scheduler and the audit checkpoints,
    # which a credential view (``credential get``'s module) does not need.
    from rotator.service.events import CredentialDecision, EventReport

    return EventReport(
        event_id=int(data["event_id"]),
        kind=data["kind"],
        severity=Severity(data["severity"]),
        decisions=[
            CredentialDecision(
                name=d["name"],
                action=RiskAction(d["action"]),
                reason=d["reason"],
                duplicate_of=d.get("duplicate_of"),
                outcome=None if d.get("outcome") is None else Outcome(d["outcome"]),
                version=d.get("version"),
                error=d.get("error"),
            )
            for d in data.get("decisions") or ()
        ],
        still_valid=[
            StillValid(v["name"], int(v["version"]), v.get("error"))
            for v in data.get("still_valid") or ()
        ],
        sweep_error=data.get("sweep_error"),
    )


def event_row_from_json(e: dict[str, Any]) -> EventRow:
    """The event ``GET /v1/events`` shows (as ``event list --json``). Its decisions' rotation
    ids and times are not shown: None and the event's time."""
    created = _req_dt(e["created_at"])
    return EventRow(
        id=int(e["id"]),
        kind=e["kind"],
        severity=e["severity"],
        selector=dict(e.get("selector") or {}),
        detail=e.get("detail"),
        reporter=e["reporter"],
        created_at=created,
        decisions=[
            DecisionRow(
                credential=d["name"],
                action=d["action"],
                reason=d["reason"],
                duplicate_of=d.get("duplicate_of"),
                outcome=d.get("outcome"),
                rotation_id=None,
                version=d.get("version"),
                error=d.get("error"),
                created_at=created,
            )
            for d in e.get("decisions") or ()
        ],
    )
