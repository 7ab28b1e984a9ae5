"""``rotator connector list`` and ``describe`` (issue 13, item 5).

The installed kinds come from the registry (never a list written here), so connectors added
later show up with no change to these tests. Plugins are real distributions: a ``*.dist-info``
with an ``entry_points.txt`` in a folder on the subprocess's PYTHONPATH, one working and one
whose module does not exist. Neither command reads a store: they run with a ROTATOR_HOME that
was never initialized.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.test_cli_bad_input import Run, assert_bad_input, base_env
from tests.support.fuzz import run_in_process

from rotator.connectors.registry import BUILTIN, available

PLUGIN = '''"""A tiny third-party connector for the connector listing tests."""
from typing import ClassVar, Literal

from pydantic import Field

from rotator.connectors import base as cb


class DemoConfig(cb.ConnectorConfig):
    account: str = Field(description="the account rotated")
    mode: Literal["dual", "single"] = "dual"
    retries: int = 3


class DemoConnector:
    kind: ClassVar[str] = "demo"
    strategy: ClassVar[cb.Strategy] = cb.Strategy.DUAL
    config_model: ClassVar[type[cb.ConnectorConfig]] = DemoConfig

    def strategy_for(self, config):
        return cb.Strategy(config.mode)
'''


def install_plugins(where: Path) -> Path:
    """A folder that, on PYTHONPATH, installs two distributions: ``demo-connector`` (a
    working ``demo`` connector) and ``broken-connector`` (``broken``, whose module is
    missing)."""
    where.mkdir()
    (where / "demo_connector.py").write_text(PLUGIN)
    for dist, entry in [
        ("demo_connector", "demo = demo_connector:DemoConnector"),
        ("broken_connector", "broken = no_such_module_4f1c:Connector"),
    ]:
        info = where / f"{dist}-0.1.dist-info"
        info.mkdir()
        name = dist.replace("_", "-")
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[rotator.connectors]\n{entry}\n")
    return where


SEPARATOR = "\n----- next command -----\n"
# Both listings from one process (a process importing every connector costs a second or more).
TWO_LISTINGS = f"""
import sys
from rotator.cli.main import main
first = main(["connector", "list", "--json"])
sys.stdout.write({SEPARATOR!r})
sys.stdout.flush()
sys.exit(first or main(["connector", "list"]))
"""


def list_twice(env: dict[str, str]) -> tuple[Run, Run]:
    """`rotator connector list --json` then `rotator connector list`, in one new process."""
    proc = subprocess.run(
        [sys.executable, "-c", TWO_LISTINGS],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    as_json, _, table = proc.stdout.partition(SEPARATOR)
    args = ("connector", "list")
    return Run((*args, "--json"), proc.returncode, as_json, proc.stderr), Run(
        args, proc.returncode, table, proc.stderr
    )


def test_list_shows_every_built_in_and_plugin_connector_and_a_broken_plugin_in_one_line(
    tmp_path: Path,
) -> None:
    plugins = install_plugins(tmp_path / "plugins")
    env = {
        **base_env(),
        "ROTATOR_HOME": str(tmp_path / "never-initialized"),
        "PYTHONPATH": os.pathsep.join([str(plugins), os.environ.get("PYTHONPATH", "")]),
    }
    listed, table = list_twice(env)
    assert listed.code == 0, listed.describe()
    found: dict[str, dict[str, Any]] = {c["kind"]: c for c in json.loads(listed.out)}
    assert set(BUILTIN) | {"demo", "broken"} <= set(found)
    for kind in BUILTIN:
        c = found[kind]
        assert c["source"] == "built-in"
        assert c["error"] is None, c
        assert c["strategies"], c
        assert {s["strategy"] for s in c["strategies"]} <= {"dual", "alternating", "single"}
        assert sum(s["default"] for s in c["strategies"]) == 1, c
        assert all(
            set(s) == {"name", "type", "required", "default", "description"} for s in c["settings"]
        )

    # Strategies by mode: the connector's own strategy_for, per value of its mode setting.
    postgres = {s["mode"]: s for s in found["postgres"]["strategies"]}
    assert {m: s["strategy"] for m, s in postgres.items()} == {
        "single": "single",
        "alternating": "alternating",
    }
    assert postgres["alternating"]["default"]

    demo = found["demo"]
    assert demo["source"] == "plugin"
    assert demo["error"] is None
    assert [(s["mode"], s["strategy"]) for s in demo["strategies"]] == [
        ("dual", "dual"),
        ("single", "single"),
    ]
    assert demo["summary"] == "A tiny third-party connector for the connector listing tests."
    account = next(s for s in demo["settings"] if s["name"] == "account")
    assert account["required"]
    assert account["description"] == "the account rotated"

    broken = found["broken"]
    assert broken["source"] == "plugin"
    assert "ModuleNotFoundError" in broken["error"]
    assert "no_such_module_4f1c" in broken["error"]

    assert "Traceback" not in table.out + table.err
    assert table.err == ""
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in table.out.splitlines()]
    assert {r[0] for r in rows if r and r[0]} == set(found)
    (broken_line,) = [line for line in table.out.splitlines() if "no_such_module_4f1c" in line]
    assert "cannot be loaded: ModuleNotFoundError" in broken_line


def test_describe_prints_each_settings_type_default_and_requirement_and_refuses_unknown_kinds(
    tmp_path: Path,
) -> None:
    env = {**base_env(), "ROTATOR_HOME": str(tmp_path / "never-initialized")}
    shown = run_in_process(["connector", "describe", "postgres"], env, b"")
    assert shown.code == 0, shown.describe()
    lines = shown.out.splitlines()
    assert "  role: string, required" in lines
    assert "  port: integer, default 5432" in lines
    assert "strategy: single, alternating (default)" in lines

    as_json = run_in_process(["connector", "describe", "postgres", "--json"], env, b"")
    assert as_json.code == 0, as_json.describe()
    info = json.loads(as_json.out)
    settings = {s["name"]: s for s in info["settings"]}
    assert settings["role"]["required"] is True
    assert settings["port"] == {
        "name": "port",
        "type": "integer",
        "required": False,
        "default": 5432,
        "description": "",
    }
    assert settings["mode"]["type"] == "single|alternating"

    described = run_in_process(["connector", "describe", "exec"], env, b"")
    assert "  command: string, required - absolute path of the hook" in described.out

    line = assert_bad_input(run_in_process(["connector", "describe", "nope"], env, b""), "'nope'")
    assert line.endswith(", ".join(available()))
