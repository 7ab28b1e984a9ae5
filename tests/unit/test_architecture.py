"""The layering rules of ../shared/DESIGN.md, checked by import-linter on the real source.

The contracts live in pyproject.toml ([tool.importlinter]). Each test below also plants one
forbidden import in a copy of the source and checks that its contract then breaks, so a
contract that can no longer fail (a renamed package, a typo) fails here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(src: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_source_keeps_every_layering_contract() -> None:
    result = lint(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 kept, 0 broken" in result.stdout


ENGINE = "the engine never imports the service"
BELOW = "the kernel and the store sit below the engine"
CONNECTORS = "connectors import neither the store nor the engine"
INTERFACES = "interfaces import only the service"
PURE = "domain and policy do no I/O"
TELEMETRY = "telemetry sits below the engine"


@pytest.mark.parametrize(
    ("module", "planted", "contract"),
    [
        ("engine/protocol.py", "import rotator.service", ENGINE),
        ("kernel/core.py", "import rotator.service.credentials", ENGINE),
        ("kernel/core.py", "import rotator.engine", BELOW),
        ("store/credentials.py", "import rotator.connectors.base", BELOW),
        ("connectors/postgres.py", "import rotator.store", CONNECTORS),
        ("connectors/http.py", "import rotator.engine", CONNECTORS),
        ("cli/main.py", "import rotator.engine", INTERFACES),
        ("cli/main.py", "import rotator.store", INTERFACES),
        ("dashboard/routes.py", "import rotator.store.history", INTERFACES),
        ("domain/model.py", "import sqlalchemy", PURE),
        ("policy/schedule.py", "import httpx", PURE),
        ("telemetry/metrics.py", "import rotator.engine.breaker", TELEMETRY),
        ("telemetry/logs.py", "import rotator.service", TELEMETRY),
        ("telemetry/tracing.py", "import rotator.store", TELEMETRY),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, planted: str, contract: str
) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "rotator", src / "rotator")
    path = src / "rotator" / module
    path.write_text(path.read_text() + f"\n{planted}  # planted by the test\n")
    result = lint(src)
    assert result.returncode != 0
    assert f"{contract} BROKEN" in result.stdout, result.stdout
