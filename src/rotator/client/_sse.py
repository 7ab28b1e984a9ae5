"""A small server-sent events parser (the WHATWG event stream format), enough for /v1/watch."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    event: str
    data: str
    id: str | None


def parse(lines: Iterable[str]) -> Iterator[Event]:
    """The events of a stream given line by line (without line ends). Comments (``:``) and
    unknown fields are skipped; an event is dispatched at a blank line."""
    event, last_id = "", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data or event:
                yield Event(event or "message", "\n".join(data), last_id)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id" and "\0" not in value:
            last_id = value
