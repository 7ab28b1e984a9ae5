"""Webhook notifications against a real receiver process (tests/support/webhook_receiver.py)
that verifies signatures with the recipe of docs/webhooks.md and can fail its first N
requests; real ``rotator`` CLI processes for add, rotate, run, dead and retry; SQLite and
PostgreSQL (``db_url``)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, update
from tests.conftest import free_port

from rotator.config import Settings
from rotator.domain.principal import Grant, Principal, Role
from rotator.domain.secret import Secret
from rotator.errors import InvalidInput, NotFound, PermissionDenied
from rotator.service import BlockingService, EventInput, PolicyInput, ValueInput
from rotator.service.rotation import Selection
from rotator.service.webhooks import WebhookTiming
from rotator.store import webhooks as store_wh
from rotator.store.schema import audit_log, webhook_dead_letters

CLI = Path(sys.executable).parent / "rotator"
RECEIVER = Path(__file__).resolve().parents[1] / "support" / "webhook_receiver.py"
KEY = b"webhook-signing-key-0123456789abcdef"


async def _no_sleep(_: float) -> None:
    return None


FAST = WebhookTiming(attempts=5, initial=0.0, cap=0.0, sleep=_no_sleep)


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
    env.update(ROTATOR_HOME=str(settings.home), ROTATOR_DB=settings.db_url, **extra)
    return env


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


class Receiver:
    """The receiver process on a fixed port; restartable on the same port."""

    def __init__(
        self, tmp: Path, fail_first: int = 0, key: bytes = KEY, delay: float = 0.0
    ) -> None:
        self.port = free_port()
        self.log = tmp / f"received-{self.port}.jsonl"
        self.fail_first = fail_first
        self.key = key
        self.delay = delay
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        args = [
            str(self.port), str(self.log), self.key.hex(), str(self.fail_first), str(self.delay)
        ]  # fmt: skip
        self.proc = subprocess.Popen([sys.executable, str(RECEIVER), *args])
        wait_for(self._accepts, "the receiver to listen", timeout=30)
        return self

    def _accepts(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def requests(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        lines = [json.loads(x) for x in self.log.read_text().splitlines() if x.strip()]
        return [x for x in lines if x["event"] == "request"]

    def accepted(self) -> list[dict[str, Any]]:
        return [x for x in self.requests() if x["status"] == 200]

    def types(self) -> list[str]:
        return [x["body"]["type"] for x in self.accepted()]


@pytest.fixture
def receivers(tmp_path: Path) -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(fail_first: int = 0, key: bytes = KEY, start: bool = True) -> Receiver:
        r = Receiver(tmp_path, fail_first, key)
        made.append(r)
        return r.start() if start else r

    yield make
    for r in made:
        r.stop()


def keyed(svc: BlockingService, name: str = "hooks/key") -> str:
    svc.add_credential(name, "local", value=ValueInput(value=Secret(KEY)))
    return name


def rotate(svc: BlockingService, *names: str, emergency: bool = False) -> None:
    result = svc.rotate(Selection(names=names), emergency=emergency)
    assert result.ok, result


def run_once(svc: BlockingService, timing: WebhookTiming = FAST, **kw: Any) -> Any:
    return svc.run_webhooks(once=True, timing=timing, **kw)


# ---------------------------------------------------------------------------------- signing


def test_each_event_is_signed_verifiable_with_the_documented_recipe_and_holds_no_value(
    svc: BlockingService, receivers: Callable[..., Receiver]
) -> None:
    r = receivers()
    svc.add_webhook(r.url, events="all", secret_ref=keyed(svc))
    svc.add_credential("app/db", "local", value=ValueInput(value=Secret(b"first-value-XYZ")))
    rotate(svc, "app/db")
    new_value = svc.get_value("app/db").reveal().decode()

    run_once(svc)

    got = r.accepted()
    assert [x["body"]["type"] for x in got] == ["rotation.started", "rotation.succeeded"]
    for x in got:
        assert x["sig_ok"], x
        assert x["content_type"] == "application/json"
        assert x["type_header"] == x["body"]["type"]
        body = x["body"]
        assert set(body) == {"id", "type", "at", "tenant", "credential", "rotation_id", "details"}
        assert body["credential"] == "app/db"
        assert body["tenant"] == "default"
        assert body["rotation_id"]
        seq = int(body["id"].split(":")[1])
        assert body["id"] == f"default:{seq}"
        assert x["delivery"].endswith(f"-{seq}-{body['type']}")
        assert "first-value-XYZ" not in x["raw"]
        assert new_value not in x["raw"]


def test_a_generated_key_is_returned_once_and_signs_the_requests(
    svc: BlockingService, receivers: Callable[..., Receiver]
) -> None:
    r0 = receivers(start=False)
    added = svc.add_webhook(r0.url, events="rotation.succeeded")
    assert added.generated_secret is not None
    assert added.webhook.secret_ref.startswith("webhook/")
    assert "generated_secret" not in repr(added.webhook)
    key = added.generated_secret.reveal()
    r = Receiver(r0.log.parent, key=key)
    r.port, r.log = r0.port, r0.log
    r.start()
    try:
        svc.add_credential("app/db", "local", value=ValueInput(generate=True))
        rotate(svc, "app/db")
        run_once(svc)
        got = r.accepted()
        assert [x["body"]["type"] for x in got] == ["rotation.succeeded"]
        assert got[0]["sig_ok"]
        entries = [e for e in svc.audit_entries() if e.action == "webhook.add"]
        assert len(entries) == 1
        assert key.decode() not in json.dumps(entries[0].to_json())
    finally:
        r.stop()


def test_a_rotate_all_that_rotates_the_generated_key_still_verifies_with_the_old_key_in_grace(
    svc: BlockingService, settings: Settings, receivers: Callable[..., Receiver]
) -> None:
    r0 = receivers(start=False)
    added = svc.add_webhook(r0.url, events="rotation.succeeded")
    assert added.generated_secret is not None
    old_key = added.generated_secret.reveal()
    r = Receiver(r0.log.parent, key=old_key)  # a receiver not told of the rotation yet
    r.port, r.log = r0.port, r0.log
    r.start()
    try:
        svc.add_credential("app/db", "local", value=ValueInput(generate=True))
        done = cli(["rotate", "--all"], cli_env(settings))
        assert done.returncode == 0, done.stderr
        new_key = svc.get_value(added.webhook.secret_ref).reveal()
        assert new_key != old_key  # --all rotated the signing key too

        run_once(svc)

        got = r.accepted()
        assert sorted(x["body"]["credential"] for x in got) == sorted(
            ["app/db", added.webhook.secret_ref]
        )
        for x in got:
            assert x["sig_ok"], x
            current, previous = x["signature"].split(",")
            msg = x["timestamp"].encode() + b"." + x["raw"].encode()
            assert current == "v1=" + hmac.new(new_key, msg, hashlib.sha256).hexdigest()
            assert previous == "v1=" + hmac.new(old_key, msg, hashlib.sha256).hexdigest()
    finally:
        r.stop()


def test_a_url_path_is_a_secret_shown_nowhere_but_still_used_for_delivery(
    svc: BlockingService, settings: Settings, receivers: Callable[..., Receiver]
) -> None:
    r = receivers()
    env = cli_env(settings)
    token_path = "/services/T0001/B0002/SLACKPATHTOKEN42"
    url = f"http://127.0.0.1:{r.port}{token_path}"
    keyed(svc)
    added = cli(["webhook", "add", url, "--event", "all", "--secret-ref", "hooks/key"], env)
    assert added.returncode == 0, added.stderr
    listed = cli(["webhook", "list"], env)
    listed_json = cli(["webhook", "list", "--json"], env)
    for done in (added, listed, listed_json):
        assert "SLACKPATHTOKEN42" not in done.stdout + done.stderr
    assert json.loads(listed_json.stdout)[0]["url"] == f"http://127.0.0.1:{r.port}/…"

    svc.add_credential("app/db", "local", value=ValueInput(generate=True))
    rotate(svc, "app/db")
    run_once(svc)
    assert {x["path"] for x in r.accepted()} == {token_path}  # the stored URL is used whole

    removed = cli(["webhook", "remove", str(json.loads(listed_json.stdout)[0]["id"])], env)
    assert removed.returncode == 0, removed.stderr
    entries = svc.audit_entries()
    assert "SLACKPATHTOKEN42" not in json.dumps([e.to_json() for e in entries])
    urls = [e.details["url"] for e in entries if e.action in ("webhook.add", "webhook.remove")]
    assert urls == [f"http://127.0.0.1:{r.port}/…"] * 2


# ---------------------------------------------------------------------------------- retries


def test_a_receiver_failing_twice_then_succeeding_gets_each_event_exactly_once(
    svc: BlockingService, receivers: Callable[..., Receiver]
) -> None:
    r = receivers(fail_first=2)
    svc.add_webhook(r.url, events="rotation.started,rotation.succeeded", secret_ref=keyed(svc))
    for i in range(3):
        svc.add_credential(f"app/c{i}", "local", value=ValueInput(generate=True))
    rotate(svc, "app/c0", "app/c1", "app/c2")

    run_once(svc)

    reqs = r.requests()
    assert [x["status"] for x in reqs[:2]] == [500, 500]
    assert reqs[0]["delivery"] == reqs[1]["delivery"] == reqs[2]["delivery"], "retries reuse it"
    accepted = r.accepted()
    deliveries = [x["delivery"] for x in accepted]
    assert len(deliveries) == len(set(deliveries)) == 6, "each event once"
    assert len(reqs) == 8
    assert sorted(r.types()) == ["rotation.started"] * 3 + ["rotation.succeeded"] * 3
    assert all(x["sig_ok"] for x in reqs)
    view = svc.list_webhooks()[0]
    assert view.delivered == 6
    assert view.dead == 0
    assert view.last_error is None


def test_the_last_error_stays_until_an_event_is_acknowledged_not_cleared_by_other_entries(
    svc: BlockingService, receivers: Callable[..., Receiver]
) -> None:
    down = receivers(fail_first=2)  # the first event's two attempts fail, then it answers 200
    svc.add_webhook(down.url, events="rotation.succeeded", secret_ref=keyed(svc))
    svc.add_credential("app/db", "local", value=ValueInput(generate=True))
    rotate(svc, "app/db")
    run_once(svc, WebhookTiming(attempts=2, initial=0.0, cap=0.0, sleep=_no_sleep))
    assert svc.list_webhooks()[0].dead == 1
    error = svc.list_webhooks()[0].last_error
    assert error is not None
    assert "HTTP 500" in error

    # Entries that are no event for this webhook move its cursor only: the error stays.
    svc.add_credential("app/other", "local", value=ValueInput(generate=True))
    run_once(svc, FAST)
    view = svc.list_webhooks()[0]
    assert view.lag == 0
    assert view.last_error == error

    rotate(svc, "app/db")  # an event the receiver (now answering 200) acknowledges
    run_once(svc, FAST)
    assert svc.list_webhooks()[0].last_error is None


def test_a_receiver_down_past_the_retries_dead_letters_the_event_and_retry_delivers_it_once(
    svc: BlockingService, settings: Settings, receivers: Callable[..., Receiver]
) -> None:
    down = receivers(fail_first=1000)
    other = receivers()
    key = keyed(svc)
    down_id = svc.add_webhook(down.url, events="rotation.succeeded", secret_ref=key).webhook.id
    svc.add_webhook(other.url, events="rotation.succeeded", secret_ref=key)
    svc.add_credential("app/db", "local", value=ValueInput(generate=True))
    rotate(svc, "app/db")

    run_once(svc, WebhookTiming(attempts=3, initial=0.0, cap=0.0, sleep=_no_sleep))

    assert len(down.requests()) == 3
    assert not down.accepted()
    assert other.types() == ["rotation.succeeded"], "a dead receiver blocks no other webhook"
    views = {v.id: v for v in svc.list_webhooks()}
    complete = [e.seq for e in svc.audit_entries() if e.action == "rotation.complete"]
    assert views[down_id].cursor >= complete[-1], "the cursor moved on"
    assert views[down_id].dead == 1
    assert "HTTP 500" in (views[down_id].last_error or "")
    env = cli_env(settings)
    listed = cli(["webhook", "dead", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    dead = json.loads(listed.stdout)
    assert [d["type"] for d in dead] == ["rotation.succeeded"]
    assert dead[0]["attempts"] == 3
    assert json.loads(cli(["webhook", "list", "--dead", "--json"], env).stdout) == dead

    # The receiver comes back: retry delivers the dead letter once, with its delivery id.
    down.stop()
    back = Receiver(down.log.parent)
    back.port, back.log = down.port, down.log.with_name("back.jsonl")
    back.start()
    try:
        done = cli(["webhook", "retry", "--all"], env)
        assert done.returncode == 0, done.stderr
        assert [x["delivery"] for x in back.accepted()] == [dead[0]["delivery_id"]]
        assert back.accepted()[0]["sig_ok"]
        assert json.loads(cli(["webhook", "dead", "--json"], env).stdout) == []
        again = cli(["webhook", "retry", str(dead[0]["id"])], env)
        assert again.returncode == 2, again.stderr
        assert again.stderr.count("\n") == 1, again.stderr
        assert "no dead letter" in again.stderr
        cli(["webhook", "retry", "--all"], env)
        assert len(back.requests()) == 1, "never sent again"
    finally:
        back.stop()
    assert other.types() == ["rotation.succeeded"]


def test_two_concurrent_retries_of_one_dead_letter_send_it_once_and_audit_it_once(
    svc: BlockingService, settings: Settings, receivers: Callable[..., Receiver]
) -> None:
    r0 = receivers(fail_first=1000)
    svc.add_webhook(r0.url, events="rotation.succeeded", secret_ref=keyed(svc))
    svc.add_credential("app/db", "local", value=ValueInput(generate=True))
    rotate(svc, "app/db")
    run_once(svc, WebhookTiming(attempts=1, initial=0.0, cap=0.0, sleep=_no_sleep))
    dead_id = svc.webhook_dead_letters()[0].id
    r0.stop()
    slow = Receiver(r0.log.parent, delay=3.0)  # answers 200 after 3 s: the two overlap
    slow.port, slow.log = r0.port, r0.log.parent / "slow.jsonl"
    slow.start()
    try:
        env = cli_env(settings)
        procs = [
            subprocess.Popen(
                [str(CLI), "webhook", "retry", str(dead_id)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        results = [(p.wait(120), *p.communicate()) for p in procs]
    finally:
        slow.stop()
    assert len(slow.requests()) == 1, results
    assert sorted(rc for rc, _, _ in results) == [0, 2], results
    retried = [e for e in svc.audit_entries() if e.action == "webhook.retry"]
    assert [e.details["delivered"] for e in retried] == [[dead_id]]
    assert svc.webhook_dead_letters() == []


def test_a_dead_letter_claimed_by_another_retry_is_not_sent_until_the_claim_lapses(
    svc: BlockingService, raw_db: Engine, receivers: Callable[..., Receiver]
) -> None:
    r = receivers(fail_first=1)
    svc.add_webhook(r.url, events="rotation.succeeded", secret_ref=keyed(svc))
    svc.add_credential("app/db", "local", value=ValueInput(generate=True))
    rotate(svc, "app/db")
    run_once(svc, WebhookTiming(attempts=1, initial=0.0, cap=0.0, sleep=_no_sleep))
    dead_id = svc.webhook_dead_letters()[0].id
    now = datetime.now(UTC)
    with raw_db.begin() as c:  # another process's retry, in flight
        assert store_wh.claim_dead_letter(c, dead_id, now, now + timedelta(hours=1))
        assert not store_wh.claim_dead_letter(c, dead_id, now, now + timedelta(hours=1))
    with pytest.raises(NotFound, match="waiting"):
        svc.retry_webhook_dead_letters(dead_id, timing=FAST)
    assert svc.retry_webhook_dead_letters(retry_all=True, timing=FAST).delivered == 0
    assert r.accepted() == []
    with raw_db.begin() as c:  # that process died: its claim lapses
        c.execute(
            update(webhook_dead_letters)
            .where(webhook_dead_letters.c.id == dead_id)
            .values(error=store_wh.RETRY_CLAIM + (now - timedelta(seconds=1)).isoformat())
        )
    assert svc.retry_webhook_dead_letters(dead_id, timing=FAST).delivered == 1
    assert len(r.accepted()) == 1


def test_a_restarted_runner_does_not_resend_what_was_delivered(
    svc: BlockingService, settings: Settings, receivers: Callable[..., Receiver]
) -> None:
    r = receivers()
    svc.add_webhook(r.url, events="all", secret_ref=keyed(svc))
    svc.add_credential("app/db", "local", value=ValueInput(generate=True))
    rotate(svc, "app/db")
    env = cli_env(settings)
    first = cli(["webhook", "run", "--once", "--backoff", "0"], env)
    assert first.returncode == 0, first.stderr
    assert r.types() == ["rotation.started", "rotation.succeeded"]

    again = cli(["webhook", "run", "--once", "--backoff", "0"], env)
    assert again.returncode == 0, again.stderr
    assert len(r.requests()) == 2, "a new process resumes after the committed cursor"

    rotate(svc, "app/db")
    cli(["webhook", "run", "--once", "--backoff", "0"], env)
    assert r.types() == ["rotation.started", "rotation.succeeded"] * 2


# ---------------------------------------------------------------------------------- formats


def test_the_slack_format_posts_one_text_line_per_event(
    svc: BlockingService, receivers: Callable[..., Receiver]
) -> None:
    r = receivers()
    svc.add_webhook(r.url, events="rotation.succeeded", secret_ref=keyed(svc), fmt="slack")
    svc.add_credential("app/db", "local", value=ValueInput(generate=True))
    rotate(svc, "app/db")
    run_once(svc)
    got = r.accepted()
    assert len(got) == 1
    assert got[0]["sig_ok"]
    assert set(got[0]["body"]) == {"text"}
    text = got[0]["body"]["text"]
    assert "\n" not in text
    assert "rotation.succeeded" in text
    assert "app/db" in text
    assert got[0]["type_header"] == "rotation.succeeded"


def test_only_the_subscribed_event_types_are_sent(
    svc: BlockingService, receivers: Callable[..., Receiver]
) -> None:
    ok = receivers()
    failed = receivers()
    key = keyed(svc)
    svc.add_webhook(ok.url, events="rotation.succeeded", secret_ref=key)
    svc.add_webhook(failed.url, events="rotation.failed", secret_ref=key)
    svc.add_credential("app/db", "local", value=ValueInput(generate=True))
    rotate(svc, "app/db")
    svc.get_value("app/db")  # an audited read: no event
    run_once(svc)
    assert ok.types() == ["rotation.succeeded"]
    assert failed.requests() == []


def test_a_local_credential_rotated_by_the_cli_sends_started_then_succeeded(
    svc: BlockingService, settings: Settings, receivers: Callable[..., Receiver]
) -> None:
    r = receivers()
    env = cli_env(settings)
    svc.add_credential("hooks/key", "local", value=ValueInput(value=Secret(KEY)))
    added = cli(
        ["webhook", "add", r.url, "--event", "rotation.started,rotation.succeeded",
         "--secret-ref", "hooks/key", "--json"],
        env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["secret"] is None
    svc.add_credential("app/db", "local", value=ValueInput(generate=True))
    rotated = cli(["rotate", "app/db"], env)
    assert rotated.returncode == 0, rotated.stderr
    ran = cli(["webhook", "run", "--once", "--backoff", "0"], env)
    assert ran.returncode == 0, ran.stderr
    got = r.accepted()
    assert [x["body"]["type"] for x in got] == ["rotation.started", "rotation.succeeded"]
    assert got[0]["body"]["rotation_id"] == got[1]["body"]["rotation_id"]
    assert got[0]["body"]["details"]["trigger"] == "manual"


def test_emergency_and_risk_events_arrive(
    svc: BlockingService, receivers: Callable[..., Receiver]
) -> None:
    r = receivers()
    svc.add_webhook(r.url, events="emergency,risk.event", secret_ref=keyed(svc))
    svc.add_credential(
        "prod/db",
        "local",
        value=ValueInput(generate=True),
        policy=PolicyInput(on_risk="high=rotate,critical=emergency"),
    )
    rotate(svc, "prod/db", emergency=True)
    report = svc.report_event(EventInput("leak.github", "high", credential="prod/db"))
    assert report.ok
    run_once(svc)
    got = r.accepted()
    assert [x["body"]["type"] for x in got] == ["emergency", "risk.event"]
    assert got[0]["body"]["credential"] == "prod/db"
    assert got[1]["body"]["details"]["kind"] == "leak.github"
    assert got[1]["body"]["details"]["severity"] == "high"


# ---------------------------------------------------------------------- overdue, verification


def test_an_overdue_credential_is_reported_once_per_due_period(
    settings: Settings, receivers: Callable[..., Receiver]
) -> None:
    # A clock the test moves (starting now: the store's first entry was written at now).
    t = [datetime.now(UTC)]
    svc0, _ = BlockingService.init(settings)
    svc0.close()
    svc = BlockingService.open(settings, clock=lambda: t[0])
    try:
        r = receivers()
        svc.add_webhook(r.url, events="credential.overdue", secret_ref=keyed(svc))
        svc.add_credential(
            "app/db", "local", value=ValueInput(generate=True), policy=PolicyInput(every="1d")
        )
        run_once(svc, overdue_after=timedelta(hours=1))
        assert r.accepted() == [], "not due yet"
        t[0] += timedelta(days=1, minutes=30)
        run_once(svc, overdue_after=timedelta(hours=1))
        assert r.accepted() == [], "due, but within the threshold"
        t[0] += timedelta(hours=1)
        run_once(svc, overdue_after=timedelta(hours=1))
        run_once(svc, overdue_after=timedelta(hours=1))
        t[0] += timedelta(days=3)
        run_once(svc, overdue_after=timedelta(hours=1))
        got = r.accepted()
        assert [x["body"]["type"] for x in got] == ["credential.overdue"], "once per period"
        assert got[0]["body"]["credential"] == "app/db"
        entries = [e for e in svc.audit_entries() if e.action == "credential.overdue"]
        assert len(entries) == 1, "and one audit entry, as evidence"

        rotate(svc, "app/db")  # a new period: due again a day later
        t[0] += timedelta(days=1, hours=2)
        run_once(svc, overdue_after=timedelta(hours=1))
        assert [x["body"]["type"] for x in r.accepted()] == ["credential.overdue"] * 2
    finally:
        svc.close()


def test_a_broken_audit_chain_found_by_verify_is_notified(
    svc: BlockingService, raw_db: Engine, receivers: Callable[..., Receiver]
) -> None:
    r = receivers()
    svc.add_webhook(r.url, events="audit.verification_failed", secret_ref=keyed(svc))
    svc.add_credential("app/db", "local", value=ValueInput(generate=True))
    with raw_db.begin() as c:
        if c.dialect.name == "postgresql":  # behind rotator's back: skip the append-only trigger
            c.exec_driver_sql("SET LOCAL session_replication_role = replica")
        c.execute(update(audit_log).where(audit_log.c.seq == 2).values(actor="mallory"))
    result = svc.audit_verify()
    assert not result.ok
    assert result.first_bad_seq == 2
    run_once(svc)
    got = r.accepted()
    assert [x["body"]["type"] for x in got] == ["audit.verification_failed"]
    assert got[0]["body"]["details"]["first_bad_seq"] == 2
    assert got[0]["sig_ok"]


def test_a_broken_chain_is_notified_once_to_each_tenant_webhook_and_the_every_tenant_one(
    svc: BlockingService,
    raw_db: Engine,
    receivers: Callable[..., Receiver],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ROTATOR_WEBHOOK_ALLOW", "127.0.0.0/8")  # tenant webhooks on loopback
    svc.add_tenant("a")
    svc.add_tenant("b")
    every, in_a, in_b = receivers(), receivers(), receivers()
    events = "audit.verification_failed"
    svc.add_webhook(every.url, events=events, secret_ref=keyed(svc))
    admin_a = Principal("alice", "a", (Grant(Role.ADMIN),))
    svc.add_webhook(in_a.url, events=events, principal=admin_a)
    svc.add_webhook(in_b.url, events=events, tenant="b")
    with raw_db.begin() as c:
        if c.dialect.name == "postgresql":
            c.exec_driver_sql("SET LOCAL session_replication_role = replica")
        c.execute(update(audit_log).where(audit_log.c.seq == 2).values(actor="mallory"))
    assert not svc.audit_verify().ok
    run_once(svc)
    run_once(svc)  # a second run sends nothing more
    for r, tenant in ((in_a, "a"), (in_b, "b")):
        got = r.accepted()
        assert [(x["body"]["type"], x["body"]["tenant"]) for x in got] == [
            ("audit.verification_failed", tenant)
        ]
        assert got[0]["body"]["details"]["first_bad_seq"] == 2
    assert sorted(x["body"]["tenant"] for x in every.accepted()) == ["a", "b", "default"]


# ---------------------------------------------------------------------------------- access


def test_webhooks_are_admin_only_and_tenant_scoped_and_every_change_is_audited(
    svc: BlockingService, receivers: Callable[..., Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROTATOR_WEBHOOK_ALLOW", "127.0.0.0/8")  # the receiver is on loopback
    r = receivers()
    svc.add_tenant("a")
    svc.add_tenant("b")
    admin_a = Principal("alice", "a", (Grant(Role.ADMIN),))
    admin_b = Principal("bob", "b", (Grant(Role.ADMIN),))
    auditor_a = Principal("carol", "a", (Grant(Role.AUDITOR),))
    with pytest.raises(PermissionDenied):
        svc.add_webhook(r.url, events="all", principal=auditor_a)
    with pytest.raises(PermissionDenied):
        svc.add_webhook(r.url, events="all", tenant="b", principal=admin_a)
    added = svc.add_webhook(r.url, events="all", principal=admin_a)
    assert added.webhook.tenant == "a"
    assert added.generated_secret is not None
    assert [v.id for v in svc.list_webhooks(principal=admin_b)] == []
    with pytest.raises(NotFound, match="no webhook"):
        svc.remove_webhook(added.webhook.id, principal=admin_b)
    svc.remove_webhook(added.webhook.id, principal=admin_a)
    actions = [(e.tenant, e.action) for e in svc.audit_entries(principal=admin_a)]
    assert ("a", "webhook.add") in actions
    assert ("a", "webhook.remove") in actions


def test_a_tenant_admin_cannot_point_a_webhook_or_forwarder_at_internal_addresses(
    svc: BlockingService, receivers: Callable[..., Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ROTATOR_WEBHOOK_ALLOW", raising=False)
    r = receivers()
    svc.add_tenant("a")
    admin_a = Principal("alice", "a", (Grant(Role.ADMIN),))
    internal = [
        "http://169.254.169.254/latest/meta-data/",
        r.url,
        f"http://localhost:{r.port}/hook",
        "http://[::1]:8080/x",
        "http://10.1.2.3/x",
        "http://192.168.0.1/x",
        "http://0.0.0.0:80/x",
        "http://[fe80::1]/x",
        "http://224.0.0.1/x",
    ]
    for url in internal:
        with pytest.raises(InvalidInput, match="internal address"):
            svc.add_webhook(url, events="all", principal=admin_a)
        with pytest.raises(InvalidInput, match="--webhook must not point"):
            svc.add_forwarder("fw", webhook=url, hmac_credential="k", principal=admin_a)
    assert svc.list_webhooks() == []
    assert svc.list_forwarders() == []
    # The owner's every-tenant webhook may use any address; the operator may allow some.
    svc.add_webhook(r.url, events="all", secret_ref=keyed(svc))
    monkeypatch.setenv("ROTATOR_WEBHOOK_ALLOW", "10.0.0.0/8, 127.0.0.1/32")
    assert svc.add_webhook(r.url, events="all", principal=admin_a).webhook.tenant == "a"
    with pytest.raises(InvalidInput, match="internal address"):
        svc.add_webhook("http://169.254.169.254/x", events="all", principal=admin_a)


def test_a_tenant_webhook_is_checked_before_each_request_and_shows_only_error_categories(
    svc: BlockingService, receivers: Callable[..., Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    r = receivers()
    closed = receivers(start=False)  # nothing listens there
    svc.add_tenant("a")
    admin_a = Principal("alice", "a", (Grant(Role.ADMIN),))
    monkeypatch.setenv("ROTATOR_WEBHOOK_ALLOW", "127.0.0.0/8")
    ok = svc.add_webhook(r.url, events="rotation.succeeded", principal=admin_a).webhook
    down = svc.add_webhook(closed.url, events="rotation.succeeded", principal=admin_a).webhook
    svc.add_credential("app/x", "local", value=ValueInput(generate=True), principal=admin_a)
    assert svc.rotate(Selection(names=["app/x"]), principal=admin_a).ok

    # The allowance is withdrawn after add (as a DNS answer that changed would be): refused.
    monkeypatch.delenv("ROTATOR_WEBHOOK_ALLOW")
    run_once(svc, timing=WebhookTiming(attempts=2, initial=0.0, cap=0.0, sleep=_no_sleep))
    assert r.requests() == []
    views = {v.id: v for v in svc.list_webhooks(principal=admin_a)}
    assert views[ok.id].last_error is not None
    assert "refused: the receiver's address is internal" in views[ok.id].last_error
    letters = svc.webhook_dead_letters(principal=admin_a)
    assert {d.webhook_id for d in letters} == {ok.id, down.id}
    for d in letters:
        assert d.error.endswith("refused: the receiver's address is internal"), d.error

    monkeypatch.setenv("ROTATOR_WEBHOOK_ALLOW", "127.0.0.0/8")
    svc.retry_webhook_dead_letters(retry_all=True, timing=FAST, principal=admin_a)
    assert [x["body"]["credential"] for x in r.accepted()] == ["app/x"]
    left = svc.webhook_dead_letters(principal=admin_a)
    assert [d.webhook_id for d in left] == [down.id]
    # Only the category: no transport text to tell an open port from a closed one.
    assert left[0].error.endswith(": connection failed"), left[0].error
    assert "Error" not in left[0].error


def test_a_risk_event_detail_holding_a_value_or_a_token_is_refused_and_nothing_is_stored(
    svc: BlockingService, settings: Settings, receivers: Callable[..., Receiver]
) -> None:
    r = receivers()
    env = cli_env(settings)
    svc.add_webhook(r.url, events="risk.event", secret_ref=keyed(svc))
    svc.add_credential(
        "app/c2", "local", value=ValueInput(value=Secret(b"old-value-7Qx9")), tags={"env": "p"}
    )
    rotate(svc, "app/c2")
    current = svc.get_value("app/c2").reveal().decode()
    report = ["event", "report", "--kind", "leak.github", "--severity", "low"]
    cases = [
        ["--credential", "app/c2", "--detail", f"found {current} in repo"],
        ["--credential", "app/c2", "--detail", "found old-value-7Qx9 in a gist"],  # PREVIOUS
        ["--credential", "app/c2", "--detail", "token rtr_abc123_def456 in a log"],
        ["--tag", "env=p", "--detail", "token rtr_abc123_def456 in a log"],
    ]
    before = len(svc.audit_entries())
    for args in cases:
        done = cli([*report, *args], env)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stderr.count("\n") == 1, done.stderr
        assert "--detail" in done.stderr
        for secret in (current, "old-value-7Qx9", "rtr_abc123"):
            assert secret not in done.stderr + done.stdout
    assert len(svc.audit_entries()) == before
    assert svc.list_events() == []
    ok = cli([*report, "--credential", "app/c2", "--detail", "found in repo x/y"], env)
    assert ok.returncode == 0, ok.stderr
    run_once(svc)
    assert [x["body"]["details"]["detail"] for x in r.accepted()] == ["found in repo x/y"]


def test_bad_input_exits_2_with_one_line_and_stores_nothing(
    svc: BlockingService, settings: Settings
) -> None:
    env = cli_env(settings)
    keyed(svc)
    cases = [
        ["webhook", "add", "http://127.0.0.1:1/x", "--event", "rotation.bogus"],
        ["webhook", "add", "http://127.0.0.1:1/x?token=abc", "--event", "all"],
        ["webhook", "add", "ftp://127.0.0.1/x", "--event", "all"],
        ["webhook", "add", "http://127.0.0.1:1/x", "--event", "all", "--format", "xml"],
        ["webhook", "add", "http://127.0.0.1:1/x", "--event", "all", "--secret-ref", "no/such"],
        ["webhook", "remove", "999"],
        ["webhook", "retry"],
    ]
    before = len(svc.audit_entries())
    for args in cases:
        done = cli(args, env)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stderr.count("\n") == 1, done.stderr
        assert "Traceback" not in done.stderr
        assert "abc" not in done.stderr
    # The URL checks shared with the SIEM forwarder name webhook add's own argument and option.
    for url in ("http://user:pw@example.com/", "ftp://x/", "http://example.com/x#frag"):
        done = cli(["webhook", "add", url, "--event", "all"], env)
        assert done.returncode == 2, (url, done.stderr)
        assert done.stderr.count("\n") == 1, done.stderr
        assert "the webhook URL" in done.stderr
        assert "--webhook" not in done.stderr
        assert "--hmac-credential" not in done.stderr
        assert "pw" not in done.stderr
    assert svc.list_webhooks() == []
    assert len(svc.audit_entries()) == before


# ---------------------------------------------------------------------------- under serve


def start_serve(env: dict[str, str]) -> subprocess.Popen[str]:
    """``rotator serve --port 0`` as a process; returns once it printed its ready line."""
    proc = subprocess.Popen(
        [str(CLI), "serve", "--port", "0", "--poll", "0.2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "serving on" in line:
            return proc
        if not line and proc.poll() is not None:
            break
    proc.kill()
    pytest.fail(f"rotator serve did not start: {proc.communicate(timeout=30)[1]}")


def stop_serve(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=60)


def test_rotator_serve_delivers_events_and_a_restarted_serve_resends_nothing(
    svc: BlockingService, settings: Settings, receivers: Callable[..., Receiver]
) -> None:
    r = receivers()
    svc.add_webhook(r.url, events="rotation.started,rotation.succeeded", secret_ref=keyed(svc))
    svc.add_credential("app/db", "local", value=ValueInput(generate=True))
    env = cli_env(settings)
    server = start_serve(env)
    try:
        assert cli(["rotate", "app/db"], env).returncode == 0
        wait_for(lambda: len(r.accepted()) == 2, "serve to deliver both events")
    finally:
        stop_serve(server)
    assert r.types() == ["rotation.started", "rotation.succeeded"]

    server = start_serve(env)
    try:
        assert cli(["rotate", "app/db"], env).returncode == 0
        wait_for(lambda: len(r.accepted()) == 4, "the restarted serve to deliver the new ones")
    finally:
        stop_serve(server)
    deliveries = [x["delivery"] for x in r.accepted()]
    assert len(deliveries) == len(set(deliveries)) == 4, "nothing sent twice"
    assert all(x["sig_ok"] for x in r.accepted())
