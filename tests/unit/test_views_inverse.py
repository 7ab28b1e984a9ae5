"""The inverse views a remote client rebuilds objects with: each undoes its view, so the CLI
prints a rebuilt object as it prints the original; and the REST error mapping the remote CLI
relies on for its exit codes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from rotator.audit.chain import AuditEntry
from rotator.client.remote import error_of
from rotator.domain.model import Credential, Stage, Version
from rotator.domain.policy import RotationPolicy
from rotator.errors import (
    AlreadyExists,
    AuthenticationFailed,
    InvalidInput,
    NotFound,
    PermissionDenied,
    RotatorError,
    StoreUnavailable,
)
from rotator.policy.risk import RiskAction, Severity
from rotator.service import BatchResult, EventReport, Outcome, RotationResult, StillValid
from rotator.service.events import CredentialDecision
from rotator.service.views import (
    audit_entry_from_json,
    batch_result_from_json,
    credential_from_view,
    credential_view,
    event_report_from_json,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _credential(policy: RotationPolicy, *, sinks: bool) -> Credential:
    return Credential(
        id=7,
        tenant="acme",
        name="prod/db",
        connector="postgres",
        config={"host": "db", "port": "5432"},
        tags={"env": "prod"},
        policy=policy,
        created_at=T0,
        updated_at=T0 + timedelta(hours=1),
        next_rotation_at=T0 + timedelta(days=30),
        last_rotated_at=T0 + timedelta(seconds=1),
        use_count=12,
        versions=(
            Version(7, 1, Stage.PREVIOUS, T0, T0 + timedelta(seconds=1), T0 + timedelta(hours=1)),
            Version(7, 2, Stage.CURRENT, T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)),
        ),
        sinks=(
            {"kind": "file", "path": "/run/app/db.env", "format": "dotenv"},
            {"kind": "openbao", "addr": "https://bao:8200", "path": "app/db", "token": "bao/t"},
            {
                "kind": "openbao",
                "addr": "https://bao:8200",
                "mount": "kv",
                "path": "a/b",
                "key": "pw",
                "auth": "approle",
                "role_id": "r-1",
                "secret_id": "bao/sid",
            },
            {"kind": "exec", "command": "/usr/local/lib/hooks/pub lish.sh", "input": "raw"},
        )
        if sinks
        else (),
        next_rotation_rule="every 30d from tag env=prod",
    )


@pytest.mark.parametrize(
    "policy",
    [
        RotationPolicy(),
        RotationPolicy(every=timedelta(days=30), grace=timedelta(hours=1), max_uses=100),
        RotationPolicy(
            cron="0 3 * * 3",
            window=timedelta(hours=2),
            jitter=timedelta(minutes=10),
            blackout=("Fri 18:00-Mon 06:00",),
            tz="Europe/Paris",
            max_age=timedelta(days=90),
            grace=timedelta(0),
        ),
    ],
)
def test_credential_from_view_undoes_credential_view(policy: RotationPolicy) -> None:
    for sinks in (False, True):
        cred = _credential(policy, sinks=sinks)
        view = credential_view(cred)
        back = credential_from_view(view)
        assert credential_view(back) == view
        assert back.policy.describe() == cred.policy.describe()
        assert back.version_in(Stage.CURRENT) is not None


def test_batch_result_from_json_undoes_to_json() -> None:
    results = [
        RotationResult("a", Outcome.ROTATED, warnings=("sink file /x not written",)),
        RotationResult("b", Outcome.FAILED, error="target refused"),
        RotationResult("c", Outcome.ROLLED_BACK, error="test failed"),
        RotationResult("d", Outcome.SKIPPED, error="rotated 2s ago"),
    ]
    for still, sweep in (
        (None, None),
        ([], None),
        ([StillValid("c", 3, None), StillValid("b", 1, "revoke failed")], None),
        (None, "cannot reach database"),
    ):
        batch = BatchResult(
            results=results, duration_s=1.23456, still_valid=still, sweep_error=sweep
        )
        back = batch_result_from_json(batch.to_json())
        assert back.to_json() == batch.to_json()
        assert back.ok == batch.ok
        assert [r.outcome for r in back.results] == [r.outcome for r in results]
    assert batch_result_from_json(BatchResult(results=results[:1]).to_json()).ok


def test_audit_entry_from_json_undoes_to_json() -> None:
    entry = AuditEntry(
        seq=5,
        ts="2026-01-02T03:04:05.678901Z",
        tenant="acme",
        actor="token:abc",
        action="credential.read",
        credential="prod/db",
        rotation_id=None,
        details={"stage": "CURRENT", "version": 2},
        prev_hash="a" * 64,
        hash="b" * 64,
        key_id="k1",
    )
    assert audit_entry_from_json(entry.to_json()) == entry


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, InvalidInput),
        (422, InvalidInput),
        (401, AuthenticationFailed),
        (403, PermissionDenied),
        (404, NotFound),
        (409, AlreadyExists),
        (413, InvalidInput),
        (415, InvalidInput),
        (503, StoreUnavailable),
        (500, RotatorError),
        (502, RotatorError),
    ],
)
def test_problem_statuses_become_the_services_typed_errors(
    status: int, error: type[RotatorError]
) -> None:
    resp = httpx.Response(status, json={"status": status, "detail": "what went wrong"})
    err = error_of(resp)
    assert type(err) is error
    assert str(err) == "what went wrong"


def test_rate_limited_is_bad_input_naming_the_wait() -> None:
    resp = httpx.Response(429, headers={"Retry-After": "7"}, json={"detail": "slow down"})
    err = error_of(resp)
    assert isinstance(err, InvalidInput)
    assert str(err) == "rate limited: retry after 7 s"


def test_event_report_from_json_undoes_to_json() -> None:
    report = EventReport(
        event_id=4,
        kind="leak.github",
        severity=Severity.HIGH,
        decisions=[
            CredentialDecision("a", RiskAction.NOTIFY, "rule high=notify"),
            CredentialDecision(
                "b", RiskAction.EMERGENCY, "rule", outcome=Outcome.FAILED, error="refused"
            ),
            CredentialDecision("c", RiskAction.ROTATE, "dup", duplicate_of=3),
        ],
        still_valid=[StillValid("b", 2, None)],
    )
    back = event_report_from_json(report.to_json())
    assert back.to_json() == report.to_json()
    assert back.ok == report.ok
