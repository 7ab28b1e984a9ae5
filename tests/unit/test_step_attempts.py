"""The step executor's attempts: the first made directly, the rest under tenacity, with the
policy's attempt count and numbering either way."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest

from rotator.connectors.base import PermanentError, TransientError
from rotator.engine.options import EngineOptions
from rotator.engine.steps import StepRunner


def runner(attempts: int) -> StepRunner:
    opts = EngineOptions(retry_attempts=attempts, retry_initial_s=0.0001, retry_max_s=0.0002)
    return StepRunner(cast(Any, SimpleNamespace(opts=opts)), cast(Any, None), cast(Any, None))


def flaky(failures: int, seen: list[int]) -> Any:
    async def call(n: int) -> str:
        seen.append(n)
        if len(seen) <= failures:
            raise TransientError(f"attempt {n} refused")
        return f"ok at {n}"

    return call


@pytest.mark.parametrize("failures", [0, 1, 2, 4])
def test_transient_failures_are_retried_with_attempts_numbered_one_by_one(failures: int) -> None:
    seen: list[int] = []
    result = asyncio.run(runner(5).attempts(flaky(failures, seen)))
    assert result == f"ok at {failures + 1}"
    assert seen == list(range(1, failures + 2))


@pytest.mark.parametrize("attempts", [1, 2, 6])
def test_a_call_that_always_fails_is_made_exactly_the_policys_number_of_times(
    attempts: int,
) -> None:
    seen: list[int] = []
    with pytest.raises(TransientError, match=f"attempt {attempts} refused"):
        asyncio.run(runner(attempts).attempts(flaky(10**6, seen)))
    assert seen == list(range(1, attempts + 1))


def test_a_permanent_error_is_not_retried() -> None:
    seen: list[int] = []

    async def call(n: int) -> None:
        seen.append(n)
        raise PermanentError("no such account")

    with pytest.raises(PermanentError):
        asyncio.run(runner(6).attempts(call))
    assert seen == [1]
