"""The ``file`` sink: the CURRENT value written atomically (temp file, fsync, rename), mode
0600 by default, as ``raw`` bytes, a ``dotenv`` line or a ``json`` object."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from rotator.connectors._files import atomic_write, parse_mode
from rotator.domain.secret import Secret

_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class FileSink(BaseModel):
    """``path`` (absolute), ``format`` raw|dotenv|json, ``key`` (dotenv/json; default VALUE),
    ``mode`` (octal, default 0600)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    format: Literal["raw", "dotenv", "json"] = "raw"
    key: str = "VALUE"
    mode: str = "0600"

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
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
        parse_mode(v)
        return v

    def describe(self) -> str:
        return f"file {self.path} ({self.format})"

    def render(self, value: Secret) -> bytes:
        if self.format == "raw":
            return value.reveal()
        text = value.reveal_text()
        if self.format == "dotenv":
            escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            return f'{self.key}="{escaped}"\n'.encode()
        try:
            embedded = json.loads(text)
        except ValueError:
            embedded = text
        if not isinstance(embedded, dict):
            embedded = text
        return (json.dumps({self.key: embedded}, indent=2) + "\n").encode()

    def write(self, value: Secret) -> None:
        """Write the value; raises OSError (the engine retries and reports it)."""
        atomic_write(self.path, self.render(value), parse_mode(self.mode))
