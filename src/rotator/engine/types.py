"""Engine vocabulary: triggers, priorities, requests and results."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Connection

# A check run inside the intent's transaction, before anything is written: None to go on, or
# why the rotation must not start (e.g. "its claim was taken over"). See RotationRequest.
Guard = Callable[["Connection", datetime], str | None]


class Trigger(enum.StrEnum):
    EMERGENCY = "emergency"
    RISK = "risk"
    USAGE = "usage"
    SCHEDULE = "schedule"
    MANUAL = "manual"
    GROUP = "group"
    ROLLOUT = "rollout"  # an item of a staggered rollout (rotator.scheduler.rollouts)


PRIORITY = {
    Trigger.EMERGENCY: 0,
    Trigger.RISK: 1,
    Trigger.USAGE: 2,
    Trigger.SCHEDULE: 3,
    Trigger.MANUAL: 4,
    Trigger.GROUP: 4,
    Trigger.ROLLOUT: 3,  # normal priority, like scheduled work
}


@dataclass(frozen=True, slots=True)
class RotationRequest:
    """Rotate one credential (by name, in a tenant). ``grace_s`` overrides the policy's grace;
    emergency rotations use 0 and revoke the old value before returning. ``interactive``: a
    person (or a client on their behalf) waits for this one rotation, so it is admitted ahead
    of queued batch work (see :attr:`rank`).

    ``guard``: the claim this request runs under (a scheduler's claim, a rollout item's). It is
    checked before the value is created and again inside the intent's transaction, which it may
    lock rows in; if it refuses, nothing is written and the result is SKIPPED. So a claimer
    that stalled past its lease, or lost its claim any other way, never starts the rotation
    another claimer now owns.

    ``requested_by``: the name of who asked for the rotation (a principal's name, or
    ``scheduler``), recorded in the rotation's signed ``rotation.create`` entry; None when
    unknown (e.g. a rotation resumed by recovery, whose create entry already holds it)."""

    name: str
    tenant: str = "default"
    trigger: Trigger = Trigger.MANUAL
    grace_s: int | None = None
    interactive: bool = False
    guard: Guard | None = field(default=None, compare=False)
    requested_by: str | None = None

    @property
    def priority(self) -> int:
        return PRIORITY[self.trigger]

    @property
    def rank(self) -> tuple[int, int]:
        """Admission order into the engine's limits, lowest first: emergencies, then
        interactive requests, then batch work by trigger priority."""
        if self.trigger is Trigger.EMERGENCY:
            return (0, 0)
        return (1, self.priority) if self.interactive else (2, self.priority)


class Outcome(enum.StrEnum):
    ROTATED = "rotated"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    SKIPPED = "skipped"  # not started: the request's guard refused it (nothing was written)


@dataclass(frozen=True, slots=True)
class RotationResult:
    name: str
    outcome: Outcome
    rotation_id: str | None = None
    version: int | None = None
    error: str | None = None
    joined: bool = False
    duration_s: float = 0.0
    warnings: tuple[str, ...] = ()  # e.g. a sink that could not be written

    def joined_as(self, name: str) -> RotationResult:
        """This result, reported to a request for ``name`` that joined the rotation."""
        return RotationResult(
            name,
            self.outcome,
            self.rotation_id,
            self.version,
            self.error,
            joined=True,
            duration_s=self.duration_s,
        )


@dataclass(frozen=True, slots=True)
class StillValid:
    """An old value that is still valid on its target after an emergency: its revocation
    failed (``error``, the connector's message) and stays queued for retry."""

    name: str
    version: int
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "error": self.error}


@dataclass
class BatchResult:
    """The contract's JSON: rotated, failed [{name, error}], rolled_back, skipped
    [{name, reason}] (not started: the request's guard refused it; not a failure),
    duration_s; an emergency adds still_valid [{name, version, error}] (see
    :class:`StillValid`); sweep_error when the revocation sweep after the rotations failed."""

    results: list[RotationResult] = field(default_factory=list)
    duration_s: float = 0.0
    still_valid: list[StillValid] | None = None  # None: not an emergency (not looked up)
    # Why the revocation sweep after the rotations did not run (the store failed then); the
    # revocations due stay queued. Not a failure of the batch: its rotations are reported.
    sweep_error: str | None = None

    @property
    def ok(self) -> bool:
        """Every rotation succeeded or was skipped (a guard refused it: another claimer owns
        it) and, after an emergency, no old value is still valid."""
        return (
            all(r.outcome in (Outcome.ROTATED, Outcome.SKIPPED) for r in self.results)
            and not self.still_valid
        )

    def to_json(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.still_valid is not None:
            extra["still_valid"] = [v.to_json() for v in self.still_valid]
        if self.sweep_error is not None:
            extra["sweep_error"] = self.sweep_error
        return {
            "rotated": [r.name for r in self.results if r.outcome is Outcome.ROTATED],
            "failed": [
                {"name": r.name, "error": r.error}
                for r in self.results
                if r.outcome not in (Outcome.ROTATED, Outcome.SKIPPED)
            ],
            "rolled_back": [r.name for r in self.results if r.outcome is Outcome.ROLLED_BACK],
            "skipped": [
                {"name": r.name, "reason": r.error}
                for r in self.results
                if r.outcome is Outcome.SKIPPED
            ],
            "duration_s": round(self.duration_s, 3),
            "warnings": [{"name": r.name, "warning": w} for r in self.results for w in r.warnings],
            **extra,
        }
