"""Risk rules: what a reported risk event does to a credential. Pure: ``now`` is an argument.

A credential's rules map a severity to an action (``--on-risk high=rotate,critical=emergency``).
Severities the rules leave out, and credentials without rules, use :data:`DEFAULT_RULES`:

    low -> notify, medium -> notify, high -> rotate, critical -> emergency

``notify`` records the event and the decision in the audit and does nothing else (webhooks
come later); ``rotate`` is a normal rotation now (grace as the policy says); ``emergency``
is ``rotate --emergency`` (highest priority, grace 0, old value revoked at once).

:func:`decide` then applies, per credential, in this order:

1. **De-duplication.** An event of the same kind for the same credential already decided
   within the cooldown is the same finding reported again: it is audited and does nothing,
   unless it asks for more than that earlier decision achieved (an escalation, e.g. the same
   kind reported ``medium`` then ``critical``, or an earlier rotation that failed).
2. **Cooldown.** Within ``cooldown`` of the last risk rotation that succeeded, a ``rotate``
   only notifies: the value was just replaced, another one buys nothing. An ``emergency`` is
   never held back by a cooldown: it revokes every old value at once, which a normal
   rotation in the cooldown did not do.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType

from rotator.domain.policy import format_duration
from rotator.errors import PolicyError


class Severity(enum.StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class RiskAction(enum.StrEnum):
    NOTIFY = "notify"
    ROTATE = "rotate"
    EMERGENCY = "emergency"

    @property
    def strength(self) -> int:
        """notify < rotate < emergency: an escalation asks for a stronger action."""
        return _STRENGTH[self]


_STRENGTH = {RiskAction.NOTIFY: 0, RiskAction.ROTATE: 1, RiskAction.EMERGENCY: 2}

RiskRules = Mapping[Severity, RiskAction]

DEFAULT_RULES: RiskRules = MappingProxyType(
    {
        Severity.LOW: RiskAction.NOTIFY,
        Severity.MEDIUM: RiskAction.NOTIFY,
        Severity.HIGH: RiskAction.ROTATE,
        Severity.CRITICAL: RiskAction.EMERGENCY,
    }
)
DEFAULT_COOLDOWN = timedelta(hours=1)

_ITEM = re.compile(r"\s*([a-z]+)\s*=\s*([a-z]+)\s*")
_MAX_RULES_TEXT = 200


def parse_severity(text: str) -> Severity:
    """``low|medium|high|critical`` (any case); PolicyError naming the choices otherwise."""
    try:
        return Severity(text.strip().lower())
    except ValueError:
        raise PolicyError(
            f"unknown severity {text[:20]!r}: expected low, medium, high or critical"
        ) from None


def parse_risk_rules(text: str) -> dict[Severity, RiskAction]:
    """``high=rotate,critical=emergency`` -> {HIGH: ROTATE, CRITICAL: EMERGENCY}.

    Raises PolicyError (one line, naming the bad item) for an empty text, an unknown severity
    or action, or a severity given twice."""
    if len(text) > _MAX_RULES_TEXT:
        raise PolicyError(f"--on-risk is longer than {_MAX_RULES_TEXT} characters")
    rules: dict[Severity, RiskAction] = {}
    items = text.split(",")
    if not text.strip():
        raise PolicyError("--on-risk is empty: expected e.g. high=rotate,critical=emergency")
    for item in items:
        m = _ITEM.fullmatch(item.lower())
        if m is None:
            raise PolicyError(
                f"malformed --on-risk item {item.strip()[:40]!r}: expected SEVERITY=ACTION, "
                "e.g. high=rotate"
            )
        sev_text, act_text = m.groups()
        sev = parse_severity(sev_text)
        try:
            act = RiskAction(act_text)
        except ValueError:
            raise PolicyError(
                f"unknown --on-risk action {act_text[:20]!r}: expected rotate, emergency or notify"
            ) from None
        if sev in rules:
            raise PolicyError(f"--on-risk gives severity {sev.value!r} twice")
        rules[sev] = act
    return rules


def format_risk_rules(rules: RiskRules) -> str:
    """Canonical text of ``rules`` (severities in order), the inverse of parse_risk_rules."""
    return ",".join(f"{s.value}={rules[s].value}" for s in Severity if s in rules)


def action_for(rules: RiskRules | None, severity: Severity) -> RiskAction:
    """The rule for ``severity``: the credential's own, else :data:`DEFAULT_RULES`."""
    if rules is not None and severity in rules:
        return rules[severity]
    return DEFAULT_RULES[severity]


@dataclass(frozen=True, slots=True)
class PriorDecision:
    """An earlier decision for the same credential and kind, within the cooldown.

    ``achieved``: what it did in effect: its action if that succeeded, ``notify`` if it only
    notified or its rotation failed (so a repeat may try again)."""

    event_id: int
    achieved: RiskAction


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do for one credential, and why (audited and printed as is)."""

    action: RiskAction
    reason: str
    duplicate_of: int | None = None  # the event this one repeats (then action is notify)


def decide(
    rules: RiskRules | None,
    severity: Severity,
    *,
    now: datetime,
    last_risk_action_at: datetime | None,
    cooldown: timedelta,
    duplicate_of: PriorDecision | None,
) -> Decision:
    """The decision for one credential (see the module docstring for the order of checks).

    ``last_risk_action_at``: when the credential's last risk-triggered rotation (rotate or
    emergency) succeeded, or None. ``duplicate_of``: the strongest earlier decision for the
    same kind and credential within ``cooldown``, or None. Never raises."""
    wanted = action_for(rules, severity)
    source = "rule" if rules is not None and severity in rules else "default rule"
    why = f"{source} {severity.value}={wanted.value}"
    if duplicate_of is not None and wanted.strength <= duplicate_of.achieved.strength:
        return Decision(
            RiskAction.NOTIFY,
            f"duplicate of event {duplicate_of.event_id} (same kind within the cooldown); {why}",
            duplicate_of=duplicate_of.event_id,
        )
    if (
        wanted is RiskAction.ROTATE
        and last_risk_action_at is not None
        and now - last_risk_action_at < cooldown
    ):
        return Decision(
            RiskAction.NOTIFY,
            f"cooldown: rotated for a risk at {last_risk_action_at.isoformat(timespec='seconds')},"
            f" less than {format_duration(cooldown)} ago; {why}",
        )
    return Decision(wanted, why)
