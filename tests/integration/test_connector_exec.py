"""The ``exec`` connector with real hook processes (issue 13, item 4).

The hook is a real executable Python script written into ``tmp_path``: its "target" is a
folder holding, per credential, the values the target accepts (``set`` adds one, ``revoke``
and ``rollback`` remove one, ``test`` exits 1 unless the value is there), and it appends every
call it gets (its argv, its whole environment and what it read on stdin) to ``calls.jsonl``,
so a test can check that no value ever reached a hook's arguments or environment. Its fixed
``args`` (a setting of the connector) make it fail on purpose: ``--fail set:75:2`` exits 75
on the first two ``set`` calls of a credential, ``--hang set`` starts a child and sleeps past
the timeout, ``--echo`` prints what it read (the value) on stdout and stderr.

Engine-level tests run on SQLite and PostgreSQL (``svc``); the CLI test runs the real console
script against the same store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.integration.test_cli_bad_input import Run, assert_bad_input, base_env, run_cli
from tests.support.fuzz import run_in_process

from rotator.config import Settings
from rotator.connectors import base as cb
from rotator.connectors.exec import ExecConnector
from rotator.domain.model import Stage
from rotator.domain.secret import Secret
from rotator.engine import Engine, EngineOptions, Outcome, RotationRequest, Trigger
from rotator.errors import InvalidInput
from rotator.service import BlockingService, PolicyInput

FAST = EngineOptions(retry_initial_s=0.001, retry_max_s=0.01, retry_attempts=3)

HOOK = r"""#!{python} -IS
import fcntl, json, os, subprocess, sys, time

def main():
    argv = sys.argv[1:]
    state, fails, hang, echo, raw_input, flood = None, {}, None, False, False, False
    while argv and argv[0].startswith("--"):
        flag = argv.pop(0)
        if flag == "--state":
            state = argv.pop(0)
        elif flag == "--fail":
            op, code, *times = argv.pop(0).split(":")
            fails[op] = (int(code), int(times[0]) if times else None)
        elif flag == "--hang":
            hang = argv.pop(0)
        elif flag == "--echo":
            echo = True
        elif flag == "--raw":
            raw_input = True
        elif flag == "--flood":
            flood = True
    op, name, version = argv
    raw = sys.stdin.buffer.read()
    with open(os.path.join(state, "calls.jsonl"), "a") as log:
        fcntl.flock(log, fcntl.LOCK_EX)
        log.write(json.dumps({"argv": sys.argv, "env": dict(os.environ), "pid": os.getpid(),
                              "stdin": raw.decode("utf-8", "replace")}) + "\n")
    if echo:
        sys.stdout.write(raw.decode("utf-8", "replace"))
        sys.stderr.write(raw.decode("utf-8", "replace"))
        sys.stdout.flush(); sys.stderr.flush()
    safe = name.replace("/", "%")
    if hang == op:
        child = subprocess.Popen(["sleep", "60"])
        with open(os.path.join(state, "hung-" + safe), "a") as f:
            f.write("%d %d\n" % (os.getpid(), child.pid))
        time.sleep(60)
    if op in fails:
        code, times = fails[op]
        counter = os.path.join(state, "count-%s-%s" % (op, safe))
        n = int(open(counter).read()) if os.path.exists(counter) else 0
        open(counter, "w").write(str(n + 1))
        if times is None or n < times:
            sys.exit(code)
    if op == "generate":
        sys.stdout.write("x" * 100000 if flood else "made-by-hook-%s\n" % os.urandom(8).hex())
        return
    value = raw.decode() if raw_input else json.loads(raw)["value"]
    path = os.path.join(state, "target", safe + ".json")
    valid = json.load(open(path)) if os.path.exists(path) else []
    if op == "set" and value not in valid:
        valid.append(value)
    elif op in ("revoke", "rollback") and value in valid:
        valid.remove(value)
    elif op == "test" and value not in valid:
        sys.exit(1)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(valid, f)
    os.replace(tmp, path)

