"""The exit code a command ends with is the process's, on the parser's path and the fast one.

typer, run without its standalone mode as rotator.cli.main does, *returns* the code of a
``typer.Exit`` a command raises and 130 for Ctrl-C instead of exiting; rotator once dropped
that return value, so ``webhook retry`` with letters still failing and an interrupted command
both exited 0. The store is replaced by a stand-in here: what is under test is only how the
command line maps an outcome to an exit code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest

from rotator.cli import fast, session
from rotator.cli import webhook as webhook_cli
from rotator.cli.main import main


class _Svc:
    def __init__(self, *, failed: int = 0, interrupt: bool = False) -> None:
        self.failed = failed
        self.interrupt = interrupt

    def retry_webhook_dead_letters(self, dead_id: Any, *, retry_all: bool) -> SimpleNamespace:
        if self.interrupt:
            raise KeyboardInterrupt
        return SimpleNamespace(delivered=1, failed=self.failed)

    def get_value(self, name: str, stage: Any) -> str:
        raise KeyboardInterrupt


def _standin(svc: _Svc) -> Any:
    @contextmanager
    def service(*args: Any, **kwargs: Any) -> Iterator[_Svc]:
        yield svc

    return service


@pytest.mark.parametrize(("failed", "code"), [(0, 0), (2, 1)])
def test_webhook_retry_exits_1_when_some_dead_letters_still_fail(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], failed: int, code: int
) -> None:
    monkeypatch.setattr(webhook_cli, "service", _standin(_Svc(failed=failed)))
    assert main(["webhook", "retry", "--all"]) == code
    assert f"still failing {failed}" in capsys.readouterr().out


def test_an_interrupted_command_exits_130_on_the_parsers_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(webhook_cli, "service", _standin(_Svc(interrupt=True)))
    assert main(["webhook", "retry", "--all"]) == 130


def test_an_interrupted_credential_get_exits_130_on_the_fast_path(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ROTATOR_URL", raising=False)
    monkeypatch.setattr(session, "service", _standin(_Svc()))
    assert fast.credential_get(["credential", "get", "app/db"]) == 130
    assert capsys.readouterr().out == ""
