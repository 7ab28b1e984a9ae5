"""Policy defaults by tag and tenant, merged with a credential's own settings. Pure.

A *partial* policy is the JSON of :meth:`RotationPolicy.to_json` restricted to the fields it
sets: a key that is absent is "not set" (inherit), a key present with ``null`` is set to
"none" (``--every`` sets ``cron: null`` so an inherited cron does not clash with it). The
merge walks the dataclass fields of RotationPolicy, so a field added there is inherited
with no code here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rotator.domain.policy import RotationPolicy
from rotator.errors import PolicyError

Partial = Mapping[str, Any]
OWN = "credential"
DEFAULT = "default"


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(RotationPolicy))


def check_partial(partial: Partial) -> RotationPolicy:
    """PolicyError unless ``partial`` names only policy fields and is valid on its own (its
    unset fields at their defaults). Returns that policy."""
    unknown = sorted(set(partial) - set(field_names()))
    if unknown:
        raise PolicyError(f"unknown policy field {unknown[0]!r}")
    return RotationPolicy.from_json(dict(partial))


@dataclass(frozen=True, slots=True)
class Resolved:
    """The effective policy of a credential and, per field, where its value came from:
    ``credential``, ``tag K=V`` (``tag K=V over tag K2=V2`` when matching tag defaults
    disagree), ``tenant T`` or ``default``."""

    policy: RotationPolicy
    sources: Mapping[str, str]


def resolve(
    own: Partial,
    *,
    tags: Mapping[str, str],
    tag_defaults: Mapping[tuple[str, str], Partial],
    tenant: str,
    tenant_default: Partial | None,
) -> Resolved:
    """Per field: the credential's own setting, else a default of a tag the credential
    carries, else the tenant default, else the built-in default. Matching tag defaults are
    taken in order of (key, value); the first that sets a field wins.

    Raises PolicyError (naming the fields' sources) when the merged policy is not valid.
    """
    layers: list[tuple[str, Partial]] = [(OWN, own)]
    layers += [
        (f"tag {k}={v}", tag_defaults[(k, v)]) for k, v in sorted(tag_defaults) if tags.get(k) == v
    ]
    if tenant_default is not None:
        layers.append((f"tenant {tenant}", tenant_default))
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in field_names():
        hits = [(src, layer[name]) for src, layer in layers if name in layer]
        if not hits:
            sources[name] = DEFAULT
            continue
        src, value = hits[0]
        merged[name] = value
        if src.startswith("tag "):
            overruled = [s for s, v in hits[1:] if s.startswith("tag ") and v != value]
            if overruled:
                src = f"{src} over {', '.join(overruled)}"
        sources[name] = src
    try:
        policy = RotationPolicy.from_json(merged)
    except PolicyError as exc:
        used = sorted({s for s in sources.values() if s not in (OWN, DEFAULT)})
        where = f" (with defaults from {', '.join(used)})" if used else ""
        raise PolicyError(f"{exc}{where}") from None
    return Resolved(policy, sources)


def own_partial(stored_own: Partial | None, stored_policy: Partial) -> dict[str, Any]:
    """A credential's own partial policy: ``stored_own``, or for a row written before
    policy defaults existed (no own partial) the fields of its stored policy that differ
    from the built-in default. A field at its built-in default cannot be told from one never
    set, so it is inherited (as in a partial of options given); an own ``every`` or ``cron``
    still sets the other schedule fields to none, as ``PolicyInput.partial`` does."""
    if stored_own is not None:
        return dict(stored_own)
    builtin = RotationPolicy().to_json()
    own = {k: v for k, v in stored_policy.items() if k in builtin and v != builtin[k]}
    if own.get("every") is not None:
        own.update(cron=None, window=None)
    elif own.get("cron") is not None:
        own.update(every=None, window=own.get("window"))
    return own
