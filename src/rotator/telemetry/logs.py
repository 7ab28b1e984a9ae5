"""Structured logs (structlog) that never carry a value.

:func:`configure` is called once at CLI start: every record, from structlog or from the
stdlib ``logging.getLogger(...)`` calls, goes through structlog's ProcessorFormatter to one
JSON (or console) line on stderr, through :func:`redact` last before rendering. ``redact``
drops what could be a value: an entry whose key names one (value, secret, password, token,
passphrase, key) becomes ``[redacted]``, a ``Secret`` becomes ``[redacted]``, and anything that
looks like an API token (``rtr_...``) is cut out of any text, the message included; nested
dicts, lists and tuples are walked.

Only rotator's own loggers follow ``--log-level`` down to debug: third-party libraries stay at
warning and above (an HTTP/2 library's debug log prints the headers it decodes).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

from rotator.domain.secret import Secret

REDACTED = "[redacted]"
LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("json", "console")

# Keys whose entries could hold a value, wherever the word appears in the key (api_key,
# db_password, token_id: an id is no value, but a key is no place to decide that).
_VALUE_KEY = re.compile(r"value|secret|password|token|passphrase|key", re.IGNORECASE)
# An API token (rtr_<id>_<secret>), or anything that starts like one.
_TOKEN = re.compile(r"rtr_[A-Za-z0-9_\-]*")
# The entries structlog and logging fill in themselves: their keys are never a value's.
_OWN_KEYS = frozenset({"event", "level", "logger", "timestamp", "exception", "stack"})


def _scrub(value: Any) -> Any:
    if isinstance(value, Secret):
        return REDACTED
    if isinstance(value, str):
        return _TOKEN.sub(REDACTED, value) if "rtr_" in value else value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return REDACTED  # raw bytes in a log line are a value more often than not
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and _VALUE_KEY.search(k) else _scrub(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_scrub(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    # Anything else is rendered by repr/str later: check that text now.
    return _scrub(str(value))


def redact(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """The structlog processor (see the module docstring). Returns a new dict; keys kept."""
    out: dict[str, Any] = {}
    for k, v in event_dict.items():
        if k not in _OWN_KEYS and _VALUE_KEY.search(str(k)):
            out[k] = REDACTED
        else:
            out[k] = _scrub(v)
    return out


def default_format(stream: TextIO) -> str:
    """``console`` on a terminal, ``json`` otherwise."""
    try:
        return "console" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


_HANDLER_NAME = "rotator.telemetry"


class _Formatter(logging.Formatter):
    """structlog's ProcessorFormatter, built at the first record: importing structlog costs
    a CLI call ~0.1 s of start-up, and most calls log nothing."""

    def __init__(self, fmt: str) -> None:
        super().__init__()
        self._kind = fmt
        self._inner: logging.Formatter | None = None

    def format(self, record: logging.LogRecord) -> str:
        if self._inner is None:
            self._inner = _processor_formatter(self._kind)
        return self._inner.format(record)


def _processor_formatter(fmt: str) -> logging.Formatter:
    import structlog

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    # structlog's own loggers (structlog.stdlib.get_logger) end in the same handler.
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact,  # last before rendering: nothing is added after it
            renderer,
        ],
    )


def configure(level: str = "warning", fmt: str | None = None, stream: TextIO | None = None) -> None:
    """Send every log record to ``stream`` (default stderr) as one structured line, redacted
    (see the module docstring). ``level``: one of LEVELS, for rotator's loggers; ``fmt``: json
    or console (default: :func:`default_format`). Calling it again replaces the handler it
    installed before. ValueError for an unknown level or format. Rotator's code logs through
    ``logging.getLogger(...)``; structlog is configured (and imported) at the first record."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}")
    stream = sys.stderr if stream is None else stream
    fmt = default_format(stream) if fmt is None else fmt
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(_Formatter(fmt))
    reset()
    root, ours = logging.getLogger(), logging.getLogger("rotator")
    _saved.append((root.level, ours.level))
    root.addHandler(handler)
    threshold = getattr(logging, level.upper())
    root.setLevel(max(threshold, logging.WARNING))
    ours.setLevel(threshold)


_saved: list[tuple[int, int]] = []


def reset() -> None:
    """Undo :func:`configure`: its handler removed, the levels it changed restored. For
    callers that run the CLI in-process (tests), so one call's logging leaks into nothing
    else. Harmless when nothing is configured."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    if _saved:
        root_level, ours_level = _saved.pop()
        root.setLevel(root_level)
        logging.getLogger("rotator").setLevel(ours_level)
