"""Connectors declare which settings name other credentials (connectors/base.py)."""

from __future__ import annotations

import pytest

from rotator.connectors import base as cb
from rotator.connectors.registry import BUILTIN, get_connector

DECLARED = {
    "local": (),
    "postgres": ("admin",),
    "redis": ("admin",),
    "http": ("auth", "hmac_key"),
    "jwks": (),
    "certificate": ("ca",),
    "ldap": ("admin",),
    "exec": (),
    "mariadb": ("admin",),
}


@pytest.mark.parametrize("kind", sorted(BUILTIN))
def test_every_builtin_connector_declares_its_references_by_real_setting_names(
    kind: str,
) -> None:
    impl = get_connector(kind)
    declared = impl.references  # type: ignore[attr-defined]
    assert declared == DECLARED[kind]
    for setting in declared:
        assert setting in impl.config_model.model_fields, f"{kind}: no setting {setting!r}"


def test_references_of_names_the_credentials_set_and_skips_empty_settings() -> None:
    http = get_connector("http")
    settings = {
        "base_url": "https://api.example",
        "set_path": "/keys",
        "set_body": '{"key": "$value"}',
        "test_path": "/me",
        "revoke_path": "/keys/$value",
        "auth": "api/admin",
    }
    cfg = cb.parse_config(http, settings)
    assert cb.references_of(http, cfg) == frozenset({"api/admin"})
    pg = get_connector("postgres")
    assert cb.references_of(pg, cb.parse_config(pg, {"role": "app"})) == frozenset()


def test_a_connector_that_declares_nothing_references_nothing() -> None:
    class Bare:
        pass

    assert cb.references_of(Bare(), cb.ConnectorConfig()) == frozenset()  # type: ignore[arg-type]


def test_reference_refused_is_a_permanent_error_naming_the_reference() -> None:
    exc = cb.ReferenceRefused("set: admin login refused", "pg/admin")
    assert isinstance(exc, cb.PermanentError)
    assert exc.reference == "pg/admin"
    assert str(exc) == "set: admin login refused"
