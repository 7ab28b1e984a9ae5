"""The CLI against a real ``rotator serve`` (ROTATOR_URL + ROTATOR_TOKEN): each covered command
prints what it prints locally on the same store, with the same exit code; bad input, a bad
token, a command that runs only where the store is and a server that is down are one-line
exit 2."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.conftest import free_port
from tests.support.fuzz import run_in_process
from tests.support.server import ROTATOR, ServeProcess, serve_env

from rotator.config import Settings
from rotator.service import BlockingService

TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)?")
DURATION = re.compile(r"(\bin )\d+\.\d\ds|(\"duration_s\": )[\d.]+")
NUMBER = re.compile(r"\d+(\.\d+)?")
# Each twin's risk event has its own id.
EVENT_ID = re.compile(r"(\"event_id\": |^event )\d+", re.MULTILINE)


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
    # Run the CLI through its entry point in this process instead of a fresh process each
    # (tests.support.fuzz.run_in_process: the same streams' encodings, the same environment).
    in_process: bool = False

    def local(self, *args: str, stdin: str | None = None) -> Run:
        return _run(serve_env(self.home, self.db_url), args, stdin, self.in_process)

    def remote(
        self,
        *args: str,
        stdin: str | None = None,
        url: str | None = None,
        token: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> Run:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
        # No store for the remote CLI: everything it prints came from the server.
        env["ROTATOR_HOME"] = str(self.home.parent / "no-such-home")
        env["ROTATOR_URL"] = url or self.url
        env["ROTATOR_TOKEN"] = self.token if token is None else token
        env.update(extra or {})
        return _run(env, args, stdin, self.in_process)


def _run(
    env: dict[str, str], args: tuple[str, ...], stdin: str | None, in_process: bool = False
) -> Run:
    if in_process:
        here = run_in_process(args, env, (stdin or "").encode())
        return Run(here.code, here.out, here.err)
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
    text = EVENT_ID.sub(lambda m: m.group(1) + "<N>", text)
    if remote_prefix is not None:
        text = text.replace(remote_prefix, "l/").replace("pair=r", "pair=l")
    return text


@pytest.fixture
def remote(tmp_path: Path, db_url: str) -> Iterator[Remote]:
    home = tmp_path / "home"
    svc, _ = BlockingService.init(Settings(home=home, db_url=db_url))
    try:
        svc.add_principal("ops", "admin")
        token = svc.create_token("ops")[1]
    finally:
        svc.close()
    with ServeProcess(serve_env(home, db_url)) as srv:
        yield Remote(home, db_url, srv.base_url, token, srv)


def one_line_error(run: Run, *never: str) -> None:
    """Bad input's shape: one stderr line, no traceback, none of ``never`` in it."""
    assert run.out == ""
    assert len(run.err.splitlines()) == 1, run.err
    assert run.err.startswith("rotator: error: "), run.err
    assert "Traceback" not in run.err
    for text in never:
        assert text not in run.err


def same(r: Remote, *args: str, stdin: str | None = None, numbers: bool = False) -> Run:
    """Run ``args`` locally, then remotely on the same store state: same stdout (normalized;
    ``numbers``: every number too, for reports of ages that grow between the two runs) and
    exit code."""
    loc = r.local(*args, stdin=stdin)
    rem = r.remote(*args, stdin=stdin)
    assert rem.code == loc.code, (args, loc, rem)
    if numbers:
        assert NUMBER.sub("<N>", normalize(rem.out)) == NUMBER.sub("<N>", normalize(loc.out))
    else:
        assert normalize(rem.out) == normalize(loc.out), args
    return rem


def same_on_own(r: Remote, *args: str, stdin: str | None = None) -> Run:
    """A changing command: locally on ``l/...`` (tag ``pair=l``), remotely on the twin
    ``r/...`` (``pair=r``)."""
    loc = r.local(*args, stdin=stdin)
    rem = r.remote(*[a.replace("l/", "r/").replace("pair=l", "pair=r") for a in args], stdin=stdin)
    assert rem.code == loc.code, (args, loc, rem)
    assert normalize(rem.out, "r/") == normalize(loc.out), args
    return rem