main()
"""


class Hook:
    """The hook script and its state folder (target values and the call log)."""

    def __init__(self, where: Path) -> None:
        self.state = where / "hook-state"
        (self.state / "target").mkdir(parents=True)
        self.path = where / "hook.py"
        self.path.write_text(HOOK.replace("{python}", sys.executable))
        self.path.chmod(0o755)

    def settings(self, *flags: str, **extra: str) -> dict[str, str]:
        return {
            "command": str(self.path),
            "args": " ".join(["--state", str(self.state), *flags]),
            "mode": "dual",
            **extra,
        }

    def accepts(self, name: str, value: Secret) -> bool:
        path = self.state / "target" / (name.replace("/", "%") + ".json")
        valid = json.loads(path.read_text()) if path.exists() else []
        return value.reveal_text() in valid

    def calls(self, name: str | None = None, op: str | None = None) -> list[dict[str, Any]]:
        lines = (self.state / "calls.jsonl").read_text().splitlines()
        found = [json.loads(line) for line in lines]
        return [
            c
            for c in found
            if (name is None or c["argv"][-2] == name) and (op is None or c["argv"][-3] == op)
        ]

    def hung(self, name: str) -> list[int]:
        path = self.state / ("hung-" + name.replace("/", "%"))
        return [int(p) for line in path.read_text().split("\n") if line for p in line.split()]


# The same target in POSIX shell, for input=raw (stdin is the value alone): a shell starts
# in a tenth of a Python's time, and the many-credentials test makes about 200 calls.
SH_HOOK = r"""#!/bin/sh
state=$2
call=$(mktemp "$state/calls/XXXXXXXX")
printf '%s\n' "$0" "$@" > "$call.argv"
env > "$call.env"
shift 2
op=$1 name=$2
value=$(cat)
printf '%s' "$value" > "$call.stdin"
t="$state/target/$(printf '%s' "$name" | tr / %)"
touch "$t"
case "$op" in
  set) grep -qxF -- "$value" "$t" || printf '%s\n' "$value" >> "$t" ;;
  test) grep -qxF -- "$value" "$t" || exit 1 ;;
  revoke|rollback) grep -vxF -- "$value" "$t" > "$t.tmp"; mv "$t.tmp" "$t" ;;
