"""Connector calls at `credential add` (generate, --verify, publish) read the credentials they
reference fresh, audited as the caller (not through a rotation's cached resolver)."""

from __future__ import annotations

from typing import ClassVar

import pytest

from rotator.connectors import base as cb
from rotator.connectors.registry import register
from rotator.domain.secret import Secret
from rotator.errors import VerificationFailed
from rotator.service import BlockingService, ValueInput


class RefCfg(cb.ConnectorConfig):
    admin: str = ""


class RefCheck:
    """Its target accepts only SERVER['pw'] as the admin password (like postgres --verify)."""

    kind: ClassVar[str] = "refcheck"
    strategy: ClassVar[cb.Strategy] = cb.Strategy.DUAL
    config_model: ClassVar[type[cb.ConnectorConfig]] = RefCfg
    SERVER: ClassVar[dict[str, str]] = {}

    def target_key(self, config: cb.ConnectorConfig) -> str:
        return "refcheck"

    async def verify(self, req: cb.VerifyRequest) -> None:
        assert isinstance(req.config, RefCfg)
        got = (await req.secrets.get(req.config.admin)).reveal_text()
        if got != self.SERVER["pw"]:
            raise cb.ReferenceRefused("admin login refused", req.config.admin)

    async def create(self, req: cb.CreateRequest) -> Secret:
        return Secret("x")

    async def set(self, req: cb.SetRequest) -> None: ...
    async def test(self, req: cb.TestRequest) -> None: ...
    async def finish(self, req: cb.FinishRequest) -> None: ...
    async def revoke(self, req: cb.RevokeRequest) -> None: ...
    async def rollback(self, req: cb.RollbackRequest) -> None: ...


@pytest.fixture(autouse=True)
def _reg() -> None:
    register(RefCheck)  # type: ignore[arg-type]


def test_verify_after_admin_value_updated_uses_the_new_admin_value(svc: BlockingService) -> None:
    RefCheck.SERVER["pw"] = "pw-1"
    svc.add_credential("pgadmin", "local", value=ValueInput(value=Secret("pw-1")))
    svc.add_credential("app1", "refcheck", settings={"admin": "pgadmin"}, verify=True)
    # the operator changes the admin password on the server and stores it in rotator
    RefCheck.SERVER["pw"] = "pw-2"
    svc.update_credential("pgadmin", value=ValueInput(value=Secret("pw-2")))
    # a fresh read: pw-2, which the server accepts
    svc.add_credential("app2", "refcheck", settings={"admin": "pgadmin"}, verify=True)


def test_verify_after_admin_credential_removed_fails(svc: BlockingService) -> None:
    RefCheck.SERVER["pw"] = "pw-1"
    svc.add_credential("pgadmin", "local", value=ValueInput(value=Secret("pw-1")))
    svc.add_credential("app1", "refcheck", settings={"admin": "pgadmin"}, verify=True)
    svc.remove_credential("pgadmin")
    # a fresh read: the credential is gone
    with pytest.raises(VerificationFailed):
        svc.add_credential("app2", "refcheck", settings={"admin": "pgadmin"}, verify=True)


def test_admin_secret_read_at_add_is_audited_as_the_caller(svc: BlockingService) -> None:
    RefCheck.SERVER["pw"] = "pw-1"
    svc.add_credential("pgadmin", "local", value=ValueInput(value=Secret("pw-1")))
    svc.add_credential("app1", "refcheck", settings={"admin": "pgadmin"}, verify=True)
    reads = [e for e in svc.audit_entries(credential="pgadmin") if e.action == "value.read"]
    assert [e.actor for e in reads] == ["local"]
