"""What the remote-capable commands need of the service: :class:`UseCases`, which both the
local :class:`~rotator.service.BlockingService` and the REST
:class:`~rotator.client.remote.RemoteService` implement (mypy checks both against it).

Principals are not part of it: the local facade acts as the principal bound to it, the remote
one as its token's."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from rotator.domain.model import Credential, Stage
from rotator.domain.secret import Secret
from rotator.service import (
    BatchResult,
    EventInput,
    EventReport,
    PolicyInput,
    RotationResult,
    ValueInput,
)
from rotator.service.rotation import Selection
from rotator.service.views import AuditEntry, EventRow, VerifyResult


class UseCases(Protocol):
    def add_credential(
        self,
        name: str,
        connector: str,
        *,
        settings: Mapping[str, str] | None = ...,
        tags: Mapping[str, str] | None = ...,
        policy: PolicyInput = ...,
        value: ValueInput = ...,
        verify: bool = ...,
        sinks: Sequence[str] = ...,
    ) -> Credential: ...

    def list_credentials(
        self, *, tags: Mapping[str, str] | None = ..., due: bool = ...
    ) -> list[Credential]: ...

    def show(self, name: str) -> Credential: ...

    def get_value(self, name: str, stage: Stage = ...) -> Secret: ...

    def update_credential(
        self,
        name: str,
        *,
        connector: str | None = ...,
        settings: Mapping[str, str] | None = ...,
        tags: Mapping[str, str] | None = ...,
        policy: PolicyInput = ...,
        value: ValueInput = ...,
        sinks: Sequence[str] | None = ...,
    ) -> Credential: ...

    def report_usage(self, name: str, count: int = ...) -> Credential: ...

    def remove_credential(self, name: str) -> None: ...

    def plan(self, sel: Selection, *, emergency: bool = ...) -> list[dict[str, Any]]: ...

    def rotate(
        self,
        sel: Selection,
        *,
        emergency: bool = ...,
        progress: Callable[[RotationResult], None] | None = ...,
        on_selected: Callable[[int], None] | None = ...,
    ) -> BatchResult: ...

    def audit_entries(
        self, credential: str | None = ..., limit: int | None = ...
    ) -> list[AuditEntry]: ...

    def audit_verify(self, expect_head: tuple[int, str] | None = ...) -> VerifyResult: ...

    def audit_head(self) -> tuple[int, str]: ...

    def report_event(self, event: EventInput) -> EventReport: ...

    def list_events(self, limit: int = ...) -> list[EventRow]: ...
