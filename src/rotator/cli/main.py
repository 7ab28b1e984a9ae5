"""The ``rotator`` command line. Thin: parses, calls the service layer, prints.

Exit codes: 0 ok, 1 the operation failed, 2 bad input (a one-line message naming the problem,
never a traceback). Only ``credential get`` prints a value.
"""

from __future__ import annotations

import gc
import importlib
import sys
from typing import TYPE_CHECKING, Any

from rotator.errors import InvalidInput

# typer (with click and pydantic) and the commands are imported when a command line is
# parsed, not with this module: the console script's fast path for `credential get`
# (rotator.cli.fast) runs without them.
if TYPE_CHECKING:
    import typer

    from rotator.cli.app import app


def __getattr__(name: str) -> Any:
    # ``rotator.cli.main.app``: the typer app with every command registered, as before.
    if name == "app":
        from rotator.cli.app import app

        load_commands()
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The command modules of rotator.cli; each registers its commands on the apps of
# rotator.cli.app when imported, in this order (the order `rotator --help` lists them).
COMMAND_MODULES = (
    "access",
    "audit",
    "backup",
    "connectors",
    "credentials",
    "events",
    "evidence",
    "forward",
    "groups",
    "keys",
    "mcp",
    "policy",
    "report",
    "rollouts",
    "rotate",
    "serve",
    "webhook",
    "worker",
)
# The modules that register the commands of each top-level name (a command or a group).
# tests/integration/test_cli_startup.py checks it against the commands all modules register.
MODULES_OF = {
    "audit": ("audit", "forward"),
    "backup": ("backup",),
    "connector": ("connectors",),
    "credential": ("credentials",),
    "event": ("events",),
    "group": ("groups",),
    "init": ("credentials",),
    "keys": ("backup", "keys"),
    "mcp": ("mcp",),
    "policy": ("policy",),
    "principal": ("access",),
    "recover": ("worker",),
    "report": ("evidence", "report"),
    "restore": ("backup",),
    "rollout": ("rollouts",),
    "rotate": ("rotate",),
    "serve": ("serve",),
    "tenant": ("access",),
    "token": ("access",),
    "webhook": ("webhook",),
    "worker": ("worker",),
}
# The global options (of rotator.cli.app's callback) that take a value.
_GLOBAL_VALUED = frozenset({"--log-level", "--log-format"})


