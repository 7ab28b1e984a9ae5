"""The ``file`` sink: the CURRENT value written atomically (temp file, fsync, rename), mode
0600 by default, as ``raw`` bytes, a ``dotenv`` line or a ``json`` object.

What it refuses, so a sink cannot be turned against rotator or the reader of the file:

- a path inside rotator's own files (``ROTATOR_HOME``, the SQLite store): compared as real
  paths (symlinks resolved), when the sink is added or updated and again at every write, so a
  symlink planted later is caught too;
- a mode that lets the group or others write the file (and anything but octal permission bits);
- in ``dotenv`` format, a value that is not UTF-8 text or holds a NUL byte.

``dotenv`` output is one POSIX-shell single-quoted assignment, ``KEY='value'`` with each ``'``
written as ``'\\''``: nothing inside single quotes is expanded, so ``. file`` (``source``)
yields the value byte for byte and never runs anything (``$``, backticks, ``$(...)``, CR and
newlines included; a newline stays inside the quotes).
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from rotator.connectors._files import atomic_write, parse_mode
from rotator.domain.secret import Secret

_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A secret file may be readable by its group (the application's), never by everyone, and
# writable by its owner only.
REFUSED_MODE_BITS = 0o027


class SinkRefused(OSError):
    """A sink write refused before anything was written (an OSError, so the engine reports
    it like any failed write: a warning and a ``sink.failed`` audit entry)."""


class FileSink(BaseModel):
    """``path`` (absolute), ``format`` raw|dotenv|json, ``key`` (dotenv/json; default VALUE),
    ``mode`` (octal, default 0600; never writable by group or others)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    format: Literal["raw", "dotenv", "json"] = "raw"
    key: str = "VALUE"
    mode: str = "0600"

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if "\x00" in v:
            raise ValueError("path must not hold a NUL character")
        if not Path(v).is_absolute():
            raise ValueError("path must be absolute")
        return v

    @field_validator("key")
    @classmethod
    def _env_key(cls, v: str) -> str:
        if not _ENV_KEY.fullmatch(v):
            raise ValueError("key must look like an environment variable name")
        return v

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        if parse_mode(v) & REFUSED_MODE_BITS:
            raise ValueError(
                f"mode {v} lets others read or the group or others write the file; "
                "use e.g. 0600 or 0640"
            )
        return v

    def describe(self) -> str:
        return f"file {self.path} ({self.format})"

    def references(self) -> frozenset[str]:
        """A file sink reads no other credential."""
        return frozenset()

    def inside(self, forbidden: Sequence[Path]) -> Path | None:
        """The first of ``forbidden`` (directories or files) that the sink's path is, or lies
        inside, comparing real paths (symlinks resolved, also those of the path's directory
        and of the path itself); None when it is outside all of them."""
        target = Path(self.path)
        real_parent = Path(os.path.realpath(target.parent))
        candidates = {real_parent / target.name, Path(os.path.realpath(target))}
        for root in forbidden:
            real_root = Path(os.path.realpath(root))
            if any(c == real_root or real_root in c.parents for c in candidates):
                return root
        return None

    def render(self, value: Secret) -> bytes:
        """The file's bytes. Raises SinkRefused for a value the format cannot hold."""
        if self.format == "raw":
            return value.reveal()
        try:
            text = value.reveal_text()
        except UnicodeDecodeError:
            raise SinkRefused(
                errno.EINVAL, f"the value is not UTF-8 text; format {self.format} needs text"
            ) from None
        if self.format == "dotenv":
            if "\x00" in text:
                raise SinkRefused(errno.EINVAL, "the value holds a NUL byte; dotenv cannot")
            quoted = "'" + text.replace("'", "'\\''") + "'"
            return f"{self.key}={quoted}\n".encode()
        try:
            embedded = json.loads(text)
        except ValueError:
            embedded = text
        if not isinstance(embedded, dict):
            embedded = text
        return (json.dumps({self.key: embedded}, indent=2) + "\n").encode()

    def write(self, value: Secret, forbidden: Sequence[Path] = ()) -> None:
        """Write the value; raises OSError (the engine retries and reports it), SinkRefused
        when the path now lies inside one of ``forbidden`` (rotator's own files) or the
        value cannot be rendered. Writes into the real directory checked, not through a
        symlink that could change after the check."""
        inside = self.inside(forbidden)
        if inside is not None:
            raise SinkRefused(errno.EPERM, f"refused: the path is inside rotator's {inside}")
        data = self.render(value)
        real = Path(os.path.realpath(Path(self.path).parent)) / Path(self.path).name
        atomic_write(real, data, parse_mode(self.mode))