esac
exit 0
"""


class ShHook(Hook):
    """SH_HOOK: values as lines of the target file; each call's argv, environment and stdin
    in files of its own."""

    def __init__(self, where: Path) -> None:
        self.state = where / "sh-hook-state"
        (self.state / "target").mkdir(parents=True)
        (self.state / "calls").mkdir()
        self.path = where / "hook.sh"
        self.path.write_text(SH_HOOK)
        self.path.chmod(0o755)

    def settings(self, *flags: str, **extra: str) -> dict[str, str]:
        return super().settings(*flags, input="raw", **extra)

    def accepts(self, name: str, value: Secret) -> bool:
        path = self.state / "target" / name.replace("/", "%")
        return path.exists() and value.reveal_text() in path.read_text().splitlines()

    def calls(self, name: str | None = None, op: str | None = None) -> list[dict[str, Any]]:
        found = []
        for argv in sorted((self.state / "calls").glob("*.argv")):
            stem = argv.with_suffix("")
            env = stem.with_suffix(".env").read_text().splitlines()
            found.append(
                {
                    "argv": argv.read_text().splitlines(),
                    "env": dict(line.split("=", 1) for line in env if "=" in line),
                    "stdin": stem.with_suffix(".stdin").read_text(),
                }
            )
        return [
            c
            for c in found
            if (name is None or c["argv"][-2] == name) and (op is None or c["argv"][-3] == op)
        ]


@pytest.fixture
def hook(tmp_path: Path) -> Hook:
    return Hook(tmp_path)


@pytest.fixture
def sh_hook(tmp_path: Path) -> ShHook:
    return ShHook(tmp_path)


def cli(args: list[str], env: dict[str, str]) -> Run:
    """``rotator ARGS`` in this process (cheaper than a process where a process proves
    nothing more)."""
    return run_in_process(args, env, b"")


def rotate(svc: BlockingService, reqs: list[RotationRequest], opts: EngineOptions = FAST) -> Any:
    async def go() -> Any:
        async with Engine(svc.kernel, opts) as engine:
            return await engine.rotate(reqs)

    return asyncio.run(go())


def values_sent(hook: Hook) -> set[str]:
    """Every value (and previous value) any hook call read on stdin."""
    out = set()
    for call in hook.calls():
        if isinstance(hook, ShHook):  # input=raw: stdin is the value
            out.add(call["stdin"])
            continue
        doc = json.loads(call["stdin"] or "{}")
        out.update(v for v in (doc.get("value"), doc.get("previous")) if v)
    return out - {""}


def gone(pid: int) -> bool:
    """The process is dead (no such process, or a zombie not reaped by an init that never
    reaps: it runs nothing any more)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_twenty_credentials_rotate_at_once_and_the_hook_never_sees_a_value_in_argv_or_env(
    svc: BlockingService, sh_hook: ShHook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 credentials through one hook, rotated concurrently twice: every CURRENT is accepted
    by the hook's target, PREVIOUS too during its grace and refused after it (dual), an
    emergency rotation removes the old value before it returns; the hook got each value on
    stdin only (input=raw: the value alone): never in its arguments, and its environment is
    the minimal one."""
    monkeypatch.setenv("ROTATOR_PASSPHRASE", "passphrase-must-not-reach-the-hook")
    names = [f"exec/app-{i:02d}" for i in range(20)]
    for name in names:
        svc.add_credential(
            name, "exec", settings=sh_hook.settings(), policy=PolicyInput(grace="10m"), verify=True
        )
    for _ in range(2):
        result = rotate(svc, [RotationRequest(n) for n in names])
        assert sorted(result.to_json()["rotated"]) == names, result.to_json()
    current = {n: svc.get_value(n) for n in names}
    previous = {n: svc.get_value(n, Stage.PREVIOUS) for n in names}
    assert all(sh_hook.accepts(n, current[n]) for n in names)
    assert all(sh_hook.accepts(n, previous[n]) for n in names), "PREVIOUS is valid in its grace"

    later = svc.clock() + timedelta(minutes=11)
    svc.kernel.clock = lambda: later

    async def revoke_due() -> dict[int, bool]:
        async with Engine(svc.kernel, FAST) as engine:
            return await engine.process_revocations()

    assert list(asyncio.run(revoke_due()).values()) == [True] * 20
    assert not any(sh_hook.accepts(n, previous[n]) for n in names), "PREVIOUS refused after grace"
    assert all(sh_hook.accepts(n, current[n]) for n in names)

    urgent = names[:3]
    result = rotate(svc, [RotationRequest(n, trigger=Trigger.EMERGENCY, grace_s=0) for n in urgent])
    assert sorted(result.to_json()["rotated"]) == urgent, result.to_json()
    for n in urgent:
        assert not sh_hook.accepts(n, current[n]), "an emergency revokes the old value at once"
        assert sh_hook.accepts(n, svc.get_value(n))

    # What each call got: the operation, the credential and the version as arguments (after
    # the fixed args), the values on stdin only, and nothing of rotator's environment.
    calls = sh_hook.calls()
    ops = {c["argv"][-3] for c in calls}
    assert ops == {"verify", "set", "test", "finish", "revoke"}
    for c in calls:
        assert c["argv"][1:3] == ["--state", str(sh_hook.state)]
        assert c["argv"][-2] in names
        assert c["argv"][-1].isdigit()
        assert set(c["env"]) <= {"PATH", "LANG", "PWD"}, c["env"]  # PWD: the shell's own
    sent = values_sent(sh_hook)
    assert len(sent) == 20 * 2 + 3  # two values each, plus the emergencies' new ones
    for c in calls:
        exposed = [*c["argv"], *c["env"].values()]
        assert not any(v in arg for v in sent for arg in exposed)
        assert "passphrase-must-not-reach-the-hook" not in exposed


def test_hook_failures_exit_75_retried_exit_1_rolled_back_timeout_killed(
    svc: BlockingService, hook: Hook
) -> None:
    """Three rotations at once through failing hooks: exit 75 twice then success is retried
    and rotates; exit 1 (with the value printed on stdout and stderr) is permanent: no retry,
    rolled back, the error names the exit status and nothing printed; a hook that hangs is
    killed with its child at the timeout (each retry too), then rolled back."""
    svc.add_credential("exec/flaky", "exec", settings=hook.settings("--fail", "set:75:2"))
    svc.add_credential("exec/broken", "exec", settings=hook.settings("--fail", "set:1", "--echo"))
    svc.add_credential(
        "exec/slow", "exec", settings=hook.settings("--hang", "set", timeout_s="0.5")
    )
    names = ["exec/flaky", "exec/broken", "exec/slow"]
    result = rotate(svc, [RotationRequest(n) for n in names])
    by_name = {r.name: r for r in result.results}

    assert by_name["exec/flaky"].outcome is Outcome.ROTATED
    assert len(hook.calls("exec/flaky", "set")) == 3
    assert hook.accepts("exec/flaky", svc.get_value("exec/flaky"))

    broken = by_name["exec/broken"]
    assert broken.outcome is Outcome.ROLLED_BACK, result.to_json()
    assert "hook failed (exit status 1)" in str(broken.error)
    assert len(hook.calls("exec/broken", "set")) == 1, "a permanent failure is not retried"
    (rollback,) = hook.calls("exec/broken", "rollback")
    candidate = json.loads(rollback["stdin"])["value"]
    assert candidate not in json.dumps(result.to_json())
    assert Stage.CURRENT not in {v.stage for v in svc.show("exec/broken").versions}

    slow = by_name["exec/slow"]
    assert slow.outcome is Outcome.ROLLED_BACK, result.to_json()
    assert "did not finish within 0.5s and was killed" in str(slow.error)
    assert len(hook.calls("exec/slow", "set")) == FAST.retry_attempts
    assert len(hook.calls("exec/slow", "rollback")) == 1
    pids = hook.hung("exec/slow")
    assert len(pids) == 2 * FAST.retry_attempts  # each hook and its `sleep` child
    deadline = time.monotonic() + 10
    while not all(gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(gone(p) for p in pids), "the hook's whole process group is killed"
    sent = values_sent(hook)
    for entry in svc.audit_entries():
        text = json.dumps(entry.details, default=str)
        assert not any(v in text for v in sent)
    for c in hook.calls():  # what a Python hook sees of its environment: ours, nothing more
        assert set(c["env"]) <= {"PATH", "LANG", "LC_CTYPE"}, c["env"]
        assert not any(v in arg for v in sent for arg in c["argv"])


def test_generate_reads_the_hooks_stdout_raw_input_is_the_value_alone_and_cancel_kills(
    hook: Hook,
) -> None:
    """Direct connector calls (no store). ``generator=hook``: the value is what ``generate``
    printed, less one newline; printing more than 64 KiB is a permanent error. ``input=raw``:
    stdin is the value's bytes alone; with ``input=json`` a value that is not UTF-8 is refused
    naming input=raw, and input=raw with mode=single is refused. A hook that exits 0 leaving
    a child in the background (holding stdout) returns at its exit and the child is killed.
    A call cancelled by its caller (the engine's step timeout) kills the hook and its child at
    once."""
    conn = ExecConnector()
    raw = cb.parse_config(conn, hook.settings("--raw", input="raw", generator="hook"))
    # A single-mode rollback must put the previous value back: raw stdin cannot carry it.
    with pytest.raises(InvalidInput, match="input=raw needs mode=dual"):
        cb.parse_config(conn, hook.settings(input="raw", mode="single"))

    async def go() -> None:
        value = await conn.create(cb.CreateRequest("exec/gen", 1, raw))
        assert value.reveal_text().startswith("made-by-hook-")
        assert not value.reveal_text().endswith("\n")
        await conn.set(cb.SetRequest("exec/gen", 1, raw, pending=value, current=None))
        await conn.test(cb.TestRequest("exec/gen", 1, raw, pending=value))
        (set_call,) = hook.calls("exec/gen", "set")
        assert set_call["stdin"] == value.reveal_text()
        assert hook.accepts("exec/gen", value)

        flood = cb.parse_config(conn, hook.settings("--flood", generator="hook"))
        with pytest.raises(cb.PermanentError, match="printed more than 65536 bytes"):
            await conn.create(cb.CreateRequest("exec/flood", 1, flood))
        json_cfg = cb.parse_config(conn, hook.settings())
        await conn.set(cb.SetRequest("exec/json", 7, json_cfg, Secret("new"), Secret("old")))
        (json_set,) = hook.calls("exec/json", "set")
        assert json.loads(json_set["stdin"]) == {
            "operation": "set",
            "credential": "exec/json",
            "version": 7,
            "value": "new",
            "previous": "old",
        }
        with pytest.raises(cb.PermanentError, match="use input=raw"):
            await conn.set(cb.SetRequest("exec/bin", 1, json_cfg, Secret(b"\xff\xfe"), None))

        # A hook that exits 0 leaving a child in the background (holding stdout for
        # generate): the call returns when the hook exits, with what it printed, and the
        # child is killed with the hook's group.
        bg, bg_pids = hook.path.parent / "bg.sh", hook.path.parent / "bg.pids"
        bg.write_text(
            "#!/bin/sh\ncat >/dev/null\nsleep 300 &\n"
            f'echo $! >> {bg_pids}\n[ "$1" = generate ] && echo value-from-bg\nexit 0\n'
        )
        bg.chmod(0o755)
        bg_cfg = cb.parse_config(
            conn, {"command": str(bg), "mode": "dual", "generator": "hook", "timeout_s": "5"}
        )
        try:
            made = await conn.create(cb.CreateRequest("exec/bg", 1, bg_cfg))
            assert made.reveal_text() == "value-from-bg"
            await conn.set(cb.SetRequest("exec/bg", 1, bg_cfg, pending=made, current=None))
            children = [int(p) for p in bg_pids.read_text().split()]
            assert len(children) == 2
            for _ in range(200):
                if all(gone(p) for p in children):
                    break
                await asyncio.sleep(0.05)
            assert all(gone(p) for p in children), "a successful hook's children are killed"
        finally:
            for pid in (int(p) for p in bg_pids.read_text().split()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

        hang = cb.parse_config(conn, hook.settings("--hang", "set"))
        call = asyncio.create_task(
            conn.set(cb.SetRequest("exec/hang", 1, hang, pending=value, current=None))
        )
        marker = hook.state / "hung-exec%hang"
        while not (marker.exists() and len(marker.read_text().split()) == 2):
            await asyncio.sleep(0.02)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        pids = hook.hung("exec/hang")
        for _ in range(200):
            if all(gone(p) for p in pids):
                break
            await asyncio.sleep(0.05)
        assert all(gone(p) for p in pids)

    asyncio.run(go())


# ------------------------------------------------------------------------------ the CLI


@pytest.fixture
def cli_env(svc: BlockingService, settings: Settings) -> dict[str, str]:
    """The console script's environment on ``svc``'s (initialized) store."""
    return {**base_env(), "ROTATOR_HOME": str(settings.home), "ROTATOR_DB": settings.db_url}


def test_the_cli_never_shows_a_value_the_failing_hook_printed_and_verify_checks_the_command(
    cli_env: dict[str, str], hook: Hook, tmp_path: Path
) -> None:
    """`rotate --json` (the real console script, debug logs on) with a hook that prints the
    value on stdout and stderr and exits 1: exit 1, rolled back, the error names the exit
    status; the value is in no output, log line or audit entry. `credential add --verify`
    with a missing or non-executable command, and any add with a relative one: exit 2, one
    line naming the command, nothing stored."""
    settings = hook.settings("--fail", "set:1", "--echo")
    add = ["credential", "add", "exec/leaky", "--connector", "exec", "--verify"]
    add += [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    assert cli(add, cli_env).code == 0
    rotated = run_cli(["--log-level", "debug", "rotate", "exec/leaky", "--json"], cli_env)
    assert rotated.code == 1, rotated.describe()
    report = json.loads(rotated.out)
    assert report["rolled_back"] == ["exec/leaky"], rotated.describe()
    assert "set: hook failed (exit status 1)" in report["failed"][0]["error"]
    audit = cli(["audit", "export"], cli_env)
    assert audit.code == 0, audit.describe()
    (set_call,) = hook.calls("exec/leaky", "set")
    candidate = json.loads(set_call["stdin"])["value"]
    for shown in (rotated, audit):
        assert candidate not in shown.out + shown.err, shown.describe()

    not_executable = tmp_path / "not-executable.sh"
    not_executable.write_text("#!/bin/sh\nexit 0\n")
    not_executable.chmod(stat.S_IRUSR | stat.S_IWUSR)
    for command, named, verify in [
        (str(tmp_path / "missing-hook"), "does not exist", True),
        (str(not_executable), "is not executable", True),
        ("hook.sh", "absolute path", False),
    ]:
        args = ["credential", "add", "exec/bad", "--connector", "exec", "--set"]
        args += [f"command={command}"] + (["--verify"] if verify else [])
        assert_bad_input(cli(args, cli_env), named, command)
    listed = cli(["credential", "list", "--json"], cli_env)
    assert [c["name"] for c in json.loads(listed.out)] == ["exec/leaky"]