def invoked_name(argv: list[str]) -> str | None:
    """The top-level command or group ``argv`` names, when it can be told without parsing
    (after the global options); None for ``--help`` or any other option before it."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _GLOBAL_VALUED:
            skip = True
        elif any(arg.startswith(opt + "=") for opt in _GLOBAL_VALUED):
            continue
        elif arg.startswith("-"):
            return None  # --help, --, an unknown option: the full parse handles it
        else:
            return arg
    return None


def load_commands(argv: list[str] | None = None) -> None:
    """Register commands by importing their modules: with ``argv``, only those of the
    top-level name it invokes when that is known (a new process runs one command and pays
    at start-up only for its module); otherwise, or for ``--help`` or an unknown name, all."""
    name = None if argv is None else invoked_name(argv)
    modules = COMMAND_MODULES if name is None else MODULES_OF.get(name, COMMAND_MODULES)
    for module in modules:
        importlib.import_module(f"rotator.cli.{module}")


__all__ = ["app", "main", "run"]


def main(argv: list[str] | None = None) -> int:
    """Run one command line with every command registered; returns the exit code."""
    load_commands()
    return _run(argv)


def _run(argv: list[str] | None) -> int:
    from rotator.telemetry import logs

    try:
        return _main(argv)
    finally:
        logs.reset()  # the logging --log-level set up ends with the call (in-process callers)


# The commands that run against a server when ROTATOR_URL is set (through
# rotator.cli.app.use_cases); `audit verify-copy` opens no store and runs anywhere.
REMOTE_COMMANDS = frozenset(
    {
        ("credential", "list"),
        ("credential", "show"),
        ("credential", "get"),
        ("credential", "add"),
        ("credential", "update"),
        ("credential", "remove"),
        ("credential", "used"),
        ("rotate",),
        ("audit", "list"),
        ("audit", "head"),
        ("audit", "verify"),
        ("audit", "verify-copy"),
        ("event", "report"),
        ("event", "list"),
        ("report", "compliance"),
        ("report", "evidence"),
    }
)


def command_path(command: typer.core.TyperGroup, argv: list[str]) -> tuple[str, ...]:
    """The names of the (sub)commands ``argv`` invokes, without running anything: as far as
    they resolve (a usage error stops it; the real parse reports it)."""
    import typer

    path: list[str] = []
    cmd: object = command
    ctx = command.make_context("rotator", list(argv), resilient_parsing=True)
    while isinstance(cmd, typer.core.TyperGroup):
        # Click keeps a group's subcommand and its arguments apart until it invokes them.
        args = [*(getattr(ctx, "_protected_args", None) or []), *ctx.args]
        if not args:
            break
        name, sub, rest = cmd.resolve_command(ctx, args)
        if sub is None or name is None:
            break
        path.append(name)
        cmd = sub
        ctx = sub.make_context(name, rest, parent=ctx, resilient_parsing=True)
    return tuple(path)


def _check_remote(command: typer.core.TyperGroup, argv: list[str]) -> None:
    """With ROTATOR_URL set, refuse (bad input, before any request or store access) a
    command that runs only where the store is."""
    from rotator.cli import session
    from rotator.cli.app import UsageError

    if session.remote_url() is None:
        return
    try:
        path = command_path(command, argv)
    except UsageError:
        return  # the real parse names the problem
    # A group alone (``credential``, ``credential frob``) is the real parse's usage error.
    partial = any(c[: len(path)] == path for c in REMOTE_COMMANDS)
    if path and not partial and "--help" not in argv:
        shown = " ".join(path)
        raise InvalidInput(
            f"`rotator {shown}` runs on the server's host; unset ROTATOR_URL to run it locally"
        )


def _main(argv: list[str] | None) -> int:
    import typer

    from rotator.cli import session
    from rotator.cli.app import Exit, UsageError, app

    command = typer.main.get_command(app)
    try:
        assert isinstance(command, typer.core.TyperGroup)
        _check_remote(command, sys.argv[1:] if argv is None else argv)
        code = command.main(args=argv, prog_name="rotator", standalone_mode=False)
        # Without standalone mode typer *returns* what it would exit with: the code of a
        # typer.Exit a command raised, and 130 for Ctrl-C (it turns KeyboardInterrupt into
        # Exit(130)). No command returns a value of its own, so an int here is an exit code.
        if isinstance(code, int) and not isinstance(code, bool):
            return code
    except Exit as exc:
        return exc.code
    except UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # help was printed already
            return 0
        print(f"rotator: error: {getattr(exc, 'format_message', exc.__str__)()}", file=sys.stderr)
        return 2
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        print("rotator: aborted", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Exception) as exc:
        return session.exit_code(exc)
    return 0


def run() -> None:
    """Entry point of the console script. ``credential get NAME [--stage S]`` in the plain
    form runs without the parser (rotator.cli.fast: same service call, output, errors and
    exit codes); any other command line registers only the invoked command's module."""
    argv = sys.argv[1:]
    # Start-up creates a few hundred thousand objects that live as long as the process
    # (modules, classes, functions: SQLAlchemy's alone are most of them). The cyclic garbage
    # collector would walk them again and again while they are imported, and once more when
    # the interpreter exits: about a fifth of a `credential get` (docs/benchmarks.md, "Issue 8,
    # session 6"). So collection is off while the command's modules load; what is alive then
    # is frozen (gc.freeze: left out of every later collection, the one at exit included) and
    # collection resumes, so a long-running command (serve, worker) collects its own garbage
    # as any process does. `credential get` is one read: it runs with collection off.
    gc.disable()
    try:
        from rotator.cli import fast

        code = fast.credential_get(argv)
        if code is None:
            load_commands(argv)
            gc.freeze()
            gc.enable()
            code = _run(None)
    finally:
        gc.freeze()
        gc.enable()
    sys.exit(code)
