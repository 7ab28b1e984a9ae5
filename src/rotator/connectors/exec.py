"""The ``exec`` connector: a command of the operator's (a hook) makes values real on any target.

For targets no built-in connector knows: rotator runs the configured ``command`` for each step
and the hook does the work (calls a vendor CLI, edits a config file and reloads a daemon...).

The call, for every operation::

    COMMAND [ARGS...] OPERATION CREDENTIAL VERSION      (value on stdin, nothing secret in argv)

- ``OPERATION`` is one of ``set``, ``test``, ``finish``, ``revoke``, ``rollback``, ``verify``
  (``credential add --verify``) and, with ``generator=hook``, ``generate``. A hook exits 0 for an
  operation it has nothing to do for (and for one it does not know: later versions may add
  operations), so a hook that only handles ``set`` and ``test`` is fine.
- ``CREDENTIAL`` is the credential's name, ``VERSION`` the number of the version concerned
  (0 for ``verify``, which concerns no stored version).
- The value travels on stdin only, never in the arguments (any local user can read a
  process's arguments) nor in the environment. With ``input=json`` (default) stdin is one JSON
  object ``{"operation", "credential", "version", "value", "previous"}``, ``value`` and
  ``previous`` being strings or null; with ``input=raw`` stdin is the bytes of ``value`` alone
  (nothing else; a value need not be text then; ``mode=dual`` only: a single-mode rollback
  needs ``previous``, which raw stdin cannot carry). Which value each operation gets:

  ==========  ==========================  =================================================
  operation   ``value``                   ``previous``
  ==========  ==========================  =================================================
  set         the new value               the value in use (null on a first rotation)
  test        the new value               null
  finish      the new CURRENT value       the value now PREVIOUS (null on a first value)
  revoke      the old value to remove     null
  rollback    the new value to undo       the value in use, which must stay valid
  verify      the value being added       null (value null when none is given)
  generate    null                        null
  ==========  ==========================  =================================================

- The environment is minimal: ``PATH`` (a fixed system path) and ``LANG=C.UTF-8``; nothing of
  rotator's (no ``ROTATOR_*`` variable, no passphrase, no database URL). The working directory
  is ``/``; the hook runs in its own process group (session).
- Exit status: 0 success; 75 (``EX_TEMPFAIL``) a temporary failure, retried with backoff;
  death by a signal is temporary too; any other status is a permanent failure (a rotation
  whose ``set`` or ``test`` fails that way is rolled back).
- ``timeout_s`` (default 30) bounds each call: when it runs out the whole process group is
  killed (SIGKILL) and reaped, and the call is a temporary failure. The engine's own step
  timeout bounds it too; a call the engine cuts kills the group the same way.
- The hook's output is never read into a message, a log line or the audit: its stderr goes
  nowhere (``/dev/null``), and so does its stdout, except for ``generate``, whose stdout IS the
  new value (at most 64 KiB; one trailing newline is dropped) and is never shown either.
  Errors say the operation and the exit status or the timeout, nothing the hook printed.
- Each operation must be idempotent (called again for the same request it must succeed and
  change nothing more): the engine retries and resumes steps.

Strategies (``mode``): rotator cannot see what a hook does, so the operator says what it
promises. ``single`` (default): ``set`` replaces the value; the old one stops working at once
(a short window; not zero-downtime). ``dual``: ``set`` adds the new value beside the old one,
which keeps working until ``revoke`` removes it after the grace (``rollback`` removes the new
one). ``alternating`` is not offered: rotator's alternating strategy rests on the connector
knowing the two accounts and which of them a value belongs to, which a generated password does
not say; a hook that alternates accounts itself promises ``dual`` to rotator.

Values: by default rotator makes a random password (``password_length``, the alphabet of the
other connectors); ``generator=hook`` asks the hook (``generate``) instead, for values only the
target can make (an API key issued by a vendor).

The command must be an absolute path; it must exist and be executable when a call is made,
and ``credential add --verify`` checks that (one line naming the path) before running the
hook's own ``verify``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import secrets
import shlex
import signal
import stat
import string
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from rotator.connectors import base as cb
from rotator.domain.secret import Secret

PASSWORD_ALPHABET = string.ascii_letters + string.digits + "-_"
EX_TEMPFAIL = 75  # sysexits.h: "temporary failure; user is invited to retry"
MAX_VALUE_BYTES = 64 * 1024  # the most a ``generate`` call may print
# The hook's whole environment: nothing of rotator's own (its passphrase, its database URL and
# every ROTATOR_* setting stay out of reach of the hook and of whatever the hook runs).
HOOK_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
# Errors starting a process that a later attempt may not meet (resources, a binary being
# replaced); any other start failure (missing, not executable) is permanent.
_TRANSIENT_ERRNOS = frozenset(
    {errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.ETXTBSY, errno.EINTR}
)
# "publish": the exec sink's call (rotator.sinks.exec), through run_hook.
Operation = Literal["set", "test", "finish", "revoke", "rollback", "verify", "generate", "publish"]


class ExecConfig(cb.ConnectorConfig):
    """``--set`` settings of the exec connector; see the module docstring."""

    command: str = Field(
        min_length=1,
        max_length=4096,
        description="absolute path of the hook, executable by rotator's user",
    )
    args: str = Field(
        default="",
        max_length=4096,
        description="fixed arguments passed before the operation, split like a POSIX shell",
    )
    mode: Literal["single", "dual"] = Field(
        default="single",
        description="single: set replaces the value; dual: the old value stays valid until revoke",
    )
    timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="each call is killed after this many seconds"
    )
    input: Literal["json", "raw"] = Field(
        default="json",
        description="stdin: a JSON object with value and previous, or the value's bytes alone",
    )
    generator: Literal["password", "hook"] = Field(
        default="password",
        description="password: rotator makes the value; hook: the hook's generate prints it",
    )
    password_length: int = Field(
        default=32, ge=16, le=1024, description="length of a password rotator makes"
    )
    target: str = Field(
        default="",
        max_length=256,
        description="name of the target for per-target limits and breaker (default: command)",
    )

    @field_validator("command")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if "\x00" in v:
            raise ValueError("command must not hold a NUL character")
        if not os.path.isabs(v):
            raise ValueError(f"command must be an absolute path, not {v[:200]!r}")
        return v

    @field_validator("args")
    @classmethod
    def _splits(cls, v: str) -> str:
        if "\x00" in v:
            raise ValueError("args must not hold a NUL character")
        try:
            shlex.split(v)
        except ValueError as exc:  # an unclosed quote or a trailing backslash
            raise ValueError(f"args cannot be split into arguments ({exc})") from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ExecConfig:
        if self.input == "raw" and self.mode == "single":
            raise ValueError(
                "input=raw needs mode=dual: a single-mode rollback must put the previous value "
                "back, and raw stdin carries the value alone"
            )
        return self

    @property
    def argv(self) -> list[str]:
        return [self.command, *shlex.split(self.args)]


def _cfg(config: cb.ConnectorConfig) -> ExecConfig:
    if not isinstance(config, ExecConfig):
        raise cb.PermanentError(f"exec connector given {type(config).__name__} settings")
    return config


def generate(length: int) -> Secret:
    """A random password from an alphabet needing no escaping anywhere (URL, shell, config)."""
    return Secret("".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length)))


def check_command(cfg: ExecConfig, what: str = "") -> None:
    """PermanentError (one line naming the path) unless the command is an executable file."""
    prefix = f"{what}: " if what else ""
    try:
        info = os.stat(cfg.command)
    except FileNotFoundError:
        raise cb.PermanentError(f"{prefix}hook command {cfg.command!r} does not exist") from None
    except OSError as exc:
        raise cb.PermanentError(
            f"{prefix}hook command {cfg.command!r} cannot be read "
            f"({errno.errorcode.get(exc.errno or 0, 'error')})"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise cb.PermanentError(f"{prefix}hook command {cfg.command!r} is not a regular file")
    if not os.access(cfg.command, os.X_OK):
        raise cb.PermanentError(f"{prefix}hook command {cfg.command!r} is not executable")


def _text(value: Secret | None, op: str) -> str | None:
    if value is None:
        return None
    try:
        return value.reveal_text()
    except UnicodeDecodeError:
        raise cb.PermanentError(
            f"{op}: the value is not UTF-8 text, which input=json cannot carry; use input=raw"
        ) from None


def _stdin(
    cfg: ExecConfig,
    op: Operation,
    credential: str,
    version: int,
    value: Secret | None,
    previous: Secret | None = None,
) -> bytes:
    """What the hook reads on stdin (see the module docstring)."""
    if cfg.input == "raw":
        return b"" if value is None else value.reveal()
    doc = {
        "operation": op,
        "credential": credential,
        "version": version,
        "value": _text(value, op),
        "previous": _text(previous, op),
    }
    return json.dumps(doc).encode()


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the hook's whole process group (it leads it: start_new_session). Its id
    cannot name another group while the hook is unreaped or any member of its group lives
    (the kernel reuses no pid that is still a process group id); after that, ESRCH is
    ignored."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


class _HookProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's protocol for a subprocess with streams, telling also when the hook itself
    exited: ``Process.wait`` waits for its pipes to close as well (Python 3.11), which a
    background child holding stdout delays for as long as it lives."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=64 * 1024, loop=loop)  # asyncio's default
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


async def _end(proc: asyncio.subprocess.Process, exited: asyncio.Future[None]) -> None:
    """Kill the hook's group, wait for the hook to be reaped, and read its stdout (if piped)
    to EOF: the subprocess transport closes only when its pipes do, and one left open past
    the event loop's end fails in its finalizer ("Event loop is closed"). A process that left
    the group (its own session) and holds stdout is given a second, then left to the GC."""
    _kill_group(proc)
    await asyncio.shield(exited)
    if proc.stdout is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.stdout.read(), 1.0)


async def _feed(proc: asyncio.subprocess.Process, data: bytes) -> None:
    assert proc.stdin is not None
    # A hook that exits without reading stdin closes the pipe: not an error of ours.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        proc.stdin.write(data)
        await proc.stdin.drain()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        proc.stdin.close()
        await proc.stdin.wait_closed()


async def _read_capped(proc: asyncio.subprocess.Process, op: str) -> bytes:
    """Up to MAX_VALUE_BYTES of stdout; more is a permanent error (the group is killed)."""
    assert proc.stdout is not None
    chunks: list[bytes] = []
    size = 0
    while chunk := await proc.stdout.read(65536):
        size += len(chunk)
        if size > MAX_VALUE_BYTES:
            _kill_group(proc)
            raise cb.PermanentError(f"{op}: hook printed more than {MAX_VALUE_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _outcome(op: str, returncode: int) -> None:
    """Map an exit status to success, TransientError or PermanentError (never more than the
    status: what the hook printed may hold the value)."""
    if returncode == 0:
        return
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        raise cb.TransientError(f"{op}: hook was killed by {name}")
    if returncode == EX_TEMPFAIL:
        raise cb.TransientError(f"{op}: hook reported a temporary failure (exit status 75)")
    raise cb.PermanentError(f"{op}: hook failed (exit status {returncode})")


async def run_hook(
    cfg: ExecConfig,
    op: Operation,
    credential: str,
    version: int,
    data: bytes,
    *,
    want_stdout: bool = False,
) -> bytes:
    """Run the hook once for ``op`` with ``data`` on stdin; its stdout when ``want_stdout``
    (else b"", and ``generate`` reads until the hook exits, not until every child it left
    closes stdout). Raises TransientError (exit 75, a signal, the timeout) or PermanentError
    (missing command, any other status); the process group, children the hook left running
    in the background included, is always killed and the hook reaped when this returns or
    raises, a cancelled call included."""
    check_command(cfg, op)
    argv = [*cfg.argv, op, credential, str(version)]
    loop = asyncio.get_running_loop()
    try:
        # create_subprocess_exec's own two steps, with a protocol that also says when the hook
        # exited (``_HookProtocol``).
        transport, protocol = await loop.subprocess_exec(
            lambda: _HookProtocol(loop),
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE if want_stdout else asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=HOOK_ENV,
            cwd="/",
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0, "error")
        message = f"{op}: hook command {cfg.command!r} cannot be started ({code})"
        if exc.errno in _TRANSIENT_ERRNOS:
            raise cb.TransientError(message) from None
        raise cb.PermanentError(message) from None
    proc = asyncio.subprocess.Process(transport, protocol, loop)

    async def talk() -> bytes:
        feeding = asyncio.ensure_future(_feed(proc, data))
        reading = asyncio.ensure_future(_read_capped(proc, op)) if want_stdout else None
        try:
            await asyncio.shield(protocol.exited)
            # The hook is done: whatever it left running in its group goes too (the group
            # id stays valid while any member lives; once none does, killpg finds nothing).
            # That also ends a background child holding stdout open: what the hook printed
            # is in the pipe already, and the read below ends at EOF instead of waiting for
            # the child until the timeout.
            _kill_group(proc)
            out = await reading if reading is not None else b""
            await feeding
            await proc.wait()  # the pipes are closed: returns at once
        finally:
            feeding.cancel()
            if reading is not None:
                reading.cancel()
        return out

    try:
        out = await asyncio.wait_for(talk(), cfg.timeout_s)
    except TimeoutError:
        await _end(proc, protocol.exited)
        raise cb.TransientError(
            f"{op}: hook did not finish within {cfg.timeout_s:g}s and was killed"
        ) from None
    except BaseException:
        # Cancelled (the engine cut the step) or failed reading: nothing of the hook's may
        # outlive the call.
        with contextlib.suppress(BaseException):
            await asyncio.shield(_end(proc, protocol.exited))
        raise
    assert proc.returncode is not None
    _outcome(op, proc.returncode)
    return out


class ExecConnector:
    kind: ClassVar[str] = "exec"
    strategy: ClassVar[cb.Strategy] = cb.Strategy.SINGLE
    config_model: ClassVar[type[cb.ConnectorConfig]] = ExecConfig
    references: ClassVar[tuple[str, ...]] = ()  # a hook gets no other credential's value

    def host_effect(self, config: cb.ConnectorConfig) -> str | None:
        """A hook runs on rotator's host as rotator: only the store's owner may set one."""
        return f"runs {_cfg(config).command}"

    def strategy_for(self, config: cb.ConnectorConfig) -> cb.Strategy:
        return cb.Strategy.DUAL if _cfg(config).mode == "dual" else cb.Strategy.SINGLE

    def target_key(self, config: cb.ConnectorConfig) -> str:
        cfg = _cfg(config)
        return f"exec://{cfg.target or cfg.command}"

    async def _call(
        self,
        config: cb.ConnectorConfig,
        op: Operation,
        credential: str,
        version: int,
        value: Secret | None,
        previous: Secret | None = None,
    ) -> None:
        cfg = _cfg(config)
        data = _stdin(cfg, op, credential, version, value, previous)
        await run_hook(cfg, op, credential, version, data)

    async def create(self, req: cb.CreateRequest) -> Secret:
        cfg = _cfg(req.config)
        if cfg.generator == "password":
            return generate(cfg.password_length)
        data = _stdin(cfg, "generate", req.credential, req.version, None)
        out = await run_hook(cfg, "generate", req.credential, req.version, data, want_stdout=True)
        if out.endswith(b"\n"):
            out = out[:-1]
        if not out:
            raise cb.PermanentError("generate: hook printed no value")
        return Secret(out)

    async def set(self, req: cb.SetRequest) -> None:
        await self._call(req.config, "set", req.credential, req.version, req.pending, req.current)

    async def test(self, req: cb.TestRequest) -> None:
        await self._call(req.config, "test", req.credential, req.version, req.pending)

    async def finish(self, req: cb.FinishRequest) -> None:
        await self._call(
            req.config, "finish", req.credential, req.version, req.current, req.previous
        )

    async def revoke(self, req: cb.RevokeRequest) -> None:
        await self._call(req.config, "revoke", req.credential, req.version, req.value)

    async def rollback(self, req: cb.RollbackRequest) -> None:
        if req.current is not None and req.current == req.pending:
            return  # never undo the value still in use
        await self._call(
            req.config, "rollback", req.credential, req.version, req.pending, req.current
        )

    async def verify(self, req: cb.VerifyRequest) -> None:
        """The command is an executable file, and the hook's own ``verify`` exits 0 (a hook
        with nothing to check exits 0). Changes nothing, unless the hook does."""
        cfg = _cfg(req.config)
        check_command(cfg)
        try:
            await self._call(cfg, "verify", req.credential, 0, req.current)
        except cb.TransientError as exc:
            raise cb.PermanentError(str(exc)) from None


__all__ = ["EX_TEMPFAIL", "ExecConfig", "ExecConnector", "check_command", "generate", "run_hook"]
