"""The "still valid" lines printed by ``rotate --emergency`` and ``event report``."""

from __future__ import annotations

import pytest

from rotator.cli.rotate import print_still_valid
from rotator.service import StillValid


def test_still_valid_line_says_queued_not_failed_when_no_revoke_was_attempted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_still_valid(
        [StillValid("prod/a", 1, None), StillValid("prod/b", 2, "revoke: permission denied")]
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "still valid prod/a version 1: not revoked yet; queued for revocation",
        "still valid prod/b version 2: revocation failed (revoke: permission denied); "
        "queued for retry",
    ]
