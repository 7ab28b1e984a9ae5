"""A CLI call imports only what its command needs (issue 8, item 7).

``rotator credential get NAME`` reads one value: it needs the store, the crypto and the audit
append, and none of the migration tool, the connectors' client libraries (HTTP, Redis, JOSE,
PostgreSQL's on a SQLite store) or rich's tables and progress bars. Each of those costs every
call of the command start-up time. The real console script runs here in a subprocess under
``python -X importtime``, which lists every module the process imports; the test asserts on
that list (what is imported), never on a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from rotator.config import Settings
from rotator.connectors.registry import BUILTIN

ROTATOR = str(Path(sys.executable).parent / "rotator")
NAME = "app/db"
VALUE = "startup-value-5e1b"

# Never imported by `credential get`, on either database.
NOT_FOR_GET = (
    "alembic",  # only `init` and an actual schema upgrade migrate
    "httpx",  # the http / jwks connectors
    "redis",  # the redis connector
    "joserfc",  # the jwks connector
    "psycopg_pool",  # the postgres connector's admin pool
    "rich.table",  # listings
    "rich.progress",  # `rotate` on a terminal
    # The connectors themselves: `get` needs none.
    *(f"rotator.connectors.{kind}" for kind in BUILTIN),
    # The console script runs `credential get` without the parser (rotator.cli.fast).
    "typer",
    "click",
    "pydantic",
    # pydantic models built at import; `get` calls no connector.
    "rotator.connectors.base",
    # The engine beyond its runtime, writer and counted reads (a read builds no engine).
    "rotator.engine.engine",
    "rotator.engine.context",
    "rotator.engine.protocol",
    "rotator.engine.recovery",
    "rotator.engine.steps",
    "rotator.engine.groups",
    "multiprocessing",
    "rotator.scheduler",
    # Use cases and command modules of other commands.
    "rotator.service.access",
    "rotator.service.backup",
    "rotator.service.checkpoints",
    "rotator.service.events",
    "rotator.service.jobs",
    "rotator.service.rotation",
    "rotator.service.webhooks",
    "rotator.cli.rotate",
    "rotator.cli.audit",
    "rotator.cli.access",
)
# Also never imported on a SQLite store.
NOT_ON_SQLITE = ("psycopg", "sqlalchemy.dialects.postgresql")


def cli(
    settings: Settings, *args: str, stdin: str = "", importtime: bool = False
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the console script; with ``importtime`` also return the modules it imported."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")},
        "ROTATOR_HOME": str(settings.home),
        "ROTATOR_DB": settings.db_url,
    }
    flags = ["-X", "importtime"] if importtime else []
    proc = subprocess.run(
        [sys.executable, *flags, ROTATOR, *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    modules: set[str] = set()
    for line in proc.stderr.splitlines():
        # "import time: <self us> | <cumulative us> | <indent><module>"
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                modules.add(name)
    return proc, modules


def imported(modules: set[str], package: str) -> list[str]:
    """The modules of ``package`` (itself or a submodule) in ``modules``."""
    return sorted(m for m in modules if m == package or m.startswith(package + "."))


def test_credential_get_imports_no_migration_tool_connector_library_or_rich_table(
    settings: Settings, db_url: str
) -> None:
    proc, _ = cli(settings, "init")
    assert proc.returncode == 0, proc.stderr
    proc, _ = cli(
        settings, "credential", "add", NAME, "--connector", "local", "--value-stdin", stdin=VALUE
    )
    assert proc.returncode == 0, proc.stderr

    proc, modules = cli(settings, "credential", "get", NAME, importtime=True)

    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == VALUE + "\n"
    # The listing was read: the command's own modules are in it.
    assert "rotator.service" in modules
    assert "rotator.store.db" in modules
    forbidden = NOT_FOR_GET + (NOT_ON_SQLITE if db_url.startswith("sqlite") else ())
    found = {p: imported(modules, p) for p in forbidden if imported(modules, p)}
    assert found == {}


def test_a_built_in_connector_is_found_without_reading_installed_entry_points() -> None:
    # A fresh interpreter whose entry-point lookup fails: a built-in kind must not need it, an
    # unknown kind still does (a third-party connector may provide it).
    script = textwrap.dedent(
        """
        import importlib.metadata

        real = importlib.metadata.entry_points

        def entry_points(**kwargs):
            if kwargs.get("group") == "rotator.connectors":
                raise SystemExit("rotator.connectors entry points scanned")
            return real(**kwargs)  # pydantic looks for its plugins

        importlib.metadata.entry_points = entry_points
        from rotator.connectors.registry import get_connector

        print(type(get_connector("local")).__name__, flush=True)
        get_connector("no-such-kind")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.stdout == "LocalConnector\n"
    assert proc.stderr == "rotator.connectors entry points scanned\n"


# Prints, for the top-level names given (all when none), each one's commands and their
# parameters as the real parse sees them, with only the modules run() imports for that name.
_TREE = """
import json, sys
import typer
from rotator.cli import main

names = sys.argv[1:]
main.load_commands(names or None)
root = typer.main.get_command(main.app)

def shape(cmd):
    params = sorted((p.name or "", tuple(p.opts)) for p in cmd.params)
    subs = getattr(cmd, "commands", None)
    if subs is None:
        return {"params": params}
    # A list, not a dict: the order of the commands is the order `--help` lists them in.
    return {"params": params, "commands": [[n, shape(c)] for n, c in subs.items()]}

tree = dict(shape(root)["commands"])
print(json.dumps({n: tree.get(n) for n in names} if names else tree))
"""


def command_tree(*names: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", _TREE, *names],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(json.loads(proc.stdout))


def test_the_console_script_registers_each_command_as_the_full_command_line_does() -> None:
    # run() imports only the modules main.MODULES_OF names for the invoked top-level
    # command; each name must then parse exactly as with every module imported.
    from rotator.cli.main import MODULES_OF

    full = command_tree()
    assert set(full) == set(MODULES_OF)  # a new command needs its entry (else: all modules)
    for name in MODULES_OF:
        assert command_tree(name) == {name: full[name]}, name


def test_only_the_invoked_name_after_global_options_selects_the_modules() -> None:
    from rotator.cli.main import invoked_name

    assert invoked_name(["credential", "get", "a"]) == "credential"
    assert invoked_name(["--log-level", "debug", "credential", "get"]) == "credential"
    assert invoked_name(["--log-format=json", "rotate", "--all"]) == "rotate"
    assert invoked_name(["--help", "credential"]) is None
    assert invoked_name(["--frob", "credential"]) is None
    assert invoked_name([]) is None
