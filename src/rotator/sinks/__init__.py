"""Propagation sinks: after a rotation finishes, write the new CURRENT value where an
application reads it (a file, an OpenBao/Vault KV v2 secret). A failed sink is retried and
reported; it never un-rotates the target, whose new value is already CURRENT.

A sink spec on the command line is ``KIND:KEY=VALUE,KEY=VALUE``, e.g.
``file:path=/etc/app/db.env,format=dotenv,key=DB_PASSWORD`` or
``openbao:addr=https://bao:8200,path=app/db,key=password,token=bao/token`` or
``exec:command=/usr/local/lib/hooks/publish.sh,input=raw``. Messages about
a spec never repeat its values (a pasted token must not reach a terminal or a log).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rotator.errors import InvalidInput

if TYPE_CHECKING:
    from rotator.sinks.exec import ExecSink
    from rotator.sinks.file import FileSink, SinkRefused
    from rotator.sinks.openbao import OpenBaoSink

KINDS = ("file", "openbao", "exec")
_WORD = re.compile(r"[a-z0-9_-]{1,20}")  # a kind shown back in a message: never a pasted value


def parse_sink(spec: str, forbidden: Sequence[Path] = ()) -> dict[str, Any]:
    """Validate a ``KIND:KEY=VALUE,...`` spec; returns the stored form (``kind`` + settings).

    ``forbidden``: rotator's own files and folders (``ROTATOR_HOME``, the SQLite store); a sink
    whose path is or lies inside one of them (real paths compared) is InvalidInput."""
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in KINDS:
        shown = f" {kind!r}" if sep and _WORD.fullmatch(kind) else ""
        raise InvalidInput(
            f"malformed --sink{shown}: expected KIND:KEY=VALUE,... with KIND one of "
            f"{', '.join(KINDS)}"
        )
    settings: dict[str, str] = {}
    for n, item in enumerate(filter(None, rest.split(",")), 1):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise InvalidInput(f"malformed --sink {kind}: setting {n} is not KEY=VALUE")
        settings[key.strip()] = value
    sink = load_sink({"kind": kind, **settings})
    from rotator.sinks.file import FileSink  # imported by load_sink already

    # A sink that sends to a host says whether it may (OpenBao: ROTATOR_HTTP_ALLOW_HOSTS,
    # http:// only on loopback); at add/update, not at load: a stored sink always loads.
    refusal = getattr(sink, "host_refusal", lambda: None)()
    if refusal is not None:
        raise InvalidInput(f"sink {kind!r}: {refusal}")
    if isinstance(sink, FileSink) and (inside := sink.inside(forbidden)) is not None:
        raise InvalidInput(
            f"--sink path {sink.path!r} is inside rotator's own {str(inside)!r}; "
            "a sink may not overwrite rotator's files"
        )
    return {"kind": kind, **sink.model_dump(exclude={"kind"}, exclude_none=True)}


def load_sink(stored: dict[str, Any]) -> FileSink | OpenBaoSink | ExecSink:
    """A sink object from its stored form; InvalidInput naming the problem (never a value)."""
    kind = stored.get("kind")
    if kind not in KINDS:
        raise InvalidInput(f"unknown sink kind {str(kind)[:40]!r}")
    # Imported here, not at start-up: the sinks' pydantic models (and httpx) would cost every
    # CLI call their import, also those that never touch a sink.
    from pydantic import ValidationError

    model: type[FileSink] | type[OpenBaoSink] | type[ExecSink]
    if kind == "file":
        from rotator.sinks.file import FileSink as model
    elif kind == "exec":
        from rotator.sinks.exec import ExecSink as model
    else:
        from rotator.sinks.openbao import OpenBaoSink as model
    try:
        return model.model_validate({k: v for k, v in stored.items() if k != "kind"})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "settings"
        msg = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
        msg = msg.removeprefix("Value error, ")
        raise InvalidInput(f"sink {kind!r}: {msg} {loc!r}") from None


def describe_sink(stored: dict[str, Any]) -> str:
    """A one-line, value-free description (for audit entries and listings)."""
    return load_sink(stored).describe()


def sink_from_description(text: str) -> dict[str, Any]:
    """A stored form that :func:`describe_sink` describes as ``text`` (for views read back)."""
    kind, _, rest = text.partition(" ")
    if kind == "openbao":
        from rotator.sinks.openbao import from_description

        return from_description(text)
    if kind == "exec":
        from rotator.sinks.exec import from_description as exec_from_description

        return exec_from_description(text)
    # "file PATH (FORMAT)"
    path, _, fmt = rest.rpartition(" (")
    return {"kind": kind, "path": path, "format": fmt.removesuffix(")")}


def sink_references(stored: dict[str, Any]) -> frozenset[str]:
    """Names of the credentials a sink reads when it writes (an OpenBao token or secret_id;
    none for an exec hook)."""
    return load_sink(stored).references()


def sink_host_effect(stored: dict[str, Any]) -> str | None:
    """What a sink makes rotator itself do on its own host (a file written, a command run),
    or None (an OpenBao write goes over the network). Such sinks act with rotator's OS
    privileges, so only the store's owner may add one (the service checks)."""
    kind = stored.get("kind")
    if kind == "file":
        return f"writes {stored.get('path')}"
    if kind == "exec":
        return f"runs {stored.get('command')}"
    return None


def __getattr__(name: str) -> Any:
    # FileSink and SinkRefused stay importable from here without an import at start-up.
    if name in ("FileSink", "SinkRefused"):
        from rotator.sinks import file

        return getattr(file, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FileSink",
    "SinkRefused",
    "describe_sink",
    "load_sink",
    "parse_sink",
    "sink_from_description",
    "sink_host_effect",
    "sink_references",
]
