"""The ``exec`` sink (issue 13, item 4) with a real POSIX-shell hook: after each rotation the
hook is run as ``HOOK [ARGS] publish CREDENTIAL VERSION`` with the new CURRENT value on stdin
only; exit 75, a signal and the timeout are retried, any other status is reported once; the
rotation stays done either way, and no value reaches an argument, the hook's environment, a
result, an audit entry or the test's output.

The hook's fixed ``args`` are ``--state DIR BEHAVIOUR``: it numbers its calls in DIR and keeps
each call's argv, environment and stdin there, then behaves as told (``ok``, ``tempfail2``:
exit 75 on its first two calls, ``tempfail``: always 75, ``echo-fail``: print stdin on stdout
and stderr and exit 1, ``signal``: kill itself, ``hang``: wait on a ``sleep`` child).

SQLite only: the sink runs after the stage move, the store plays no part in what is tested.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest
from tests.integration.test_cli_bad_input import assert_bad_input, base_env
from tests.integration.test_connector_exec import cli, gone

from rotator.config import Settings
from rotator.domain.model import Stage
from rotator.engine import BatchResult, Engine, EngineOptions, RotationRequest
from rotator.service import BlockingService, ValueInput

FAST = EngineOptions(retry_initial_s=0.001)
SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

HOOK = r"""#!/bin/sh
state=$2 behaviour=$3
n=$(( $(cat "$state/count" 2>/dev/null || echo 0) + 1 ))
printf '%s\n' "$n" > "$state/count"
printf '%s\n' "$0" "$@" > "$state/$n.argv"
env > "$state/$n.env"
cat > "$state/$n.stdin"
case "$behaviour" in
  tempfail2) [ "$n" -le 2 ] && exit 75 ;;
  tempfail) exit 75 ;;
  echo-fail) cat "$state/$n.stdin"; cat "$state/$n.stdin" >&2; exit 1 ;;
  signal) kill -KILL $$ ;;
  hang) sleep 30 & printf '%s %s\n' $$ $! > "$state/$n.pids"; wait ;;
esac
exit 0
"""


class Hook:
    """The hook script; one state folder per sink (``spec`` makes both)."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.path = where / "publish.sh"
        self.path.write_text(HOOK)
        self.path.chmod(0o755)

    def spec(self, behaviour: str, *, command: Path | None = None, **extra: str) -> str:
        state = self.where / f"state-{behaviour}-{len(list(self.where.glob('state-*')))}"
        state.mkdir()
        settings = {
            "command": str(command or self.path),
            "args": f"--state {state} {behaviour}",
            **extra,
        }
        return "exec:" + ",".join(f"{k}={v}" for k, v in settings.items())

    def calls(self, spec: str) -> list[dict[str, object]]:
        """What each call of the sink ``spec`` got, in order."""
        state = Path(spec.split("--state ")[1].split(" ")[0])
        count = int((state / "count").read_text()) if (state / "count").exists() else 0
        out: list[dict[str, object]] = []
        for n in range(1, count + 1):
            env = (state / f"{n}.env").read_text().splitlines()
            pids = state / f"{n}.pids"
            out.append(
                {
                    "argv": (state / f"{n}.argv").read_text().splitlines(),
                    "env": dict(line.split("=", 1) for line in env if "=" in line),
                    "stdin": (state / f"{n}.stdin").read_bytes(),
                    "pids": [int(p) for p in pids.read_text().split()] if pids.exists() else [],
                }
            )
        return out


@pytest.fixture
def hook(tmp_path: Path) -> Hook:
    return Hook(tmp_path)


def rotate(svc: BlockingService, names: list[str]) -> BatchResult:
    async def go() -> BatchResult:
        async with Engine(svc.kernel, FAST) as engine:
            return await engine.rotate([RotationRequest(n) for n in names])

    return asyncio.run(go())


def current(svc: BlockingService, name: str) -> tuple[int, str]:
    """The CURRENT version's number and value."""
    (version,) = [v.number for v in svc.show(name).versions if v.stage is Stage.CURRENT]
    return version, svc.get_value(name).reveal_text()


def audit_of(svc: BlockingService, name: str, action: str) -> list[dict[str, object]]:
    return [e.details for e in svc.audit_entries(credential=name) if e.action == action]


