"""SIEM forwarding against real receivers: a webhook receiver process (tests/support/
siem_receiver.py) that fails, dies and restarts; syslog TCP and UDP sockets parsing RFC 5424;
real ``rotator audit forward run`` and ``rotator worker`` processes, killed with SIGKILL."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import free_port

from rotator.config import Settings
from rotator.domain.principal import LOCAL_PRINCIPAL, Grant, Principal, Role
from rotator.domain.secret import Secret
from rotator.errors import InvalidInput, PermissionDenied
from rotator.service import BlockingService, ValueInput, forwarding
from rotator.service.rotation import Selection

CLI = Path(sys.executable).parent / "rotator"
RECEIVER = Path(__file__).resolve().parents[1] / "support" / "siem_receiver.py"
KEY = b"siem-signing-key-0123456789abcdef"


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
    env.update(ROTATOR_HOME=str(settings.home), ROTATOR_DB=settings.db_url, **extra)
    return env


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


class Receiver:
    """The webhook receiver process on a fixed port; restartable on the same port."""

    def __init__(self, tmp: Path, fail_first: int = 0, key: bytes = KEY) -> None:
        self.port = free_port()
        self.log = tmp / "received.jsonl"
        self.fail_first = fail_first
        self.key = key
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(RECEIVER),
                str(self.port),
                str(self.log),
                self.key.hex(),
                str(self.fail_first),
            ]
        )
        wait_for(self._accepts, "the receiver to listen", timeout=30)

    def _accepts(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def lines(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(x) for x in self.log.read_text().splitlines() if x.strip()]

    def accepted(self) -> list[dict[str, Any]]:
        return [x for x in self.lines() if x["event"] == "request" and x["status"] == 200]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    r = Receiver(tmp_path)
    yield r
    r.stop()


def start_forwarder(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(CLI), "audit", "forward", "run", "--poll", "0.1", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    proc.communicate(timeout=60)


def add_webhook(svc: BlockingService, receiver: Receiver, batch: int = 10) -> None:
    svc.add_credential("siem/hmac", "local", value=ValueInput(value=Secret(KEY)))
    svc.add_credential("gen/x", "local", value=ValueInput(generate=True))
    svc.add_forwarder(
        "siem",
        webhook=f"http://127.0.0.1:{receiver.port}/ingest",
        hmac_credential="siem/hmac",
        batch=batch,
    )


def all_seqs(svc: BlockingService) -> list[int]:
    return [e.seq for e in svc.audit_entries()]


def lag(svc: BlockingService) -> int:
    return svc.list_forwarders()[0].lag


def check_well_formed(accepted: list[dict[str, Any]]) -> None:
    for x in accepted:
        assert x["sig_ok"], x
        assert x["content_type"] == "application/json"
        assert x["seqs"], x
        assert x["seqs"] == sorted(x["seqs"]), x
        assert x["delivery"] == f"{x['seqs'][0]}-{x['seqs'][-1]}", x


def first_seen(accepted: list[dict[str, Any]]) -> list[int]:
    out: list[int] = []
    seen: set[int] = set()
    for x in accepted:
        for s in x["seqs"]:
            if s not in seen:
                seen.add(s)
                out.append(s)
    return out


class Generator:
    """Writes audit entries (audited reads) in a loop on a thread until stopped."""

    def __init__(self, svc: BlockingService) -> None:
        self.svc = svc
        self.n = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.svc.get_value("gen/x")
            self.n += 1
            time.sleep(0.005)

    def __enter__(self) -> Generator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


# ------------------------------------------------------------------------------- webhook


def test_a_receiver_failing_twice_then_accepting_gets_every_entry_once_in_order_signed(
    svc: BlockingService, settings: Settings, tmp_path: Path
) -> None:
    receiver = Receiver(tmp_path, fail_first=2)
    add_webhook(svc, receiver, batch=7)
    for _ in range(30):
        svc.get_value("gen/x")
    receiver.start()
    try:
        done = cli(["audit", "forward", "run", "--once"], cli_env(settings))
    finally:
        receiver.stop()
    assert done.returncode == 0, done.stderr
    requests = [x for x in receiver.lines() if x["event"] == "request"]
    assert [x["status"] for x in requests[:2]] == [500, 500]
    # The failed batch is sent again, whole and unchanged, before anything after it.
    assert requests[0]["seqs"] == requests[1]["seqs"] == requests[2]["seqs"]
    accepted = receiver.accepted()
    check_well_formed(accepted)
    delivered = [s for x in accepted for s in x["seqs"]]
    assert delivered == all_seqs(svc)  # every entry, once, in seq order
    assert max(len(x["seqs"]) for x in accepted) <= 7
    (view,) = svc.list_forwarders()
    assert (view.lag, view.last_error, view.delivered) == (0, None, len(delivered))
    # The signing key is nowhere but in the signature.
    seen = done.stdout + done.stderr + receiver.log.read_text() + json.dumps(view.to_json())
    assert KEY.decode() not in seen
    assert KEY.hex() not in seen


def test_a_rotated_hmac_key_signs_the_next_batch_and_its_reads_are_audited_once_per_version(
    svc: BlockingService, settings: Settings, receiver: Receiver
) -> None:
    add_webhook(svc, receiver, batch=3)
    for _ in range(10):
        svc.get_value("gen/x")
    receiver.start()
    assert cli(["audit", "forward", "run", "--once"], cli_env(settings)).returncode == 0
    assert len(receiver.accepted()) >= 4
    assert all(x["sig_ok"] for x in receiver.accepted())
    svc.rotate(Selection(names=["siem/hmac"]))
    new_key = svc.get_value("siem/hmac").reveal()
    assert new_key != KEY
    receiver.stop()
    receiver.key = new_key
    receiver.log.unlink()
    receiver.start()
    done = cli(["audit", "forward", "run", "--once"], cli_env(settings))
    assert done.returncode == 0, done.stderr
    accepted = receiver.accepted()
    assert accepted
    assert all(x["sig_ok"] for x in accepted)
    # The forwarder's own key reads: one audited read per version it used, not per batch.
    key_reads = [
        e
        for e in svc.audit_entries(credential="siem/hmac")
        if e.action == "value.read" and e.actor == "forwarder:siem"
    ]
    assert [e.details["version"] for e in key_reads] == [1, 2]


def test_a_tenant_forwarder_gets_only_its_tenants_entries_and_catches_up_past_the_others(
    svc: BlockingService, settings: Settings, receiver: Receiver
) -> None:
    svc.add_tenant("blue")
    blue = LOCAL_PRINCIPAL.with_tenant("blue")
    svc.add_credential("siem/hmac", "local", value=ValueInput(value=Secret(KEY)), principal=blue)
    for p in (LOCAL_PRINCIPAL, blue):
        svc.add_credential("gen/x", "local", value=ValueInput(generate=True), principal=p)
    svc.add_forwarder(
        "blue",
        webhook=f"http://127.0.0.1:{receiver.port}/",
        hmac_credential="siem/hmac",
        tenant="blue",
        batch=4,
    )
    for _ in range(6):
        svc.get_value("gen/x", principal=blue)
        svc.get_value("gen/x")
    receiver.start()
    done = cli(["audit", "forward", "run", "--once"], cli_env(settings))
    assert done.returncode == 0, done.stderr
    accepted = receiver.accepted()
    check_well_formed(accepted)
    everything = svc.audit_entries(principal=LOCAL_PRINCIPAL.with_tenant("blue"))
    assert [s for x in accepted for s in x["seqs"]] == [e.seq for e in everything]
    assert {e.tenant for e in everything} == {"blue"}
    (view,) = svc.list_forwarders()
    assert view.lag == 0  # its cursor moved past the default tenant's entries too


def test_a_receiver_killed_and_restarted_mid_stream_loses_nothing_and_repeats_only_unacked(
    svc: BlockingService, settings: Settings, receiver: Receiver
) -> None:
    add_webhook(svc, receiver, batch=5)
    receiver.start()
    fwd = start_forwarder(cli_env(settings, ROTATOR_LEASE_SECONDS="2"))
    try:
        with Generator(svc):
            wait_for(lambda: len(receiver.accepted()) >= 5, "5 batches delivered")
            receiver.kill()
            down_at = len(all_seqs(svc))
            wait_for(lambda: len(all_seqs(svc)) > down_at + 20, "entries written while down")
            receiver.start()
            wait_for(lambda: len(receiver.accepted()) >= 15, "deliveries after the restart")
        wait_for(lambda: lag(svc) == 0, "the forwarder to catch up")
    finally:
        stop(fwd)
    lines = receiver.lines()
    assert sum(1 for x in lines if x["event"] == "start") == 2
    accepted = receiver.accepted()
    check_well_formed(accepted)
    assert first_seen(accepted) == all_seqs(svc)  # nothing lost, in order
    # A batch is repeated only when the receiver recorded it and then died before answering:
    # its earlier copy is the last request before the receiver's restart.
    last_before_restart = None
    for i, x in enumerate(lines):
        if x["event"] == "start" and i > 0:
            last_before_restart = next(y for y in reversed(lines[:i]) if y["event"] == "request")
    seen: dict[int, dict[str, Any]] = {}
    for x in accepted:
        for s in x["seqs"]:
            if s in seen:
                assert seen[s] is last_before_restart or seen[s] == last_before_restart, (s, x)
            else:
                seen[s] = x


def test_a_forwarder_killed_mid_stream_resumes_from_its_cursor_and_skips_nothing(
    svc: BlockingService, settings: Settings, receiver: Receiver
) -> None:
    add_webhook(svc, receiver, batch=5)
    receiver.start()
    env = cli_env(settings, ROTATOR_LEASE_SECONDS="1")
    first = start_forwarder(env)
    with Generator(svc):
        try:
            wait_for(lambda: len(receiver.accepted()) >= 5, "5 batches delivered")
        finally:
            stop(first, signal.SIGKILL)
        assert first.returncode == -signal.SIGKILL
        killed = svc.list_forwarders()[0]
        killed_at = killed.cursor
        # The lease it held is the one ROTATOR_LEASE_SECONDS asks for (1 s), not the default
        # 30 s: the second takes over once that has run out.
        assert killed.lease_until is not None
        assert killed.lease_until - datetime.now(UTC) < timedelta(seconds=10), killed
        second = start_forwarder(env)
        try:
            wait_for(lambda: svc.list_forwarders()[0].cursor > killed_at, "the second to resume")
        except BaseException:
            stop(second)
            raise
    try:
        wait_for(lambda: lag(svc) == 0, "the forwarder to catch up")
    finally:
        stop(second)
    accepted = receiver.accepted()
    check_well_formed(accepted)
    assert first_seen(accepted) == all_seqs(svc)
    # At most the one batch in flight at the kill is delivered twice.
    counts: dict[int, int] = {}
    for x in accepted:
        for s in x["seqs"]:
            counts[s] = counts.get(s, 0) + 1
    twice = sorted(s for s, n in counts.items() if n > 1)
    assert len(twice) <= 5
    assert all(n <= 2 for n in counts.values())
    if twice:
        assert twice == list(range(twice[0], twice[0] + len(twice)))


def test_two_forwarder_processes_share_a_forwarder_and_deliver_each_entry_once(
    svc: BlockingService, settings: Settings, receiver: Receiver
) -> None:
    add_webhook(svc, receiver, batch=5)
    receiver.start()
    env = cli_env(settings, ROTATOR_LEASE_SECONDS="5")
    procs = [start_forwarder(env), start_forwarder(env)]
    try:
        with Generator(svc):
            wait_for(lambda: len(receiver.accepted()) >= 20, "20 batches delivered")
        wait_for(lambda: lag(svc) == 0, "the forwarders to catch up")
    finally:
        for p in procs:
            stop(p)
    accepted = receiver.accepted()
    check_well_formed(accepted)
    assert [s for x in accepted for s in x["seqs"]] == all_seqs(svc)


def test_a_rotation_does_not_wait_for_a_dead_forwarding_target(
    svc: BlockingService, settings: Settings
) -> None:
    svc.add_credential("siem/hmac", "local", value=ValueInput(value=Secret(KEY)))
    names = [f"app/{i}" for i in range(5)]
    for n in names:
        svc.add_credential(n, "local", value=ValueInput(generate=True))
    closed = free_port()  # nothing listens there
    svc.add_forwarder(
        "dead", webhook=f"http://127.0.0.1:{closed}/", hmac_credential="siem/hmac", batch=3
    )
    worker = subprocess.Popen(
        [str(CLI), "worker", "--poll", "0.2"],
        env=cli_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: svc.list_forwarders()[0].last_error is not None, "a failed delivery")
        before = svc.list_forwarders()[0]
        for _ in range(3):
            result = svc.rotate(Selection(names=names))
            assert sorted(result.to_json()["rotated"]) == sorted(names), result.to_json()
        after = svc.list_forwarders()[0]
    finally:
        stop(worker)
    # The rotations finished while the worker's forwarder was stuck on its first batch.
    assert after.cursor == before.cursor == 0
    assert after.lag > before.lag
    assert after.last_error is not None
    assert "ConnectError" in after.last_error


def test_run_once_exits_1_when_a_target_keeps_failing_past_give_up_after_and_keeps_the_cursor(
    svc: BlockingService, settings: Settings
) -> None:
    svc.add_forwarder("dead", syslog=f"tcp://127.0.0.1:{free_port()}")
    done = cli(["audit", "forward", "run", "--once", "--give-up-after", "3"], cli_env(settings))
    assert done.returncode == 1, done.stderr
    assert "kept failing (3 attempts)" in done.stderr.splitlines()[-1]
    (view,) = svc.list_forwarders()
    assert view.cursor == 0
    assert view.delivered == 0
    assert view.last_error is not None
    assert view.last_error.startswith("gave up after 3 attempts")


def test_retries_back_off_exponentially_with_jitter_up_to_the_cap_on_an_injected_sleep(
    svc: BlockingService,
) -> None:
    svc.add_forwarder("dead", syslog=f"tcp://127.0.0.1:{free_port()}")
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    timing = forwarding.RetryTiming(initial=1.0, cap=4.0, sleep=sleep)
    with pytest.raises(forwarding.ForwardingFailed):
        svc.run(forwarding.run_forwarders(svc.service, once=True, give_up_after=6, timing=timing))
    assert len(slept) == 5  # between 6 attempts
    assert 1.0 <= slept[0] <= 2.0
    assert 2.0 <= slept[1] <= 3.0
    assert all(s <= 4.0 for s in slept)
    assert slept[-2:] == [4.0, 4.0]  # capped
    assert svc.list_forwarders()[0].cursor == 0


# -------------------------------------------------------------------------------- syslog

SD_RE = re.compile(r'([a-z]+)="((?:[^"\\\]]|\\["\\\]])*)"')
PARAM = r'[a-z]+="(?:[^"\\\]]|\\["\\\]])*"'  # NAME="VALUE", VALUE with "\] escaped
MSG_RE = re.compile(
    rf"<(\d+)>(\d) (\S+) (\S+) rotator - (\S+) \[rotator@32473((?: {PARAM})*)\] (.*)$", re.S
)


def parse_5424(msg: bytes) -> dict[str, Any]:
    m = MSG_RE.match(msg.decode())
    assert m is not None, msg
    params = {k: re.sub(r"\\([\"\\\]])", r"\1", v) for k, v in SD_RE.findall(m.group(6))}
    return {
        "pri": int(m.group(1)),
        "version": m.group(2),
        "ts": m.group(3),
        "action": m.group(5),
        "params": params,
        "msg": json.loads(m.group(7)),
    }


def read_octet_counted(data: bytes) -> list[bytes]:
    out = []
    while data:
        n, _, rest = data.partition(b" ")
        size = int(n)
        out.append(rest[:size])
        data = rest[size:]
    return out


def weird_entries(svc: BlockingService) -> str:
    actor = 'we"ird\\act]or'
    who = Principal(name=actor, owner=True)
    with svc.kernel.db.write() as conn:
        svc.kernel.audit(conn, who, "access.denied", details={"why": 'a "quoted" ]'})
    return actor


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_syslog_receives_one_rfc5424_message_per_entry_with_pri_version_and_escaped_sd(
    svc: BlockingService, settings: Settings, proto: str
) -> None:
    actor = weird_entries(svc)
    received: list[bytes] = []
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    server = socket.socket(socket.AF_INET, kind)
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    if proto == "tcp":
        server.listen()

    def serve() -> None:
        if proto == "tcp":
            conn, _ = server.accept()
            buf = b""
            while chunk := conn.recv(65536):
                buf += chunk
            received.extend(read_octet_counted(buf))
            conn.close()
        else:
            server.settimeout(5)
            try:
                while True:
                    received.append(server.recv(65536))
            except TimeoutError:
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    svc.add_forwarder("sys", syslog=f"{proto}://127.0.0.1:{port}", facility=10)
    done = cli(["audit", "forward", "run", "--once"], cli_env(settings))
    assert done.returncode == 0, done.stderr
    t.join(30)
    server.close()
    entries = svc.audit_entries()
    parsed = [parse_5424(m) for m in received]
    assert [int(p["params"]["seq"]) for p in parsed] == [e.seq for e in entries]
    for p, e in zip(parsed, entries, strict=True):
        assert p["version"] == "1"
        assert p["action"] == e.action
        assert p["ts"] == e.ts
        assert p["params"]["actor"] == e.actor
        assert p["params"]["hash"] == e.hash
        assert p["msg"] == e.details
        severity = 4 if e.action == "access.denied" else 6
        assert p["pri"] == 10 * 8 + severity, (p, e.action)
    assert actor in [p["params"]["actor"] for p in parsed]


# ------------------------------------------------------------------- input and permissions


@pytest.mark.parametrize(
    "args",
    [
        ["--webhook", "http://user:pw@127.0.0.1/x", "--hmac-credential", "siem/hmac"],
        ["--webhook", "ftp://127.0.0.1/x", "--hmac-credential", "siem/hmac"],
        ["--webhook", "http://127.0.0.1/x"],
        ["--webhook", "http://127.0.0.1/x", "--hmac-credential", "nope"],
        ["--syslog", "tcp://127.0.0.1"],
        ["--syslog", "tcp://127.0.0.1:514", "--format", "xml"],
        ["--syslog", "udp://127.0.0.1:514", "--facility", "24"],
        ["--syslog", "udp://127.0.0.1:514", "--webhook", "http://127.0.0.1/"],
    ],
)
def test_a_bad_forwarder_exits_2_with_one_line_and_stores_nothing(
    svc: BlockingService, settings: Settings, args: list[str]
) -> None:
    svc.add_credential("siem/hmac", "local", value=ValueInput(value=Secret(KEY)))
    before = all_seqs(svc)
    done = cli(["audit", "forward", "add", "f", *args], cli_env(settings))
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "pw" not in done.stderr
    assert svc.list_forwarders() == []
    assert all_seqs(svc) == before


def test_a_tenant_admin_forwards_only_its_tenant_and_may_not_forward_everything(
    svc: BlockingService,
) -> None:
    svc.add_tenant("blue")
    admin = Principal(name="blue-admin", tenant="blue", grants=(Grant(Role.ADMIN),))
    auditor = Principal(name="blue-auditor", tenant="blue", grants=(Grant(Role.AUDITOR),))
    view = svc.add_forwarder("blue", syslog="udp://127.0.0.1:9", principal=admin)
    assert view.tenant == "blue"  # no --tenant: its own tenant's entries, not every entry
    with pytest.raises(PermissionDenied):
        svc.add_forwarder("other", syslog="udp://127.0.0.1:9", tenant="default", principal=admin)
    with pytest.raises(PermissionDenied):
        svc.list_forwarders(principal=auditor)
    svc.add_forwarder("all", syslog="udp://127.0.0.1:9")  # the owner: every entry
    assert [v.name for v in svc.list_forwarders(principal=admin)] == ["blue"]
    assert {v.name for v in svc.list_forwarders()} == {"all", "blue"}
    denied = [e for e in svc.audit_entries(principal=admin) if e.action == "access.denied"]
    assert len(denied) == 2
    with pytest.raises(InvalidInput):
        svc.add_forwarder("blue2", syslog="udp://127.0.0.1:9", fmt="xml", principal=admin)
    svc.add_forwarder("blue3", syslog="udp://127.0.0.1:9", fmt="cef", principal=admin)


@pytest.mark.parametrize(
    "url",
    [
        "https://siem.example/ingest?token=hunter2-query-secret",
        "https://siem.example/ingest#hunter2-query-secret",
        "https://siem.example/ingest?",
    ],
)
def test_a_webhook_url_with_a_query_string_or_fragment_is_refused_and_not_echoed(
    svc: BlockingService, settings: Settings, url: str
) -> None:
    svc.add_credential("siem/hmac", "local", value=ValueInput(value=Secret(KEY)))
    before = all_seqs(svc)
    done = cli(
        ["audit", "forward", "add", "f", "--webhook", url, "--hmac-credential", "siem/hmac"],
        cli_env(settings),
    )
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "put no secret in the URL; the HMAC credential signs the requests" in line
    assert "hunter2" not in done.stderr + done.stdout
    assert svc.list_forwarders() == []
    assert all_seqs(svc) == before


def test_a_lease_renewal_failing_with_a_database_error_stops_the_sender_before_its_next_send(
    svc: BlockingService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heartbeat's renew raises (the store failing, injected once): the lease counts as
    lost, so the batch's next attempt does not send; the forwarder is claimed again first."""
    from sqlalchemy.exc import OperationalError

    from rotator.service import forward_targets

    svc.add_forwarder("dead", syslog=f"tcp://127.0.0.1:{free_port()}")
    events: list[str] = []
    renew_failed = threading.Event()
    real_renew, real_claim = forwarding.store_fwd.renew, forwarding.store_fwd.claim
    real_send = forward_targets.SyslogTcpTarget.send

    def renew(*args: Any, **kw: Any) -> bool:
        if not renew_failed.is_set():
            renew_failed.set()
            events.append("renew failed")
            raise OperationalError("UPDATE audit_forwarders", {}, Exception("server closed"))
        return real_renew(*args, **kw)

    def claim(*args: Any, **kw: Any) -> Any:
        events.append("claim")
        return real_claim(*args, **kw)

    async def send(self: Any, *args: Any, **kw: Any) -> None:
        events.append("send")
        await real_send(self, *args, **kw)

    monkeypatch.setattr(forwarding.store_fwd, "renew", renew)
    monkeypatch.setattr(forwarding.store_fwd, "claim", claim)
    monkeypatch.setattr(forward_targets.SyslogTcpTarget, "send", send)

    async def sleep(seconds: float) -> None:
        # Between attempts: wait (polling) for the heartbeat's failed renew, then let the
        # heartbeat task take its result.
        import asyncio

        for _ in range(3000):
            if renew_failed.is_set():
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)

    timing = forwarding.RetryTiming(initial=0.01, cap=0.01, sleep=sleep)
    with pytest.raises(forwarding.ForwardingFailed):
        svc.run(
            forwarding.run_forwarders(
                svc.service, once=True, give_up_after=3, lease_s=0.3, timing=timing
            )
        )
    after = events[events.index("renew failed") + 1 :]
    assert next(e for e in after if e in ("send", "claim")) == "claim", events
