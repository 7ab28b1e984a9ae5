"""A batch's JSON and exit status when a guard refused some of its rotations (SKIPPED)."""

from __future__ import annotations

from rotator.engine import BatchResult, Outcome, RotationResult


def test_skipped_rotations_are_listed_apart_and_are_not_failures() -> None:
    result = BatchResult(
        [
            RotationResult("a", Outcome.ROTATED),
            RotationResult("b", Outcome.SKIPPED, error="not started: its claim ended"),
        ]
    )
    data = result.to_json()
    assert data["rotated"] == ["a"]
    assert data["failed"] == []
    assert data["skipped"] == [{"name": "b", "reason": "not started: its claim ended"}]
    assert result.ok


def test_a_failure_beside_a_skip_still_fails_the_batch() -> None:
    result = BatchResult(
        [
            RotationResult("a", Outcome.FAILED, error="set: refused"),
            RotationResult("b", Outcome.SKIPPED, error="not started: its claim ended"),
        ]
    )
    assert result.to_json()["failed"] == [{"name": "a", "error": "set: refused"}]
    assert not result.ok
