"""A change of a credential's CURRENT version, as the watch feed reports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Change:
    """Version ``version`` of credential ``name`` became CURRENT at ``at`` (ISO 8601 UTC with
    ``Z``), by rotation ``rotation_id`` (None for a value stored by ``credential add`` or
    ``credential update``). ``cursor`` is the audit seq of the entry that recorded it: strictly
    increasing along a feed, so a consumer resumes after the last cursor it handled and misses
    nothing. Holds no value."""

    name: str
    version: int
    rotation_id: str | None
    at: str
    cursor: int

    def to_json(self) -> dict[str, Any]:
        """The SSE event's data (the cursor travels as the event id)."""
        return {
            "name": self.name,
            "version": self.version,
            "rotation_id": self.rotation_id,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, cursor: int, data: dict[str, Any]) -> Change:
        """The change of an event with id ``cursor`` and data ``data`` (as :meth:`to_json`);
        ValueError when a field is missing or of the wrong type."""
        name, version, rid, at = (
            data.get("name"),
            data.get("version"),
            data.get("rotation_id"),
            data.get("at"),
        )
        if not isinstance(name, str) or not isinstance(at, str):
            raise ValueError("a change needs a name and a time")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError("a change needs an integer version")
        if rid is not None and not isinstance(rid, str):
            raise ValueError("a change's rotation_id is a string or null")
        return cls(name=name, version=version, rotation_id=rid, at=at, cursor=cursor)