@SQLITE
def test_exec_sink_publishes_each_new_current_value_in_order_on_stdin_only(
    svc: BlockingService, hook: Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two rotations, two exec sinks (``input=json`` and ``input=raw``): each rotation runs
    each hook once with ``publish CREDENTIAL VERSION`` after the fixed args; the JSON sink's
    stdin is ``{"operation", "credential", "version", "value"}`` with the new CURRENT value,
    the raw sink's the value's bytes alone; values arrive in rotation order; no value is in
    any argv, the environment is PATH and LANG only (none of rotator's), and the audit holds
    one value-free ``sink.write`` per write."""
    monkeypatch.setenv("ROTATOR_PASSPHRASE", "passphrase-must-not-reach-the-hook")
    as_json, as_raw = hook.spec("ok"), hook.spec("ok", input="raw", timeout_s="5")
    svc.add_credential("app/db", "local", value=ValueInput(generate=True), sinks=[as_json, as_raw])
    assert hook.calls(as_json) == [], "sinks run after rotations, not at add"
    published: list[tuple[int, str]] = []
    for _ in range(2):
        result = rotate(svc, ["app/db"]).to_json()
        assert result["rotated"] == ["app/db"], result
        assert not result["warnings"], result
        published.append(current(svc, "app/db"))
    assert published[0][0] + 1 == published[1][0]
    assert published[0][1] != published[1][1]

    json_calls, raw_calls = hook.calls(as_json), hook.calls(as_raw)
    assert [json.loads(c["stdin"]) for c in json_calls] == [  # type: ignore[arg-type]
        {"operation": "publish", "credential": "app/db", "version": v, "value": value}
        for v, value in published
    ]
    assert [c["stdin"] for c in raw_calls] == [value.encode() for _, value in published]
    for calls in (json_calls, raw_calls):
        assert [c["argv"][-3:] for c in calls] == [
            ["publish", "app/db", str(v)] for v, _ in published
        ]
        for c in calls:
            argv, env = c["argv"], c["env"]
            assert isinstance(argv, list)
            assert isinstance(env, dict)
            assert argv[:2] == [str(hook.path), "--state"]
            assert set(env) <= {"PATH", "LANG", "PWD"}, env  # PWD: the shell's own
            assert env.get("PWD", "/") == "/"
            exposed = [*argv, *env.values()]
            assert not any(value in x for _, value in published for x in exposed)
            assert "passphrase-must-not-reach-the-hook" not in exposed

    writes = audit_of(svc, "app/db", "sink.write")
    path = str(hook.path)
    assert [w["sink"] for w in writes] == [f"exec {path} (json)", f"exec {path} (raw)"] * 2
    audit = json.dumps([e.to_json() for e in svc.audit_entries()])
    assert not any(value in audit for _, value in published)


@SQLITE
def test_exec_sink_retries_exit_75_a_signal_and_the_timeout_and_reports_other_failures(
    svc: BlockingService,
    hook: Hook,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Six credentials rotated at once, each with a failing hook. Exit 75 twice then 0: the
    third attempt writes (``sink.write``, no warning). Always 75, killed by a signal, or past
    ``timeout_s`` (the hook and its child killed): ``sink.failed`` reason ``unavailable``
    after 3 attempts. Exit 1 printing the value on stdout and stderr, or a command no longer
    executable: ``sink.failed`` reason ``error`` after 1 attempt. Every rotation stays done
    (CURRENT moved); a failure is a warning naming the status, and the new value is in no
    result, audit entry, log record or output of the test."""
    caplog.set_level(logging.DEBUG)
    unexecutable = tmp_path / "was-executable.sh"
    unexecutable.write_text(HOOK)
    unexecutable.chmod(0o755)
    specs = {
        "app/flaky": hook.spec("tempfail2"),
        "app/leaky": hook.spec("echo-fail"),
        "app/down": hook.spec("tempfail"),
        "app/killed": hook.spec("signal"),
        "app/slow": hook.spec("hang", timeout_s="0.3"),
        "app/gone": hook.spec("ok", command=unexecutable),
    }
    before = {}
    for name, spec in specs.items():
        svc.add_credential(name, "local", value=ValueInput(generate=True), sinks=[spec])
        before[name] = current(svc, name)
    unexecutable.chmod(0o644)  # after the add: the check is made before each write

    result = rotate(svc, list(specs))
    data = result.to_json()
    assert sorted(data["rotated"]) == sorted(specs), data
    after = {name: current(svc, name) for name in specs}
    for name in specs:
        assert after[name][0] == before[name][0] + 1, "CURRENT moved: the rotation is done"

    flaky = hook.calls(specs["app/flaky"])
    assert len(flaky) == 3
    assert json.loads(flaky[-1]["stdin"])["value"] == after["app/flaky"][1]  # type: ignore[arg-type]
    assert len(audit_of(svc, "app/flaky", "sink.write")) == 1
    assert audit_of(svc, "app/flaky", "sink.failed") == []

    warnings = {w["name"]: w["warning"] for w in data["warnings"]}
    assert sorted(warnings) == sorted(set(specs) - {"app/flaky"}), warnings
    expected = {
        "app/leaky": ("error", 1, "publish: hook failed (exit status 1)"),
        "app/down": ("unavailable", 3, "publish: hook reported a temporary failure"),
        "app/killed": ("unavailable", 3, "publish: hook was killed by SIGKILL"),
        "app/slow": ("unavailable", 3, "publish: hook did not finish within 0.3s"),
        "app/gone": ("error", 1, f"publish: hook command {str(unexecutable)!r} is not exec"),
    }
    for name, (reason, attempts, message) in expected.items():
        (failed,) = audit_of(svc, name, "sink.failed")
        assert failed["reason"] == reason, (name, failed)
        assert failed["attempts"] == attempts, (name, failed)
        assert message in str(failed["error"]), (name, failed)
        assert message in warnings[name], (name, warnings[name])
        assert audit_of(svc, name, "sink.write") == []
        assert len(hook.calls(specs[name])) == (0 if name == "app/gone" else attempts)

    pids = [p for c in hook.calls(specs["app/slow"]) for p in c["pids"]]  # type: ignore[attr-defined]
    assert len(pids) == 2 * 3  # each attempt's hook and its `sleep` child
    deadline = time.monotonic() + 10
    while not all(gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(gone(p) for p in pids), "the hook's whole process group is killed"

    (leaky_call,) = hook.calls(specs["app/leaky"])
    assert json.loads(leaky_call["stdin"])["value"] == after["app/leaky"][1]  # type: ignore[arg-type]
    out, err = capfd.readouterr()
    shown = [
        json.dumps(data),
        json.dumps([e.to_json() for e in svc.audit_entries()]),
        "\n".join(r.getMessage() for r in caplog.records),
        out + err,
    ]
    for value in [v for _, v in after.values()]:
        assert not any(value in text for text in shown)


@SQLITE
def test_a_bad_exec_sink_spec_exits_2_with_one_line_and_stores_nothing(
    svc: BlockingService, settings: Settings
) -> None:
    """``credential add --sink exec:...`` with a relative command, no command, args a shell
    cannot split, an unknown input or setting, or a timeout out of range: exit 2, one stderr
    line naming the problem without repeating the value, no credential and no audit entry
    added."""
    env = {**base_env(), "ROTATOR_HOME": str(settings.home), "ROTATOR_DB": settings.db_url}
    audit_before = len(svc.audit_entries())
    cases = [
        ("exec:command=relative/hook-xyz.sh", "command must be an absolute path", "hook-xyz"),
        ("exec:args=--only", "'command'", "--only"),
        ("exec:command=/bin/true,args='unclosed-xyz", "cannot be split", "unclosed-xyz"),
        ("exec:command=/bin/true,input=yaml-xyz", "'input'", "yaml-xyz"),
        ("exec:command=/bin/true,timeout_s=0", "'timeout_s'", "timeout_s=0"),
        ("exec:command=/bin/true,mode=dual", "unknown setting 'mode'", "dual"),
    ]
    for spec, named, hidden in cases:
        args = ["credential", "add", "app/new", "-c", "local", "--generate", "--sink", spec]
        line = assert_bad_input(cli(args, env), "sink 'exec'", named)
        assert hidden not in line, line
    assert svc.list_credentials() == []
    assert len(svc.audit_entries()) == audit_before
