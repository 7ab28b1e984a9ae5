"""The ``http`` connector with every ``create`` recorded, for exactly-once tests.

``recording-http`` behaves exactly like ``http`` (its target records each set with the
credential and version: see api_server.py); in addition, each value it creates appends a line
``<pid> <credential>`` to the file named by its ``record`` setting (O_APPEND: lines from
several processes never mix), so a test can count the values made per credential and by
which process.
"""

from __future__ import annotations

import os
from typing import ClassVar

from rotator.connectors import base as cb
from rotator.connectors.http import HttpConfig, HttpConnector
from rotator.connectors.registry import register
from rotator.domain.secret import Secret


class RecordingHttpConfig(HttpConfig):
    record: str = ""


class RecordingHttpConnector(HttpConnector):
    kind: ClassVar[str] = "recording-http"
    config_model: ClassVar[type[cb.ConnectorConfig]] = RecordingHttpConfig

    async def create(self, req: cb.CreateRequest) -> Secret:
        value = await super().create(req)
        assert isinstance(req.config, RecordingHttpConfig)
        if req.config.record:
            fd = os.open(req.config.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, f"{os.getpid()} {req.credential}\n".encode())
            finally:
                os.close(fd)
        return value


def creates(path: str) -> list[tuple[int, str]]:
    """(pid, credential) of every value created so far."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [(int(p), c) for p, c in (line.split() for line in f if line.strip())]


def install() -> None:
    register(RecordingHttpConnector)
