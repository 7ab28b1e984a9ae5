"""A small server-sent events parser (the WHATWG event stream format), enough for /v1/watch."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Event:
    event: str
    data: str
    id: str | None


@dataclass
class Parser:
    """Fed one line at a time (without its line end); returns an event at each blank line
    that ends one. Comments (``:``) and unknown fields are skipped; the last id sticks."""

    event: str = ""
    data: list[str] = field(default_factory=list)
    last_id: str | None = None

    def feed(self, line: str) -> Event | None:
        if not line:
            out = None
            if self.data or self.event:
                out = Event(self.event or "message", "\n".join(self.data), self.last_id)
            self.event, self.data = "", []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None


def parse(lines: Iterable[str]) -> Iterator[Event]:
    """The events of a stream given line by line (see :class:`Parser`)."""
    parser = Parser()
    for line in lines:
        ev = parser.feed(line)
        if ev is not None:
            yield ev
