"""What the rotation and read paths keep between transactions never hides another process's
change: each tenant's policy defaults (kept under the store's policy generation) and the
stage maps already verified (kept per credential) are checked against what the next
transaction reads. Two services on one store stand for two rotator processes: each has its
own kernel, so its own caches."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from rotator.config import Settings
from rotator.errors import IntegrityError
from rotator.service import BlockingService, PolicyInput, ValueInput
from rotator.service.rotation import Selection


@pytest.fixture
def other(svc: BlockingService, settings: Settings) -> Iterator[BlockingService]:
    """A second service on the store ``svc`` initialized: another process's view."""
    second = BlockingService.open(settings)
    yield second
    second.close()


def test_a_policy_set_by_another_process_is_used_by_the_next_rotation_and_a_stage_edit_after_a_read_is_caught(  # noqa: E501
    svc: BlockingService, other: BlockingService, raw_db: Engine
) -> None:
    svc.add_credential("prod/app", "local", tags={"env": "prod"}, value=ValueInput(generate=True))
    svc.set_policy_default(tag=("env", "prod"), policy=PolicyInput(every="30d"))
    # This process rotates: its finish reschedules with the defaults it now keeps.
    assert svc.rotate(Selection(names=["prod/app"])).results[0].outcome == "rotated"
    assert svc.show("prod/app").next_rotation_rule == "every 30d from tag env=prod"

    # Another process changes the tag default, then removes it for a tenant default.
    other.set_policy_default(tag=("env", "prod"), policy=PolicyInput(every="10d"))
    assert svc.rotate(Selection(names=["prod/app"])).results[0].outcome == "rotated"
    assert svc.show("prod/app").next_rotation_rule == "every 10d from tag env=prod"
    other.set_policy_default(tenant="default", policy=PolicyInput(every="60d"))
    other.remove_policy_default(tag=("env", "prod"))
    assert svc.rotate(Selection(names=["prod/app"])).results[0].outcome == "rotated"
    shown = svc.show("prod/app")
    assert shown.next_rotation_rule == "every 60d from tenant default"
    assert shown.policy.every is not None
    assert shown.policy.every.days == 60

    # A read verifies (and keeps) the stage map; an edit of the stages behind rotator's
    # back afterwards is still caught by the next read, in this process and the other.
    svc.get_value("prod/app")
    with raw_db.begin() as conn:
        cid = conn.execute(text("SELECT id FROM credentials WHERE name = 'prod/app'")).scalar()
        conn.execute(
            text(
                "UPDATE versions SET stage = 'RETIRED' "
                "WHERE stage = 'CURRENT' AND credential_id = :c"
            ),
            {"c": cid},
        )
        conn.execute(
            text(
                "UPDATE versions SET stage = 'CURRENT' "
                "WHERE stage = 'PREVIOUS' AND credential_id = :c"
            ),
            {"c": cid},
        )
    for service in (svc, other):
        with pytest.raises(IntegrityError, match="integrity check failed"):
            service.get_value("prod/app")
