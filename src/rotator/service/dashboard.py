"""Read use cases the dashboard needs beyond the REST ones: rotations per hour, and each
credential's last rotation outcome. Permissions are the service's, as everywhere: the
history needs ROTATION_READ tenant-wide; the overview lists exactly what
``list_credentials`` lists (CREDENTIAL_READ per credential). Never a value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from rotator.domain.model import Credential
from rotator.domain.principal import LOCAL_PRINCIPAL, Action, Principal
from rotator.errors import InvalidInput
from rotator.service.credentials import RotatorService
from rotator.store import history

MAX_HISTORY_HOURS = 24 * 7


@dataclass(frozen=True, slots=True)
class HourCount:
    """Rotations of one hour (``start`` .. ``start`` + 1 h, UTC) by outcome."""

    start: datetime
    succeeded: int
    failed: int  # failed or rolled back


@dataclass(frozen=True, slots=True)
class LastOutcome:
    """How a credential's newest finished rotation ended (``ok`` false: failed or rolled
    back, ``error`` its one-line reason, never a value; None for a principal without
    ROTATION_READ on the credential)."""

    ok: bool
    step: str
    finished_at: datetime
    error: str | None


def _hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


async def rotation_history(
    svc: RotatorService, hours: int = 24, principal: Principal = LOCAL_PRINCIPAL
) -> list[HourCount]:
    """Finished rotations of the principal's tenant per hour, for the last ``hours`` hours
    (1..168) ending with the current hour, oldest first, every hour present (zeros too).
    Needs ROTATION_READ tenant-wide (PermissionDenied, audited); InvalidInput for a bad
    ``hours``."""
    if not 1 <= hours <= MAX_HISTORY_HOURS:
        raise InvalidInput(f"hours must be between 1 and {MAX_HISTORY_HOURS}")
    await svc.authorize(principal, Action.ROTATION_READ)
    first = _hour(svc.clock()) - timedelta(hours=hours - 1)
    counts = {first + timedelta(hours=i): [0, 0] for i in range(hours)}
    tenant = await svc._existing_tenant(principal)
    if tenant is not None:
        rows = await svc._read(partial(history.finished_since, tenant_id=tenant.id, since=first))
        for at, step in rows:
            slot = counts.get(_hour(at))
            if slot is not None:
                slot[0 if step == "finished" else 1] += 1
    return [HourCount(start, ok, bad) for start, (ok, bad) in counts.items()]


async def credential_overview(
    svc: RotatorService,
    *,
    tags: Mapping[str, str] | None = None,
    principal: Principal = LOCAL_PRINCIPAL,
) -> list[tuple[Credential, LastOutcome | None]]:
    """The credentials ``list_credentials`` gives the principal (same permission, same
    order), each with its newest finished rotation's outcome (None: never rotated)."""
    creds = await svc.list_credentials(tags=tags, principal=principal)
    last = await svc._read(partial(history.last_finished, credential_ids=[c.id for c in creds]))
    return [(c, _outcome(last.get(c.id), c, principal)) for c in creds]


def _outcome(
    f: history.Finished | None, cred: Credential, principal: Principal
) -> LastOutcome | None:
    """The outcome of ``f``; its error text only for a principal that may read rotations of
    ``cred`` (the API shows a rotation's error only to ROTATION_READ: it names target URLs and
    raw connector errors)."""
    if f is None:
        return None
    error = _line(f.error) if principal.may(Action.ROTATION_READ, cred.name) else None
    return LastOutcome(f.step == "finished", f.step, f.finished_at, error)


async def last_outcome(
    svc: RotatorService, cred: Credential, principal: Principal = LOCAL_PRINCIPAL
) -> LastOutcome | None:
    """The newest finished rotation's outcome of ``cred`` (as :func:`credential_overview`);
    needs CREDENTIAL_READ on it."""
    await svc.authorize(principal, Action.CREDENTIAL_READ, cred.name)
    last = await svc._read(partial(history.last_finished, credential_ids=[cred.id]))
    return _outcome(last.get(cred.id), cred, principal)


def _line(text: str | None) -> str | None:
    return None if text is None else text.splitlines()[0][:300] if text.strip() else None
