"""Plain-data views of domain objects, shared by every interface (CLI --json, REST, MCP)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from rotator.domain.model import Credential, Version
from rotator.domain.policy import RotationPolicy, format_duration
from rotator.sinks import describe_sink


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
