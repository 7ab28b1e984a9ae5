"""Propagation sinks: the new CURRENT value lands in files after each rotation; a failing
sink is retried, audited and reported, and never un-rotates."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from rotator.domain.secret import Secret
from rotator.engine import BatchResult, Engine, EngineOptions, RotationRequest
from rotator.errors import InvalidInput
from rotator.service import BlockingService, ValueInput
from rotator.sinks import FileSink, SinkRefused

FAST = EngineOptions(retry_initial_s=0.001)


def rotate(svc: BlockingService, name: str) -> BatchResult:
    async def go() -> BatchResult:
        async with Engine(svc.kernel, FAST) as engine:
            return await engine.rotate([RotationRequest(name)])

    return asyncio.run(go())


def test_file_sinks_receive_the_new_value(svc: BlockingService, tmp_path: Path) -> None:
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
    assert env.read_text() == "API_KEY='" + value.replace("'", "'\\''") + "'\n"
    assert json.loads(js.read_text()) == {"api_key": value}
    assert stat.S_IMODE(raw.stat().st_mode) == 0o600
    assert stat.S_IMODE(js.stat().st_mode) == 0o640
    writes = [e for e in svc.audit_entries(credential="app/key") if e.action == "sink.write"]
    assert len(writes) == 3
    assert value not in json.dumps([e.to_json() for e in svc.audit_entries()])


def test_failing_sink_is_reported_and_does_not_unrotate(
    svc: BlockingService, tmp_path: Path
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
        "file:path=/x,mode=rw",
        "file:path=/x,mode=0660",
        "file:path=/x,mode=0644",
        "file:path=/x,mode=0604",
        "file:path=/x,mode=0602",
        "file:path=/x,mode=0666",
        "file:path=/x,mode=0777",
        "file:path=/x,key=1BAD",
    ],
)
def test_bad_sink_specs_are_refused(svc: BlockingService, spec: str) -> None:
    with pytest.raises(InvalidInput):
        svc.add_credential("app/key", "local", sinks=[spec])
    assert svc.list_credentials() == []


def test_update_replaces_sinks(svc: BlockingService, tmp_path: Path) -> None:
    svc.add_credential("k", "local", sinks=[f"file:path={tmp_path}/a"])
    cred = svc.update_credential("k", sinks=[f"file:path={tmp_path}/b,format=dotenv"])
    assert [s["path"] for s in cred.sinks] == [f"{tmp_path}/b"]


# ------------------------------------------------------------------- hostile paths and values


def home_files(svc: BlockingService) -> dict[str, bytes]:
    home = svc.settings.home
    return {str(p.relative_to(home)): p.read_bytes() for p in home.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "where",
    [
        "home/master.key",
        "home/new-file",
        "home",
        "link-to-home/master.key",
        "link-to-home/../home/x",
    ],
)
def test_sink_paths_inside_rotator_home_or_the_store_are_refused(
    svc: BlockingService, tmp_path: Path, where: str
) -> None:
    home = svc.settings.home
    (tmp_path / "link-to-home").symlink_to(home)
    path = str(tmp_path / where)
    with pytest.raises(InvalidInput, match="inside rotator's own"):
        svc.add_credential(
            "app/key", "local", value=ValueInput(generate=True), sinks=[f"file:path={path}"]
        )
    svc.add_credential("app/key", "local", value=ValueInput(generate=True))
    with pytest.raises(InvalidInput, match="inside rotator's own"):
        svc.update_credential("app/key", sinks=[f"file:path={path}"])
    assert list(svc.show("app/key").sinks) == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_sink_paths_onto_a_sqlite_store_outside_rotator_home_are_refused(
    svc: BlockingService, suffix: str
) -> None:
    assert svc.db.sqlite_path is not None
    assert svc.settings.home not in svc.db.sqlite_path.parents, "the store is outside the home"
    with pytest.raises(InvalidInput, match="inside rotator's own"):
        svc.add_credential(
            "app/key",
            "local",
            value=ValueInput(generate=True),
            sinks=[f"file:path={svc.db.sqlite_path}{suffix}"],
        )


def test_sink_redirected_into_rotator_home_after_add_is_refused_at_write(
    svc: BlockingService, tmp_path: Path
) -> None:
    """A symlink planted after the sink was accepted: the write is refused (a warning and a
    sink.failed entry), rotator's own files stay as they were, the rotation stands."""
    out = tmp_path / "out"
    out.mkdir()
    svc.add_credential(
        "app/key", "local", value=ValueInput(generate=True), sinks=[f"file:path={out}/master.key"]
    )
    out.rmdir()
    out.symlink_to(svc.settings.home)
    before = home_files(svc)
    data = rotate(svc, "app/key").to_json()
    assert data["rotated"] == ["app/key"]
    [warning] = data["warnings"]
    assert "inside rotator's" in warning["warning"]
    assert home_files(svc) == before
    failed = [e for e in svc.audit_entries(credential="app/key") if e.action == "sink.failed"]
    assert len(failed) == 1


HOSTILE_VALUES = [
    "$HOME and ${{PATH}}",
    "`touch {pwned}`",
    "$(touch {pwned})",
    "';touch {pwned};'",
    "line one\nline two; touch {pwned}",
    "carriage\rreturn",
    "\r\n\n",
    "it's 'quoted' \"twice\"",
    "back\\slash\\",
    "'",
    "ends with a quote'",
    "$'\\x41' !! !$ \\",
    "tab\tand ümlaut ✓",
]


@pytest.mark.parametrize("template", HOSTILE_VALUES)
def test_sourcing_a_dotenv_sink_gives_the_value_byte_for_byte_and_runs_nothing(
    tmp_path: Path, template: str
) -> None:
    pwned = tmp_path / f"pwned-{uuid.uuid4().hex}"
    value = template.format(pwned=pwned)  # "{{" in a template is a literal brace
    env_file = tmp_path / "app.env"
    FileSink(path=str(env_file), format="dotenv", key="KEY").write(Secret(value))
    proc = subprocess.run(
        ["bash", "-c", 'set -a; . "$1"; printf %s "$KEY"', "bash", str(env_file)],
        capture_output=True,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == value.encode()
    assert proc.stderr == b""
    assert not pwned.exists(), "sourcing the file ran a command"


@pytest.mark.parametrize("value", [b"\xff\xfe not text", b"nul\x00byte"])
def test_dotenv_sink_refuses_values_a_shell_variable_cannot_hold(
    tmp_path: Path, value: bytes
) -> None:
    env_file = tmp_path / "app.env"
    with pytest.raises(SinkRefused) as err:
        FileSink(path=str(env_file), format="dotenv").write(Secret(value))
    assert "not text" not in str(err.value)
    assert not env_file.exists()
