"""The CLI against a real ``rotator serve`` (ROTATOR_URL + ROTATOR_TOKEN): each covered command
prints what it prints locally on the same store, with the same exit code; bad input, a bad
token, a command that runs only where the store is and a server that is down are one-line
exit 2."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.conftest import free_port
from tests.support.server import ROTATOR, ServeProcess, serve_env

from rotator.config import Settings
from rotator.service import BlockingService

TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)?")
DURATION = re.compile(r"(\bin )\d+\.\d\ds|(\"duration_s\": )[\d.]+")


@dataclass
class Run:
    code: int
    out: str
    err: str


@dataclass
class Remote:
    home: Path
    db_url: str
    url: str
    token: str
    srv: ServeProcess

    def local(self, *args: str, stdin: str | None = None) -> Run:
        return _run(serve_env(self.home, self.db_url), args, stdin)

    def remote(
        self, *args: str, stdin: str | None = None, url: str | None = None, token: str | None = None
    ) -> Run:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
        # No store for the remote CLI: everything it prints came from the server.
        env["ROTATOR_HOME"] = str(self.home.parent / "no-such-home")
        env["ROTATOR_URL"] = url or self.url
        env["ROTATOR_TOKEN"] = self.token if token is None else token
        return _run(env, args, stdin)


def _run(env: dict[str, str], args: tuple[str, ...], stdin: str | None) -> Run:
    proc = subprocess.run(
        [ROTATOR, *args], env=env, input=stdin, capture_output=True, text=True, timeout=120
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def normalize(text: str, remote_prefix: str | None = None) -> str:
    """Timestamps and durations, which legitimately differ between two runs; and the
    remote run's credential prefix (``r/``) as the local one's (``l/``) where each acted on
    its own, identically made credential."""
    text = TS.sub("<TS>", text)
    text = DURATION.sub(lambda m: (m.group(1) or m.group(2)) + "<D>", text)
    if remote_prefix is not None:
        text = text.replace(remote_prefix, "l/")
    return text


@pytest.fixture
def remote(tmp_path: Path, db_url: str) -> Iterator[Remote]:
    home = tmp_path / "home"
    svc, created = BlockingService.init(Settings(home=home, db_url=db_url))
    try:
        svc.add_principal("ops", "admin")
        token = svc.create_token("ops")[1]
    finally:
        svc.close()
    with ServeProcess(serve_env(home, db_url)) as srv:
        yield Remote(home, db_url, srv.base_url, token, srv)


def same(r: Remote, *args: str, stdin: str | None = None) -> Run:
    """Run ``args`` locally, then remotely on the same store state: same stdout (normalized)
    and exit code."""
    loc = r.local(*args, stdin=stdin)
    rem = r.remote(*args, stdin=stdin)
    assert rem.code == loc.code, (args, loc, rem)
    assert normalize(rem.out) == normalize(loc.out), args
    return rem


def same_on_own(r: Remote, *args: str, stdin: str | None = None) -> Run:
    """A changing command: locally on ``l/...``, remotely on the twin ``r/...``."""
    loc = r.local(*args, stdin=stdin)
    rem = r.remote(*[a.replace("l/", "r/") for a in args], stdin=stdin)
    assert rem.code == loc.code, (args, loc, rem)
    assert normalize(rem.out, "r/") == normalize(loc.out), args
    return rem


def test_covered_commands_print_the_same_remotely_as_locally(remote: Remote) -> None:
    r = remote
    for p in ("l/", "r/"):
        add = r.local(
            "credential", "add", f"{p}db", "-c", "local", "--generate", "--tag", f"pair={p[0]}",
            "--every", "30d", "--grace", "1h",
        )  # fmt: skip
        assert add.code == 0, add.err
        assert r.local("credential", "add", f"{p}cache", "-c", "local", "--value-stdin",
                       stdin="v1\n").code == 0  # fmt: skip
    # Writes, each on its own twin.
    assert same_on_own(r, "credential", "add", "l/new", "-c", "local", "--value-stdin",
                       "--tag", "team=a", stdin="hello\n").out.startswith("added r/new")  # fmt: skip
    same_on_own(r, "credential", "add", "l/gen", "-c", "local", "--generate", "--json")
    same_on_own(r, "credential", "update", "l/new", "--every", "7d", "--tag", "team=b")
    same_on_own(r, "credential", "update", "l/gen", "--value-stdin", "--json", stdin="x\n")
    same_on_own(r, "credential", "used", "l/cache", "--count", "3")
    same_on_own(r, "credential", "used", "l/cache", "--json")
    same_on_own(r, "rotate", "l/db")
    same_on_own(r, "rotate", "l/db", "--emergency", "--json")
    same_on_own(r, "rotate", "--tag", "pair=l", "--json")
    same_on_own(r, "credential", "remove", "l/gen")
    # Reads of one state.
    same(r, "credential", "list")
    same(r, "credential", "list", "--json")
    same(r, "credential", "list", "--tag", "team=b", "--json")
    same(r, "credential", "show", "l/db")
    same(r, "credential", "show", "r/new", "--json")
    assert same(r, "credential", "get", "l/cache").out == "v1\n"
    assert same(r, "credential", "get", "r/new").out == "hello\n"
    # The emergency revoked r/db's (and l/db's) PREVIOUS at once: the same refusal.
    assert same(r, "credential", "get", "r/db", "--stage", "previous").code == 2
    same(r, "rotate", "--all", "--dry-run")
    same(r, "rotate", "l/db", "r/db", "--dry-run", "--json")
    same(r, "audit", "list", "--credential", "l/db")
    same(r, "audit", "list", "--limit", "5", "--json")
    same(r, "audit", "head")
    assert same(r, "audit", "verify").out.startswith("audit chain ok")
    # Failures too: the same exit code and no output.
    assert same(r, "credential", "show", "l/none").code == 2
    assert same(r, "credential", "add", "l/db", "-c", "local", "--generate").code == 2
    assert same(r, "rotate", "l/none").code == same(r, "rotate", "l/none", "--json").code


def test_bad_input_remotely_exits_2_with_one_line_and_stores_nothing(remote: Remote) -> None:
    before = remote.local("audit", "head").out
    listed = remote.local("credential", "list", "--json").out
    for args, stdin in (
        (("credential", "add", "x/y", "-c", "no-such-connector", "--generate"), None),
        (("credential", "add", "bad name", "-c", "local", "--generate"), None),
        (("credential", "add", "x/y", "-c", "local", "--every", "5 parsecs", "--generate"), None),
        (("credential", "update", "x/none", "--value-stdin"), "s3cr3t-value\n"),
        (("credential", "get", "x/none", "--stage", "NEXT"), None),
        (("rotate",), None),
        (("audit", "verify", "--expect-head", "nope"), None),
    ):
        run = remote.remote(*args, stdin=stdin)
        assert run.code == 2, (args, run)
        assert run.out == ""
        assert len(run.err.splitlines()) == 1 and run.err.startswith("rotator: error: "), run.err
        assert "Traceback" not in run.err and "s3cr3t" not in run.err
        assert remote.token not in run.err
    assert remote.local("credential", "list", "--json").out == listed
    assert remote.local("audit", "verify").code == 0
    assert remote.local("audit", "head").out != before or True  # refusals may be audited


def test_a_wrong_or_missing_token_exits_2_without_echoing_it(remote: Remote) -> None:
    bad = "rtr_" + "x" * 40
    run = remote.remote("credential", "list", token=bad)
    assert run.code == 2 and len(run.err.splitlines()) == 1 and bad not in run.err, run
    run = remote.remote("credential", "list", token="")
    assert run.code == 2 and run.err.splitlines() == [
        "rotator: error: ROTATOR_URL is set but ROTATOR_TOKEN is not: the server needs a token"
    ]


def test_commands_of_the_store_host_exit_2_before_any_request(remote: Remote) -> None:
    # Nothing listens at this URL: a request would fail as "cannot reach", not like this.
    down = f"http://127.0.0.1:{free_port()}"
    for args in (
        ("init",),
        ("keys", "rotate"),
        ("principal", "list"),
        ("group", "list"),
        ("serve",),
        ("audit", "export"),
        ("rotate", "--group", "g"),
        ("rotate", "l/db", "--stagger", "1h"),
    ):
        run = remote.remote(*args, url=down)
        assert run.code == 2, (args, run)
        assert len(run.err.splitlines()) == 1 and "runs on the server's host" in run.err, run.err
        assert "unset ROTATOR_URL" in run.err


def test_a_server_that_is_down_exits_2_naming_rotator_url(remote: Remote) -> None:
    down = f"http://user:pw@127.0.0.1:{free_port()}"
    run = remote.remote("credential", "list", url=down)
    assert run.code == 2
    assert len(run.err.splitlines()) == 1 and "ROTATOR_URL" in run.err, run.err
    assert remote.token not in run.err and "pw" not in run.err
