"""Propagation sinks: the new CURRENT value lands in files after each rotation; a failing
sink is retried, audited and reported, and never un-rotates."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest

from rotator.engine import BatchResult, Engine, EngineOptions, RotationRequest
from rotator.errors import InvalidInput
from rotator.service import RotatorService, ValueInput

FAST = EngineOptions(retry_initial_s=0.001)


def rotate(svc: RotatorService, name: str) -> BatchResult:
    async def go() -> BatchResult:
        async with Engine(svc, FAST) as engine:
            return await engine.rotate([RotationRequest(name)])

    return asyncio.run(go())


def test_file_sinks_receive_the_new_value(svc: RotatorService, tmp_path: Path) -> None:
    raw, env, js = tmp_path / "raw.txt", tmp_path / "app.env", tmp_path / "app.json"
    svc.add_credential(
        "app/key",
        "local",
        value=ValueInput(generate=True),
        sinks=[
            f"file:path={raw}",
            f"file:path={env},format=dotenv,key=API_KEY",
            f"file:path={js},format=json,key=api_key,mode=0640",
        ],
    )
    assert not raw.exists(), "sinks run after rotations, not at add"
    result = rotate(svc, "app/key")
    assert result.ok, result.to_json()
    value = svc.get_value("app/key").reveal_text()
    assert raw.read_text() == value
    assert (
        env.read_text()
        == f'API_KEY="{value.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"\n'
    )
    assert json.loads(js.read_text()) == {"api_key": value}
    assert stat.S_IMODE(raw.stat().st_mode) == 0o600
    assert stat.S_IMODE(js.stat().st_mode) == 0o640
    writes = [e for e in svc.audit_entries(credential="app/key") if e.action == "sink.write"]
    assert len(writes) == 3
    assert value not in json.dumps([e.to_json() for e in svc.audit_entries()])


def test_failing_sink_is_reported_and_does_not_unrotate(
    svc: RotatorService, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    good = tmp_path / "good.txt"
    svc.add_credential(
        "app/key",
        "local",
        value=ValueInput(generate=True),
        sinks=[f"file:path={blocker}/value.txt", f"file:path={good}"],
    )
    before = svc.get_value("app/key").reveal_text()
    data = rotate(svc, "app/key").to_json()
    assert data["rotated"] == ["app/key"]
    assert data["failed"] == []
    [warning] = data["warnings"]
    assert warning["name"] == "app/key"
    assert str(blocker) in warning["warning"]
    after = svc.get_value("app/key").reveal_text()
    assert after != before
    assert good.read_text() == after
    failed = [e for e in svc.audit_entries(credential="app/key") if e.action == "sink.failed"]
    assert failed[0].details["attempts"] == 3


@pytest.mark.parametrize(
    "spec",
    [
        "nope:path=/x",
        "file",
        "file:path=relative.txt",
        "file:path=/x,format=yaml",
        "file:path=/x,bogus=1",
        "file:path=/x,mode=999",
        "file:path=/x,key=1BAD",
    ],
)
def test_bad_sink_specs_are_refused(svc: RotatorService, spec: str) -> None:
    with pytest.raises(InvalidInput):
        svc.add_credential("app/key", "local", sinks=[spec])
    assert svc.list_credentials() == []


def test_update_replaces_sinks(svc: RotatorService, tmp_path: Path) -> None:
    svc.add_credential("k", "local", sinks=[f"file:path={tmp_path}/a"])
    cred = svc.update_credential("k", sinks=[f"file:path={tmp_path}/b,format=dotenv"])
    assert [s["path"] for s in cred.sinks] == [f"{tmp_path}/b"]
