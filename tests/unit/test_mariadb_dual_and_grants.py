"""The mariadb connector's pure parts, and the SQL its MySQL-only dual mode sends.

No MySQL 8 server can be installed here (Debian 12 ships MariaDB only), so dual mode is
checked against the statements it sends through a recording connection; MariaDB's refusal
of ``mode=dual`` is checked against the real server in tests/integration."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rotator.connectors import base as cb
from rotator.connectors import mariadb
from rotator.connectors.mariadb import (
    MariadbConfig,
    MariadbConnector,
    account_limits,
    clone_grants,
    native_hash,
)
from rotator.domain.secret import Secret
from rotator.errors import InvalidInput


def test_native_hash_is_what_mariadb_stores_for_the_same_password() -> None:
    # MariaDB 10.11: CREATE USER ... IDENTIFIED BY 'init' stores this authentication_string.
    assert native_hash("init") == "*5535E5A07B0FF6025FDDE23EC2908D40CFC96C40"


def test_clone_grants_rewrite_only_the_grantee_and_drop_the_password() -> None:
    lines = [
        "GRANT USAGE ON *.* TO `app`@`%` IDENTIFIED BY PASSWORD '*5535E5A07B0FF6025FDDE23EC29"
        "08D40CFC96C40' WITH MAX_QUERIES_PER_HOUR 5",
        "GRANT SELECT ON `x`` TO ``app``@``%`.* TO `app`@`%` WITH GRANT OPTION",
        "GRANT `reporting` TO `app`@`%`",
        "SET DEFAULT ROLE `reporting` FOR `app`@`%`",
    ]
    assert clone_grants(lines, "app", "app_clone", "%") == [
        "GRANT USAGE ON *.* TO `app_clone`@`%` WITH MAX_QUERIES_PER_HOUR 5",
        "GRANT SELECT ON `x`` TO ``app``@``%`.* TO `app_clone`@`%` WITH GRANT OPTION",
        "GRANT `reporting` TO `app_clone`@`%`",
        "SET DEFAULT ROLE `reporting` FOR `app_clone`@`%`",
    ]
    bare = ["GRANT USAGE ON *.* TO `a``b`@`10.%` IDENTIFIED BY PASSWORD '*00'"]
    assert clone_grants(bare, "a`b", "c", "10.%") == []


def test_clone_grants_refuse_what_they_cannot_read() -> None:
    with pytest.raises(cb.PermanentError, match="cannot read a grant"):
        clone_grants(["GRANT SELECT ON *.* TO `other`@`%`"], "app", "app_clone", "%")
    with pytest.raises(cb.PermanentError, match="cannot copy"):
        clone_grants(
            ["GRANT USAGE ON *.* TO `app`@`%` IDENTIFIED VIA ed25519 USING 'x'"],
            "app",
            "app_clone",
            "%",
        )


@pytest.mark.parametrize(
    ("version", "dual"),
    [("8.0.36", True), ("8.0.14-log", True), ("8.0.13", False), ("10.11.19-MariaDB", False)],
)
def test_dual_passwords_are_detected_from_the_version(version: str, dual: bool) -> None:
    info = mariadb._ServerInfo()
    info.parse(version)
    assert info.dual is dual


@pytest.mark.parametrize(
    "settings",
    [
        {"user": "app", "mode": "dual"},  # dual needs an admin
        {"user": "app", "admin": "a", "ssl_mode": "verify_identity"},  # no ssl_ca
        {"user": "app", "admin": "a", "clone": "app"},
        {"user": "app", "admin": "a", "ssl_ca": "relative.pem"},
        {"user": "x" * 81, "admin": "a"},
    ],
)
def test_invalid_settings_are_input_errors(settings: dict[str, str]) -> None:
    with pytest.raises(InvalidInput):
        cb.parse_config(MariadbConnector(), settings)


class _Cursor:
    def __init__(
        self, sent: list[tuple[str, Any]], answers: dict[str, tuple[tuple[Any, ...], ...]]
    ) -> None:
        self.sent, self.answers = sent, answers

    async def __aenter__(self) -> _Cursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def execute(self, query: str, args: Any = None) -> None:
        self.sent.append((query, args))

    async def fetchall(self) -> tuple[tuple[Any, ...], ...]:
        query = self.sent[-1][0]
        for start, rows in self.answers.items():
            if query.startswith(start):
                return rows
        return (("mysql_native_password",),) if "FROM mysql.user" in query else ()


class _Recording:
    """Stands in for an admin session on a MySQL 8.0.36 server; records every statement and
    answers a query starting with a key of ``answers`` with its rows."""

    def __init__(self, answers: dict[str, tuple[tuple[Any, ...], ...]] | None = None) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.answers = answers or {}

    def cursor(self) -> _Cursor:
        return _Cursor(self.sent, self.answers)

    def release(self, conn: object, broken: bool) -> None:
        return None


def _dual(monkeypatch: pytest.MonkeyPatch, logs_in: bool) -> tuple[MariadbConnector, _Recording]:
    conn = MariadbConnector()
    rec = _Recording()
    info = mariadb._ServerInfo()
    info.parse("8.0.36")

    async def admin(*_: object) -> mariadb._Session:
        return mariadb._Session(rec, rec, info)  # type: ignore[arg-type]

    async def can_login(*_: object) -> bool:
        return logs_in

    monkeypatch.setattr(conn, "_admin", admin)
    monkeypatch.setattr(conn, "_can_login", can_login)
    return conn, rec


CFG = MariadbConfig(user="app", host_part="10.0.%", admin="a", mode="dual")
NEW, OLD = Secret('{"password": "new-pw"}'), Secret('{"password": "old-pw"}')


def test_dual_set_retains_the_current_password(monkeypatch: pytest.MonkeyPatch) -> None:
    conn, rec = _dual(monkeypatch, logs_in=False)
    asyncio.run(conn.set(cb.SetRequest("c", 2, CFG, NEW, OLD)))
    assert rec.sent[-1] == (
        "ALTER USER %s@%s IDENTIFIED BY %s RETAIN CURRENT PASSWORD",
        ("app", "10.0.%", "new-pw"),
    )
    assert conn.strategy_for(CFG) is cb.Strategy.DUAL


def test_dual_set_already_done_sends_nothing_that_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A second RETAIN would make PENDING secondary too and push CURRENT out.
    conn, rec = _dual(monkeypatch, logs_in=True)
    asyncio.run(conn.set(cb.SetRequest("c", 2, CFG, NEW, OLD)))
    assert not any(q.startswith("ALTER") for q, _ in rec.sent)


def test_dual_revoke_discards_the_old_password(monkeypatch: pytest.MonkeyPatch) -> None:
    conn, rec = _dual(monkeypatch, logs_in=True)
    asyncio.run(conn.revoke(cb.RevokeRequest("c", 1, CFG, OLD)))
    assert rec.sent == [("ALTER USER %s@%s DISCARD OLD PASSWORD", ("app", "10.0.%"))]


def test_dual_rollback_makes_current_primary_and_discards_pending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn, rec = _dual(monkeypatch, logs_in=True)
    asyncio.run(conn.rollback(cb.RollbackRequest("c", 2, CFG, NEW, OLD)))
    assert rec.sent == [
        ("ALTER USER %s@%s IDENTIFIED BY %s", ("app", "10.0.%", "old-pw")),
        ("ALTER USER %s@%s DISCARD OLD PASSWORD", ("app", "10.0.%")),
    ]


def test_dual_is_refused_on_mariadb_before_any_change(monkeypatch: pytest.MonkeyPatch) -> None:
    conn, rec = _dual(monkeypatch, logs_in=False)
    info = mariadb._ServerInfo()
    info.parse("10.11.19-MariaDB-0+deb12u1")

    async def admin(*_: object) -> mariadb._Session:
        return mariadb._Session(rec, rec, info)  # type: ignore[arg-type]

    monkeypatch.setattr(conn, "_admin", admin)
    with pytest.raises(cb.PermanentError, match=r"mode=dual needs MySQL 8\.0\.14"):
        asyncio.run(conn.set(cb.SetRequest("c", 2, CFG, NEW, OLD)))
    assert not any(q.startswith("ALTER") for q, _ in rec.sent)


def test_clone_grants_drop_a_default_role_that_is_no_longer_granted() -> None:
    # MariaDB prints the SET DEFAULT ROLE line after REVOKE `r` FROM the user; the clone
    # would be refused it (error 1959).
    stale = ["GRANT USAGE ON *.* TO `app`@`%`", "SET DEFAULT ROLE `r` FOR `app`@`%`"]
    assert clone_grants(stale, "app", "app_clone", "%") == []
    kept = ["GRANT `r`,`s` TO `app`@`%`", "SET DEFAULT ROLE `s` FOR `app`@`%`"]
    assert clone_grants(kept, "app", "app_clone", "%") == [
        "GRANT `r`,`s` TO `app_clone`@`%`",
        "SET DEFAULT ROLE `s` FOR `app_clone`@`%`",
    ]


def _alternating(rec: _Recording, version: str) -> None:
    """Runs ``set`` to the (existing) clone against ``rec`` standing in for ``version``."""
    conn = MariadbConnector()
    info = mariadb._ServerInfo()
    info.parse(version)

    async def admin(*_: object) -> mariadb._Session:
        return mariadb._Session(rec, rec, info)  # type: ignore[arg-type]

    conn._admin = admin  # type: ignore[method-assign]
    cfg = MariadbConfig(user="app", admin="a")
    pending = Secret('{"username": "app_clone", "password": "new-pw"}')
    asyncio.run(conn.set(cb.SetRequest("c", 2, cfg, pending, OLD)))


def test_a_grant_line_that_cannot_be_read_leaves_the_existing_clone_untouched() -> None:
    rec = _Recording({"SHOW GRANTS": (("GRANT SELECT ON *.* TO `someone`@`%`",),)})
    with pytest.raises(cb.PermanentError, match="cannot read a grant"):
        _alternating(rec, "10.11.19-MariaDB")
    assert not any(q.startswith(("REVOKE", "ALTER", "SET")) for q, _ in rec.sent)


# MySQL 8.0's SHOW CREATE USER (its documented form, on one line); the hash is binary text
# that may hold quotes and keywords.
MYSQL_CREATE_USER = (
    "CREATE USER `app`@`%` IDENTIFIED WITH 'caching_sha2_password' AS '$A$005$x\\' REQUIRE "
    "SSL q''z' DEFAULT ROLE `r`@`%` REQUIRE ISSUER '/C=SE/O=Acme' SUBJECT '/CN=app' "
    "CIPHER 'ECDHE-RSA-AES256-GCM-SHA384' WITH MAX_QUERIES_PER_HOUR 10 "
    "MAX_USER_CONNECTIONS 2 PASSWORD EXPIRE INTERVAL 180 DAY ACCOUNT UNLOCK PASSWORD "
    "HISTORY DEFAULT PASSWORD REUSE INTERVAL DEFAULT PASSWORD REQUIRE CURRENT DEFAULT"
)


TLS_SUBJECT = "ISSUER '/C=SE/O=Acme' SUBJECT '/CN=app' CIPHER 'ECDHE-RSA-AES256-GCM-SHA384'"


def test_account_limits_read_the_require_and_with_part_of_mysql_show_create_user() -> None:
    assert account_limits(MYSQL_CREATE_USER, "app", "%") == (
        "REQUIRE ISSUER '/C=SE/O=Acme' SUBJECT '/CN=app' CIPHER "
        "'ECDHE-RSA-AES256-GCM-SHA384' WITH MAX_QUERIES_PER_HOUR 10 MAX_USER_CONNECTIONS 2"
    )
    plain = (
        "CREATE USER `app`@`%` IDENTIFIED WITH 'mysql_native_password' AS '*00' REQUIRE NONE "
        "PASSWORD EXPIRE DEFAULT ACCOUNT UNLOCK"
    )
    assert account_limits(plain, "app", "%") == "REQUIRE NONE"
    for unreadable in ("", "CREATE USER `app`@`%` REQUIRE SSL; DROP USER x ACCOUNT LOCK"):
        with pytest.raises(cb.PermanentError, match=r"cannot read the TLS requirements"):
            account_limits(unreadable, "app", "%")


def test_on_mysql_the_clone_gets_the_tls_requirements_and_loses_its_roles() -> None:
    # Unverified against a MySQL server (none installable here): the SQL only.
    rec = _Recording(
        {
            "SHOW GRANTS": (("GRANT SELECT ON `db`.* TO `app`@`%`",),),
            "SHOW CREATE USER": ((MYSQL_CREATE_USER.replace(TLS_SUBJECT, "SSL"),),),
            "SELECT FROM_USER": (("old_role", "%"),),
            "SELECT VERSION": (("8.0.36",),),
        }
    )
    _alternating(rec, "8.0.36")
    changes = [(q, a) for q, a in rec.sent if not q.startswith(("SELECT", "SHOW"))]
    assert changes[:5] == [
        ("REVOKE ALL PRIVILEGES, GRANT OPTION FROM %s@%s", ("app_clone", "%")),
        ("REVOKE %s@%s FROM %s@%s", ("old_role", "%", "app_clone", "%")),
        ("GRANT SELECT ON `db`.* TO `app_clone`@`%`", None),
        (
            "ALTER USER `app_clone`@`%` REQUIRE SSL WITH MAX_QUERIES_PER_HOUR 10 "
            "MAX_USER_CONNECTIONS 2",
            None,
        ),
        (
            "ALTER USER %s@%s IDENTIFIED WITH mysql_native_password AS %s",
            ("app_clone", "%", mariadb.native_hash("new-pw")),
        ),
    ]
