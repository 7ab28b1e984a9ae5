"""``rotator credential get NAME [--stage STAGE]`` without the command-line parser.

The console script (``rotator.cli.main.run``) runs this command line here when it has the plain
form below, so the process imports neither typer nor click nor pydantic (typer builds a
pydantic adapter for every argument) nor any other command's module: `credential get` is
what applications and scripts call most, and typer's part was about a sixth of its CPU
(docs/benchmarks.md, "Issue 8, session 6"). Hand-written rather than a second parser library:
the form is a handful of tokens, and anything else goes to the parser, which stays the one
place that reports a usage error.

It does what the parser's path does (rotator.cli.app's global options at their defaults,
then rotator.cli.credentials.credential_get): the same service call as the same caller
(``service()``: the store's owner, or ``ROTATOR_TOKEN``'s principal, in ``ROTATOR_TENANT``),
so the read is counted and audited exactly as there, the same output, the same one-line
errors and exit codes (``session.exit_code``, and what typer's own handling does with an
interrupt, an EOFError and a closed standard output). tests/integration/test_cli_fast_get.py
runs both paths and compares them.
"""

from __future__ import annotations

import errno
import os
import sys

from rotator.cli import session
from rotator.domain.names import CREDENTIAL_NAME
from rotator.telemetry import logs

STAGE_OPT = "--stage"


def parse(argv: list[str]) -> tuple[str, str] | None:
    """``(name, stage)`` when ``argv`` is ``credential get NAME`` with at most one
    ``--stage VALUE`` (or ``--stage=VALUE``) before or after NAME, NAME a valid credential
    name and VALUE ASCII not starting with ``-``; else None (the parser's business: help,
    global options, bad names, usage errors)."""
    if argv[:2] != ["credential", "get"]:
        return None
    name: str | None = None
    stage: str | None = None
    rest = argv[2:]
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg == STAGE_OPT or arg.startswith(STAGE_OPT + "="):
            if stage is not None:
                return None
            if arg == STAGE_OPT:
                if i + 1 == len(rest):
                    return None
                i += 1
                value = rest[i]
            else:
                value = arg[len(STAGE_OPT) + 1 :]
            if value.startswith("-") or not value.isascii():
                return None
            stage = value
        elif name is None and CREDENTIAL_NAME.fullmatch(arg):
            name = arg
        else:
            return None
        i += 1
    if name is None:
        return None
    return name, "CURRENT" if stage is None else stage


def credential_get(argv: list[str]) -> int | None:
    """Run ``argv`` if :func:`parse` takes it and it runs locally (no ``ROTATOR_URL``, no
    shell-completion request); return its exit code. None: nothing was done, parse it."""
    parsed = parse(argv)
    if parsed is None or session.remote_url() is not None:
        return None
    if os.environ.get("_ROTATOR_COMPLETE"):  # typer answers shell completion first
        return None
    name, stage = parsed
    try:
        return _get(name, stage)
    finally:
        logs.reset()


def _get(name: str, stage: str) -> int:
    try:
        # rotator.cli.app's global options at their defaults.
        logs.configure("warning", None)
        if os.environ.get("ROTATOR_OTLP_ENDPOINT"):
            from rotator.telemetry import tracing

            tracing.configure_from_env()
        st = session.parse_stage(stage)
        with session.service() as svc:
            value = svc.get_value(name, st)
        session.write_value(value)
    except KeyboardInterrupt:
        # As on the parser's path (typer turns an interrupt into Exit(130)): 130, no message.
        # The read was counted and audited, or rolled back, before the interrupt surfaced.
        return 130
    except EOFError:
        print(file=sys.stderr)  # typer: a newline, then Abort
        print("rotator: aborted", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            return session.exit_code(exc)
        # A reader that closed standard output (``| head -c0``): as typer, exit 1 and keep
        # the interpreter's final flush of the broken pipe quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        sys.exit(1)
    except Exception as exc:
        return session.exit_code(exc)
    return 0
