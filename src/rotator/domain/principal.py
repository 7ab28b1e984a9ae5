"""Who calls a use case. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass

from rotator.domain.model import DEFAULT_TENANT


@dataclass(frozen=True, slots=True)
class Principal:
    """Who calls: a name and the tenant it acts in. Local CLI use acts as ``local`` in the
    default tenant; the engine acts as ``engine`` in the tenant of the credential it rotates."""

    name: str = "local"
    tenant: str = DEFAULT_TENANT


LOCAL_PRINCIPAL = Principal()