# SQLite only: both sides of every comparison read the same store through the same service
# views, so the store's backend cannot make them differ; the API's PostgreSQL behaviour is
# covered by the API tests (test_api_*.py, test_e2e_api.py).
# In process: what is compared is what the local and the remote code paths print, and some 90
# fresh processes (each ~0.7 s of imports) made this the suite's single largest cost. The
# remote side still talks HTTP to the real `rotator serve` process; the other tests of this
# module run the CLI as real processes against it (exit codes, stderr lines, a server down).
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_covered_commands_print_the_same_remotely_as_locally(remote: Remote) -> None:
    r = remote
    r.in_process = True
    for p in ("l/", "r/"):
        add = r.local(
            "credential", "add", f"{p}db", "-c", "local", "--generate", "--tag", f"pair={p[0]}",
            "--every", "30d", "--grace", "1h",
        )  # fmt: skip
        assert add.code == 0, add.err
        assert r.local("credential", "add", f"{p}cache", "-c", "local", "--value-stdin",
                       stdin="v1\n").code == 0  # fmt: skip
    # Writes, each on its own twin.
    added = same_on_own(
        r, "credential", "add", "l/new", "-c", "local", "--value-stdin", "--tag", "team=a",
        stdin="hello\n",
    )  # fmt: skip
    assert added.out.startswith("added r/new")
    same_on_own(r, "credential", "add", "l/gen", "-c", "local", "--generate", "--json")
    same_on_own(r, "credential", "update", "l/new", "--every", "7d", "--tag", "team=b")
    same_on_own(r, "credential", "update", "l/gen", "--value-stdin", "--json", stdin="x\n")
    same_on_own(r, "credential", "used", "l/cache", "--count", "3")
    same_on_own(r, "credential", "used", "l/cache", "--json")
    same_on_own(r, "rotate", "l/db")
    same_on_own(r, "rotate", "l/db", "--emergency", "--json")
    same_on_own(r, "rotate", "--tag", "pair=l", "--json")
    same_on_own(r, "credential", "remove", "l/gen")
    same_on_own(r, "event", "report", "--kind", "leak.test", "--severity", "low",
                "--credential", "l/cache", "--detail", "seen in a log")  # fmt: skip
    same_on_own(r, "event", "report", "--kind", "leak.test", "--severity", "high",
                "--tag", "pair=l", "--json")  # fmt: skip
    # Reads of one state.
    same(r, "credential", "list")
    same(r, "credential", "list", "--json")
    same(r, "credential", "list", "--tag", "team=b", "--json")
    same(r, "credential", "show", "l/db")
    same(r, "credential", "show", "r/new", "--json")
    assert same(r, "credential", "get", "l/cache").out == "v1\n"
    assert same(r, "credential", "get", "r/new").out == "hello\n"
    # PREVIOUS: the emergency revoked it, then the high-severity event's rotation made one.
    same(r, "credential", "get", "r/db", "--stage", "previous")
    same(r, "rotate", "--all", "--dry-run")
    same(r, "rotate", "l/db", "r/db", "--dry-run", "--json")
    same(r, "audit", "list", "--credential", "l/db")
    same(r, "audit", "list", "--limit", "5", "--json")
    same(r, "audit", "head")
    same(r, "event", "list")
    same(r, "event", "list", "--limit", "2", "--json")
    for fmt in ("json", "csv", "html"):
        same(r, "report", "compliance", "--format", fmt, numbers=True)
    entries = json.loads(r.local("audit", "list", "--credential", "l/db", "--json").out)
    rotation_id = next(e["rotation_id"] for e in entries if e["rotation_id"])
    same(r, "report", "evidence", rotation_id)
    same(r, "report", "evidence", rotation_id, "--json")
    assert same(r, "audit", "verify").out.startswith("audit chain ok")
    # Failures too: the same exit code and no output.
    assert same(r, "credential", "show", "l/none").code == 2
    assert same(r, "credential", "add", "l/db", "-c", "local", "--generate").code == 2
    assert same(r, "rotate", "l/none").code == same(r, "rotate", "l/none", "--json").code


def test_bad_input_remotely_exits_2_with_one_line_and_stores_nothing(remote: Remote) -> None:
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
        one_line_error(run, remote.token, "s3cr3t")
    assert remote.local("credential", "list", "--json").out == listed
    assert remote.local("audit", "verify").code == 0


def test_a_wrong_or_missing_token_exits_2_without_echoing_it(remote: Remote) -> None:
    bad = "rtr_" + "x" * 40
    run = remote.remote("credential", "list", token=bad)
    assert run.code == 2
    one_line_error(run, bad)
    run = remote.remote("credential", "list", token="")
    assert run.code == 2
    assert run.err.splitlines() == [
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
        one_line_error(run, remote.token)
        assert "runs on the server's host; unset ROTATOR_URL" in run.err


def test_a_server_that_is_down_exits_2_naming_rotator_url(remote: Remote) -> None:
    down = f"http://user:pw@127.0.0.1:{free_port()}"
    run = remote.remote("credential", "list", url=down)
    assert run.code == 2
    one_line_error(run, remote.token, "pw")
    assert "ROTATOR_URL" in run.err


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rotator test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https_verifies_the_servers_certificate(remote: Remote, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    args = ("--no-scheduler", "--tls-cert", str(cert), "--tls-key", str(key))
    with ServeProcess(serve_env(remote.home, remote.db_url), args) as tls:
        assert tls.base_url.startswith("https://")
        untrusted = remote.remote("credential", "list", url=tls.base_url)
        assert untrusted.code == 2
        one_line_error(untrusted, remote.token)
        assert "ROTATOR_URL" in untrusted.err
        trusted = remote.remote(
            "credential", "list", "--json", url=tls.base_url, extra={"ROTATOR_CA_FILE": str(cert)}
        )
        assert trusted.code == 0, trusted.err
        assert json.loads(trusted.out) == []
        missing = remote.remote(
            "credential", "list", url=tls.base_url, extra={"ROTATOR_CA_FILE": str(tmp_path / "x")}
        )
        assert missing.code == 2
        one_line_error(missing, remote.token)
