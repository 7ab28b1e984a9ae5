"""The ``exec`` sink: a command of the operator's (a hook) publishes each new CURRENT value
wherever rotator has no sink for (a vendor CLI, a config management push, a reload).

Spec: ``exec:command=/abs/path[,args=...,timeout_s=N,input=json|raw]``. After a rotation's
finish the engine runs, once per write attempt::

    COMMAND [ARGS...] publish CREDENTIAL VERSION      (the value on stdin only)

through the ``exec`` connector's :func:`~rotator.connectors.exec.run_hook`, so everything it
promises holds here too: the minimal environment (``PATH`` and ``LANG`` only), ``/`` as the
working directory, a process group of its own killed (SIGKILL) and reaped at ``timeout_s``
(default 30), stdout and stderr discarded (never in a message, log line or audit entry).
``VERSION`` is the number of the version now CURRENT. Stdin is one JSON object
``{"operation": "publish", "credential", "version", "value"}`` (``input=json``, the default)
or the value's bytes alone (``input=raw``).

Exit status 0: written. 75 (``EX_TEMPFAIL``), death by a signal or the timeout:
SinkUnavailable, retried by the engine. Any other status, or a command that is missing or not
executable when a write starts: SinkError, not retried. Either way the rotation stays done.
``publish`` must be idempotent: a retry may repeat a publication that did happen.
"""

from __future__ import annotations

import json
import os
import shlex
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rotator.connectors import base as cb
from rotator.connectors.exec import ExecConfig, run_hook
from rotator.sinks.base import SinkError, SinkRequest, SinkUnavailable


class ExecSink(BaseModel):
    """Settings of an ``exec`` sink (see the module docstring). Validation messages never
    repeat a setting's value (the rule for every sink spec)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: str = Field(min_length=1, max_length=4096)
    args: str = Field(default="", max_length=4096)
    timeout_s: float = Field(default=30.0, gt=0, le=3600)
    input: Literal["json", "raw"] = "json"

    @field_validator("command")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if "\x00" in v or not os.path.isabs(v):
            raise ValueError("command must be an absolute path")
        return v

    @field_validator("args")
    @classmethod
    def _splits(cls, v: str) -> str:
        if "\x00" in v:
            raise ValueError("args must not hold a NUL character")
        try:
            shlex.split(v)
        except ValueError:  # an unclosed quote or a trailing backslash
            raise ValueError("args cannot be split into arguments like a POSIX shell") from None
        return v

    def describe(self) -> str:
        """One value-free line; :func:`from_description` reads it back."""
        return f"exec {self.command} ({self.input})"

    def references(self) -> frozenset[str]:
        """None: a hook gets no other credential's value."""
        return frozenset()

    @property
    def _hook(self) -> ExecConfig:
        # The fields run_hook reads, validated above. Built without the connector's own
        # validation: its rules between settings (mode, generator) concern rotations, not a
        # publication.
        return ExecConfig.model_construct(
            command=self.command, args=self.args, timeout_s=self.timeout_s, input=self.input
        )

    def _stdin(self, req: SinkRequest) -> bytes:
        if self.input == "raw":
            return req.value.reveal()
        try:
            text = req.value.reveal_text()
        except UnicodeDecodeError:
            raise SinkError(
                "the value is not UTF-8 text, which input=json cannot carry; use input=raw"
            ) from None
        doc = {
            "operation": "publish",
            "credential": req.credential,
            "version": req.version,
            "value": text,
        }
        return json.dumps(doc).encode()

    async def write(self, req: SinkRequest) -> None:
        """Run the hook once with ``publish``. Raises SinkUnavailable (exit 75, a signal, the
        timeout: the engine retries) or SinkError (missing or non-executable command, any
        other exit status); the messages name the status, never what the hook printed."""
        data = self._stdin(req)
        try:
            await run_hook(self._hook, "publish", req.credential, req.version, data)
        except cb.TransientError as exc:
            raise SinkUnavailable(str(exc)) from exc
        except cb.PermanentError as exc:
            raise SinkError(str(exc)) from exc


def from_description(text: str) -> dict[str, str]:
    """The stored form whose :meth:`ExecSink.describe` is ``text`` (``args`` and
    ``timeout_s`` are not described)."""
    _, _, rest = text.partition(" ")
    command, _, inner = rest.rpartition(" (")
    return {"kind": "exec", "command": command, "input": inner.removesuffix(")")}
