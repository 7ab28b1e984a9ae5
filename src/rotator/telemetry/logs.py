"""Structured logs (structlog) that never carry a value.

:func:`configure` is called once at CLI start: every record, from structlog or from the
stdlib ``logging.getLogger(...)`` calls, goes through structlog's ProcessorFormatter to one
JSON (or console) line on stderr. Redaction happens twice:

* before the message is formatted, the record's ``%``-arguments are scrubbed (on a copy of
  the record): a ``Secret`` or bytes becomes ``[redacted]``, a mapping keeps its keys but an
  entry whose key names a value becomes ``[redacted]`` (nested mappings, lists and tuples
  walked), a tuple or list of those likewise, and text gets the text rules below;
* :func:`redact`, last before rendering, drops what could be a value from every entry: an
  entry whose key names one (value, secret, password, token, passphrase, key) becomes
  ``[redacted]``, a ``Secret`` or bytes becomes ``[redacted]``, nested dicts, lists and
  tuples are walked, and every text (the formatted message, extra fields, the rendered
  exception and stack) gets the text rules.

The text rules (:func:`scrub_text`): anything that looks like an API token (``rtr_...``) is
cut out; a URL's password (``scheme://user:PASS@host`` -> ``scheme://user:[redacted]@host``,
the password running to the last ``@`` before whitespace or ``/``); and a ``key=value`` whose
key contains password, passwd, pwd, secret, passphrase or token (``password=...``,
``PGPASSWORD=...``, ``client_secret=...``) keeps its key, the value (quoted, or up to the next
whitespace, ``&``, ``,``, ``;`` or quote) becomes ``[redacted]``. A value in free text that
matches none of these (``ValueError(f"bad value {v}")``) is NOT caught: never put one in a
message or an exception.

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
# A URL's user info with a password: scheme://user:PASS@. The password runs (greedily) to
# the last "@" before whitespace or "/", so an unencoded "@" in it does not leave a tail.
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s/@:]*:)[^\s/]*@")
# key=value where the key names a secret (libpq conninfo, query strings, env dumps). A
# quoted value runs to its closing quote (backslash escapes allowed, as libpq's).
_KV_SECRET = re.compile(
    r"""(?i)([\w.\-]*(?:password|passwd|pwd|secret|passphrase|token)[\w.\-]*\s*=\s*)"""
    r"""(?:'(?:[^'\\]|\\.)*'?|"(?:[^"\\]|\\.)*"?|[^\s&,;'"]+)"""
)
# The entries structlog and logging fill in themselves: their keys are never a value's.
_OWN_KEYS = frozenset({"event", "level", "logger", "timestamp", "exception", "stack"})


def scrub_text(text: str) -> str:
    """``text`` with the text rules applied (see the module docstring)."""
    if "rtr_" in text:
        text = _TOKEN.sub(REDACTED, text)
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + "@", text)
    if "=" in text:
        text = _KV_SECRET.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def _scrub(value: Any) -> Any:
    if isinstance(value, Secret):
        return REDACTED
    if isinstance(value, str):
        return scrub_text(value)
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


def _scrub_arg(value: Any) -> Any:
    """One ``%``-argument, before formatting: what :func:`_scrub` would remove is removed,
    but anything else keeps its type (``%d`` of an int, ``%r`` of an object still work; an
    object's text is scrubbed after formatting, with the message)."""
    if isinstance(value, (Secret, str, bytes, bytearray, memoryview, Mapping)):
        return _scrub(value)
    if isinstance(value, tuple):
        return tuple(_scrub(v) for v in value)
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def scrub_args(args: Any) -> Any:
    """A log record's ``args`` (a tuple, or the one mapping of ``%(name)s`` formatting) with
    each argument scrubbed by the rules of the module docstring, its shape kept."""
    if isinstance(args, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and _VALUE_KEY.search(k) else _scrub_arg(v)
            for k, v in args.items()
        }
    if isinstance(args, tuple):
        return tuple(_scrub_arg(a) for a in args)
    return _scrub_arg(args)


def _scrub_positional_args(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog's loggers: their ``%``-arguments, scrubbed before they are formatted."""
    if event_dict.get("positional_args"):
        event_dict["positional_args"] = scrub_args(event_dict["positional_args"])
    return event_dict


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
_CACHED = frozenset({"message", "asctime", "exc_text"})


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
        # The message is formatted before any processor sees it: its arguments are scrubbed
        # first, on a copy (other handlers get the record as it was logged). The renderings
        # another handler's formatter cached on the record (message, asctime, exc_text) were
        # made from the raw arguments: dropped, or ExtraAdder would add them as fields.
        fields = {k: v for k, v in record.__dict__.items() if k not in _CACHED}
        if record.args:
            fields["args"] = scrub_args(record.args)
        return self._inner.format(logging.makeLogRecord(fields))


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
            _scrub_positional_args,
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
            # The exception and stack become text here, so redact's text rules reach them.
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
