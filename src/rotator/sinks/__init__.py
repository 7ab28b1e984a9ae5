"""Propagation sinks: after a rotation finishes, write the new CURRENT value where an
application reads it (a file today). A failed sink is retried and reported; it never
un-rotates the target, whose new value is already CURRENT.

A sink spec on the command line is ``KIND:KEY=VALUE,KEY=VALUE``, e.g.
``file:path=/etc/app/db.env,format=dotenv,key=DB_PASSWORD``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rotator.errors import InvalidInput

if TYPE_CHECKING:
    from rotator.sinks.file import FileSink, SinkRefused

KINDS = ("file",)


def parse_sink(spec: str, forbidden: Sequence[Path] = ()) -> dict[str, Any]:
    """Validate a ``KIND:KEY=VALUE,...`` spec; returns the stored form (``kind`` + settings).

    ``forbidden``: rotator's own files and folders (``ROTATOR_HOME``, the SQLite store); a sink
    whose path is or lies inside one of them (real paths compared) is InvalidInput."""
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in KINDS:
        raise InvalidInput(
            f"malformed --sink {spec!r}: expected KIND:KEY=VALUE,... with KIND one of "
            f"{', '.join(KINDS)}"
        )
    settings: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise InvalidInput(f"malformed --sink {spec!r}: {item!r} is not KEY=VALUE")
        settings[key.strip()] = value
    sink = load_sink({"kind": kind, **settings})
    inside = sink.inside(forbidden)
    if inside is not None:
        raise InvalidInput(
            f"--sink path {sink.path!r} is inside rotator's own {str(inside)!r}; "
            "a sink may not overwrite rotator's files"
        )
    return {"kind": kind, **sink.model_dump(exclude={"kind"})}


def load_sink(stored: dict[str, Any]) -> FileSink:
    """A sink object from its stored form; InvalidInput naming the problem."""
    if stored.get("kind") not in KINDS:
        raise InvalidInput(f"unknown sink kind {stored.get('kind')!r}")
    # Imported here, not at start-up: the file sink's pydantic model would cost every CLI
    # call its import, also those that never touch a sink.
    from pydantic import ValidationError

    from rotator.sinks.file import FileSink

    try:
        return FileSink.model_validate({k: v for k, v in stored.items() if k != "kind"})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "settings"
        msg = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
        raise InvalidInput(f"sink {stored.get('kind')!r}: {msg} {loc!r}") from None


def describe_sink(stored: dict[str, Any]) -> str:
    """A one-line, value-free description (for audit entries and listings)."""
    return load_sink(stored).describe()


def __getattr__(name: str) -> Any:
    # FileSink and SinkRefused stay importable from here without an import at start-up.
    if name in ("FileSink", "SinkRefused"):
        from rotator.sinks import file

        return getattr(file, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FileSink", "SinkRefused", "describe_sink", "load_sink", "parse_sink"]
