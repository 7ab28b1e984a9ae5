"""The mariadb connector against a real MariaDB (Debian's mariadb-server, started by the
``mariadb_target`` fixture on loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomysql
import pymysql
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.support.mariadb_server import MariadbServer

from rotator import scheduler
from rotator.config import Settings
from rotator.connectors import base as cb
from rotator.connectors.mariadb import (
    MariadbConfig,
    MariadbConnector,
    native_hash,
    parse_login,
)
from rotator.domain.model import Stage
from rotator.domain.secret import Secret
from rotator.engine import BatchResult, Engine, EngineOptions, RotationRequest, Trigger
from rotator.errors import ConnectorError, NotFound, VerificationFailed
from rotator.kernel.core import utcnow
from rotator.service import BlockingService, PolicyInput, ValueInput

FAST = EngineOptions(retry_attempts=2, retry_initial_s=0.01, retry_max_s=0.05)
CLI = Path(sys.executable).with_name("rotator")


@dataclass
class Account:
    user: str
    password: str
    host_part: str = "%"
    database: str = ""


SHARED_DB = "rotator_test"


def make_account(server: MariadbServer, user: str | None = None, host_part: str = "%") -> Account:
    """A fresh account with SELECT on a database holding one table (shared by the accounts,
    which all may read it; nobody else may)."""
    acc = Account(user or f"app_{uuid.uuid4().hex[:8]}", "init-" + uuid.uuid4().hex, host_part)
    acc.database = SHARED_DB
    if not server.execute("SHOW DATABASES LIKE %s", (SHARED_DB,)):
        server.execute(f"CREATE DATABASE {SHARED_DB}")
        server.execute(f"CREATE TABLE {SHARED_DB}.t (x int)")
        server.execute(f"INSERT INTO {SHARED_DB}.t VALUES (42)")
    server.execute("CREATE USER %s@%s IDENTIFIED BY %s", (acc.user, host_part, acc.password))
    server.execute(f"GRANT SELECT ON `{acc.database}`.* TO %s@%s", (acc.user, host_part))
    return acc


def reads_its_table(server: MariadbServer, user: str, password: str, database: str) -> bool:
    with (
        pymysql.connect(
            host=server.host,
            port=server.port,
            user=user,
            password=password.encode("utf-8"),  # type: ignore[arg-type]
            charset="utf8mb4",
            database=database,
        ) as conn,
        conn.cursor() as cur,
    ):
        cur.execute("SELECT x FROM t")
        return cur.fetchall() == ((42,),)


def add_admin(svc: BlockingService, server: MariadbServer, value: str | None = None) -> None:
    svc.add_credential(
        "mdb/admin", "local", value=ValueInput(value=Secret(value or server.password))
    )


def add_mdb(
    svc: BlockingService,
    server: MariadbServer,
    name: str,
    acc: Account,
    *,
    grace: str = "1h",
    verify: bool = False,
    **settings: str,
) -> None:
    cfg = {
        "host": server.host,
        "port": str(server.port),
        "user": acc.user,
        "host_part": acc.host_part,
        "admin": "mdb/admin",
        **settings,
    }
    svc.add_credential(
        name,
        "mariadb",
        settings=cfg,
        policy=PolicyInput(grace=grace),
        value=ValueInput(value=Secret(acc.password)),
        verify=verify,
    )


def login_of(svc: BlockingService, name: str, stage: Stage = Stage.CURRENT) -> tuple[str, str]:
    login = parse_login(svc.get_value(name, stage), svc.show(name).config["user"])
    return login.username, login.password


def rotate(svc: BlockingService, *reqs: RotationRequest) -> BatchResult:
    async def go() -> BatchResult:
        async with Engine(svc.kernel, FAST) as engine:
            return await engine.rotate(list(reqs))

    return asyncio.run(go())


def revoke_due(svc: BlockingService) -> None:
    async def go() -> None:
        async with Engine(svc.kernel, FAST) as engine:
            await engine.process_revocations()

    asyncio.run(go())


def grants(server: MariadbServer, user: str, host_part: str) -> list[str]:
    """SHOW GRANTS lines with the grantee and the password hash cut out, for comparing."""
    grantee = "`" + user.replace("`", "``") + "`@`" + host_part.replace("`", "``") + "`"
    rows = server.execute("SHOW GRANTS FOR %s@%s", (user, host_part))
    return sorted(str(r[0]).replace(grantee, "GRANTEE").split(" IDENTIFIED BY")[0] for r in rows)


# ------------------------------------------------------------------------------ rotation


def test_twenty_accounts_rotate_at_once_and_every_current_logs_in(
    svc: BlockingService, mariadb_target: MariadbServer
) -> None:
    """20 credentials (10 single, 10 alternating) rotated in one batch: every CURRENT logs in
    and reads its table (the clones got the user's grants), alternating PREVIOUS works in its
    grace and is refused after it, single's old password is refused at once; then an
    emergency rotation revokes the old value before it returns."""
    server = mariadb_target
    add_admin(svc, server)
    accounts: dict[str, Account] = {}
    for i in range(20):
        mode = "single" if i % 2 else "alternating"
        name = f"mdb/{mode}-{i}"
        accounts[name] = make_account(server)
        add_mdb(svc, server, name, accounts[name], mode=mode)
    result = rotate(svc, *(RotationRequest(n) for n in accounts))
    assert result.ok, result.to_json()
    assert len(result.to_json()["rotated"]) == 20
    logins = {n: login_of(svc, n) for n in accounts}
    alternating = [n for n in accounts if "alternating" in n]
    for name in alternating[:3]:  # SHOW GRANTS twice each: a sample is enough
        assert grants(server, logins[name][0], "%") == grants(server, accounts[name].user, "%")

    def after_rotation(name: str) -> None:
        acc, (user, password) = accounts[name], logins[name]
        assert reads_its_table(server, user, password, acc.database), name
        if name in alternating:
            assert user == f"{acc.user}_clone"
            assert server.can_login(acc.user, acc.password), "PREVIOUS works in its grace"
        else:
            assert user == acc.user
            assert not server.can_login(acc.user, acc.password), "single: old refused at set"

    def after_grace(name: str) -> None:
        assert not server.can_login(accounts[name].user, accounts[name].password), name
        assert server.can_login(*logins[name]), name

    # Logins are checked from threads (each a fresh connection): 60 of them, one at a time,
    # would cost more than the rotation itself.
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(after_rotation, accounts))
        # The grace (1h) is over: revocation refuses every alternating PREVIOUS.
        svc.kernel.clock = lambda: utcnow() + timedelta(hours=2)
        revoke_due(svc)
        list(pool.map(after_grace, accounts))

    emergency = alternating[:5]
    result = rotate(
        svc, *(RotationRequest(n, trigger=Trigger.EMERGENCY, grace_s=0) for n in emergency)
    )
    assert result.ok, result.to_json()
    for name in emergency:
        assert not server.can_login(*logins[name]), "emergency: old value refused at once"
        user, password = login_of(svc, name)
        assert user == accounts[name].user
        assert reads_its_table(server, user, password, accounts[name].database)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_hostile_account_names_and_host_parts_rotate(
    svc: BlockingService, mariadb_target: MariadbServer
) -> None:
    """Quotes, a backtick, spaces, unicode, a backslash and ``%`` in the host part; a database
    whose name looks like a grantee clause: every name reaches the server as data, the
    clone gets exactly the user's grants, and rotation works both ways round."""
    server = mariadb_target
    add_admin(svc, server)
    names = [
        ("we\"ird 'acc' ü", "%"),
        ("back\\slash `tick`", "127.0.0.%"),
        ("名前 ; DROP USER root", "127.%"),
    ]
    for i, (user, host_part) in enumerate(names):
        acc = make_account(server, user, host_part)
        # A grant whose object names the account: only the real grantee is rewritten.
        trap = "x` TO `" + user.replace("`", "``") + "`@`%"
        server.execute(f"CREATE DATABASE `{trap.replace('`', '``')}`")
        quoted = trap.replace("`", "``").replace("%", "%%")
        server.execute(f"GRANT INSERT ON `{quoted}`.* TO %s@%s", (user, host_part))
        add_mdb(svc, server, f"mdb/hostile-{i}", acc, grace="1s", verify=True)
        for _ in range(2):  # to the clone, then back to the user
            svc.kernel.clock = lambda: utcnow() + timedelta(hours=1)  # the grace is over
            result = rotate(svc, RotationRequest(f"mdb/hostile-{i}"))
            assert result.ok, result.to_json()
            login = login_of(svc, f"mdb/hostile-{i}")
            assert reads_its_table(server, *login, acc.database), user
        assert grants(server, user + "_clone", host_part) == grants(server, user, host_part)
    assert server.execute("SELECT count(*) FROM mysql.user WHERE User = 'root'")[0][0] >= 3


@pytest.mark.parametrize("admin", ["a", ""], ids=["admin", "as-itself"])
def test_rollback_and_revoke_are_idempotent_and_single_rollback_restores(
    mariadb_target: MariadbServer, admin: str
) -> None:
    """Called twice each, against the server directly (as a resumed step would); with an
    admin, and with the account changing its own password (no admin: "rotate root")."""
    server = mariadb_target
    acc = make_account(server)

    class Admin:
        async def get(self, name: str) -> Secret:
            return Secret(server.password)

    cfg = MariadbConfig(
        host=server.host, port=server.port, user=acc.user, admin=admin, mode="single"
    )
    current = Secret(acc.password)

    async def go() -> None:
        conn = MariadbConnector()
        try:
            pending = await conn.create(cb.CreateRequest("c", 2, cfg, current=current))
            for _ in range(2):
                await conn.set(cb.SetRequest("c", 2, cfg, pending, current, secrets=Admin()))
            await conn.test(cb.TestRequest("c", 2, cfg, pending))
            for _ in range(2):
                await conn.rollback(
                    cb.RollbackRequest("c", 2, cfg, pending, current, secrets=Admin())
                )
            assert server.can_login(acc.user, acc.password), "rollback put CURRENT back"
            assert not server.can_login(acc.user, parse_login(pending, acc.user).password)
            for _ in range(2):
                await conn.revoke(cb.RevokeRequest("c", 1, cfg, current, secrets=Admin()))
            assert not server.can_login(acc.user, acc.password)
        finally:
            await conn.aclose()

    asyncio.run(go())


def test_revoke_and_rollback_reach_a_locked_or_expired_account_whose_password_works(
    mariadb_target: MariadbServer,
) -> None:
    """MariaDB refuses a locked account (4151) or an expired password (1862) only once the
    password checked out: revoke and rollback still change such an account's password, so the
    old value does not work again after an unlock (or in the expired-password sandbox)."""
    server = mariadb_target
    acc = make_account(server)
    clone = acc.user + "_clone"
    server.execute("CREATE USER %s@'%%' IDENTIFIED BY 'old-clone-pw'", (clone,))
    cfg = MariadbConfig(host=server.host, port=server.port, user=acc.user, admin="a")
    single = MariadbConfig(
        host=server.host, port=server.port, user=acc.user, admin="a", mode="single"
    )

    class Admin:
        async def get(self, name: str) -> Secret:
            return Secret(server.password)

    def value(user: str, password: str) -> Secret:
        return Secret(json.dumps({"username": user, "password": password}))

    def stored_hash(user: str) -> str:
        rows = server.execute(
            "SELECT authentication_string FROM mysql.user WHERE User = %s", (user,)
        )
        return str(rows[0][0])

    async def go() -> None:
        conn = MariadbConnector()
        try:
            server.execute("ALTER USER %s@'%%' ACCOUNT LOCK", (clone,))
            await conn.revoke(
                cb.RevokeRequest("c", 1, cfg, value(clone, "old-clone-pw"), secrets=Admin())
            )
            server.execute("ALTER USER %s@'%%' ACCOUNT UNLOCK", (clone,))
            assert not server.can_login(clone, "old-clone-pw"), "locked: revoke skipped it"

            server.execute("ALTER USER %s@'%%' IDENTIFIED BY 'old-clone-pw'", (clone,))
            server.execute("ALTER USER %s@'%%' PASSWORD EXPIRE", (clone,))
            await conn.revoke(
                cb.RevokeRequest("c", 1, cfg, value(clone, "old-clone-pw"), secrets=Admin())
            )
            assert stored_hash(clone) != native_hash("old-clone-pw"), "expired: revoke skipped"

            # single: PENDING was set, then the account got locked; rollback restores CURRENT
            pending = value(acc.user, "pending-pw")
            server.execute("ALTER USER %s@'%%' IDENTIFIED BY 'pending-pw'", (acc.user,))
            server.execute("ALTER USER %s@'%%' ACCOUNT LOCK", (acc.user,))
            await conn.rollback(
                cb.RollbackRequest("c", 2, single, pending, Secret(acc.password), secrets=Admin())
            )
            server.execute("ALTER USER %s@'%%' ACCOUNT UNLOCK", (acc.user,))
            assert server.can_login(acc.user, acc.password), "rollback skipped a locked one"
            assert not server.can_login(acc.user, "pending-pw")
        finally:
            await conn.aclose()

    asyncio.run(go())


def test_a_role_revoked_from_user_leaves_no_default_role_that_breaks_the_clone(
    mariadb_target: MariadbServer,
) -> None:
    """After ``REVOKE role FROM USER`` MariaDB still prints ``SET DEFAULT ROLE role FOR
    USER``: the next copy to the existing clone succeeds, and the clone ends with USER's
    grants (no role, no default role) and logs in."""
    server = mariadb_target
    acc = make_account(server)
    clone, role = acc.user + "_clone", "role_" + uuid.uuid4().hex[:8]
    server.execute(f"CREATE ROLE {role}")
    server.execute(f"GRANT SELECT ON `{SHARED_DB}`.* TO {role}")
    server.execute(f"GRANT {role} TO %s@'%%'", (acc.user,))
    server.execute(f"SET DEFAULT ROLE {role} FOR %s@'%%'", (acc.user,))
    cfg = MariadbConfig(host=server.host, port=server.port, user=acc.user, admin="a")

    class Admin:
        async def get(self, name: str) -> Secret:
            return Secret(server.password)

    def value(user: str, password: str) -> Secret:
        return Secret(json.dumps({"username": user, "password": password}))

    async def go() -> None:
        conn = MariadbConnector()
        try:
            current = value(acc.user, acc.password)
            await conn.set(cb.SetRequest("c", 2, cfg, value(clone, "p1"), current, Admin()))
            assert grants(server, clone, "%") == grants(server, acc.user, "%")
            server.execute(f"REVOKE {role} FROM %s@'%%'", (acc.user,))
            await conn.set(cb.SetRequest("c", 4, cfg, value(clone, "p3"), current, Admin()))
        finally:
            await conn.aclose()

    asyncio.run(go())
    assert not any(role in line for line in grants(server, clone, "%"))
    assert reads_its_table(server, clone, "p3", SHARED_DB)  # the direct grant was copied


def test_a_set_stuck_behind_a_read_lock_never_takes_effect_after_its_step(
    mariadb_target: MariadbServer,
) -> None:
    """A backup's FLUSH TABLES WITH READ LOCK holds ALTER USER: a step timeout (a
    cancellation) kills the waiting statement before the step ends, so the rollback that
    follows finds nothing to undo and CURRENT still works once the lock is gone; uncancelled,
    the statement gives up after statement_timeout_s (a transient error, retried later)."""
    server = mariadb_target
    acc = make_account(server)
    cfg = MariadbConfig(host=server.host, port=server.port, user=acc.user, admin="a", mode="single")
    current, pending = Secret(acc.password), Secret("pending-" + uuid.uuid4().hex)

    class Admin:
        async def get(self, name: str) -> Secret:
            return Secret(server.password)

    def waiting() -> int:
        rows = server.execute(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST"
            " WHERE INFO LIKE 'ALTER USER%%' AND INFO LIKE %s",
            ("%" + acc.user + "%",),
        )
        return int(rows[0][0])

    blocker = server.admin()
    try:
        blocker.cursor().execute("FLUSH TABLES WITH READ LOCK")

        async def go() -> None:
            conn = MariadbConnector(statement_timeout_s=1)
            try:
                with pytest.raises(cb.TransientError, match=r"mariadb error (1205|1969)"):
                    await asyncio.wait_for(  # without the session limits: waits for a day
                        conn.set(cb.SetRequest("c", 2, cfg, pending, current, Admin())), 5
                    )
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(
                        conn.set(cb.SetRequest("c", 2, cfg, pending, current, Admin())), 0.3
                    )
                deadline = time.monotonic() + 5  # KILL QUERY returns before the thread stops
                while waiting() and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert waiting() == 0, "the cancelled ALTER USER is still waiting"
                await conn.rollback(cb.RollbackRequest("c", 2, cfg, pending, current, Admin()))
            finally:
                await conn.aclose()

        asyncio.run(go())
    finally:
        blocker.cursor().execute("UNLOCK TABLES")
        blocker.close()
    assert server.can_login(acc.user, acc.password)
    assert not server.can_login(acc.user, pending.reveal_text())


# -------------------------------------------------------------------------------- verify


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_verify_catches_a_wrong_admin_secret_and_a_missing_account(
    svc: BlockingService, mariadb_target: MariadbServer
) -> None:
    server = mariadb_target
    acc = make_account(server)
    add_admin(svc, server, value="not-the-admin-password")
    with pytest.raises(VerificationFailed, match="refused the login of 'root'") as wrong:
        add_mdb(svc, server, "mdb/app", acc, verify=True)
    assert "not-the-admin-password" not in str(wrong.value)
    svc.update_credential("mdb/admin", value=ValueInput(value=Secret(server.password)))
    missing = Account("no_such_account", "x")
    with pytest.raises(VerificationFailed, match="'no_such_account'@'%' does not exist"):
        add_mdb(svc, server, "mdb/app", missing, verify=True)
    with pytest.raises(VerificationFailed, match="does not log in"):
        add_mdb(svc, server, "mdb/app", Account(acc.user, "wrong-password"), verify=True)
    # This server offers no TLS: ssl_mode=required refuses it before sending a password.
    with pytest.raises(VerificationFailed, match="offers no TLS, which ssl_mode requires"):
        add_mdb(svc, server, "mdb/app", acc, verify=True, ssl_mode="required")
    assert [c.name for c in svc.list_credentials()] == ["mdb/admin"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_dual_mode_is_refused_on_mariadb_by_the_cli_in_one_line(
    svc: BlockingService, settings: Settings, mariadb_target: MariadbServer
) -> None:
    server = mariadb_target
    acc = make_account(server)
    add_admin(svc, server)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
    env |= {"ROTATOR_HOME": str(settings.home), "ROTATOR_DB": settings.db_url}
    args = ["credential", "add", "mdb/dual", "--connector", "mariadb", "--verify"]
    for key, value in (
        ("host", server.host),
        ("port", str(server.port)),
        ("user", acc.user),
        ("admin", "mdb/admin"),
        ("mode", "dual"),
    ):
        args += ["--set", f"{key}={value}"]
    proc = subprocess.run(
        [str(CLI), *args, "--value-stdin"],
        env=env,
        input=acc.password.encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert len(err.splitlines()) == 1, err
    assert "mode=dual needs MySQL 8.0.14" in err, err
    assert "this server is MariaDB" in err, err
    assert "Traceback" not in err
    assert acc.password not in err + proc.stdout.decode()
    assert [c.name for c in svc.list_credentials()] == ["mdb/admin"]
    assert server.can_login(acc.user, acc.password)


# ------------------------------------------------------------------- what the server logs


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_general_log_holds_no_plaintext_value_after_rotations(
    svc: BlockingService, mariadb_target: MariadbServer
) -> None:
    """With MariaDB's general log on, rotations (set, clone creation, test, revoke) leave no
    value in it; the same log does record a plaintext ``IDENTIFIED BY`` verbatim (the
    control: an absent value means something)."""
    server = mariadb_target
    add_admin(svc, server)
    alt, single = make_account(server), make_account(server)
    add_mdb(svc, server, "mdb/alt", alt, grace="1s")
    add_mdb(svc, server, "mdb/single", single, mode="single")
    control = "control-" + uuid.uuid4().hex
    server.execute("SET GLOBAL general_log = 1")
    try:
        seen: list[str] = []
        for _ in range(2):
            svc.kernel.clock = lambda: utcnow() + timedelta(hours=1)  # grace over
            result = rotate(svc, RotationRequest("mdb/alt"), RotationRequest("mdb/single"))
            assert result.ok, result.to_json()
            seen += [login_of(svc, n)[1] for n in ("mdb/alt", "mdb/single")]
        revoke_due(svc)
        server.execute("ALTER USER %s@'%%' IDENTIFIED BY %s", (single.user, control))
    finally:
        server.execute("SET GLOBAL general_log = 0")
    log = server.general_log.read_text(errors="replace")
    assert control in log, "the general log records plaintext IDENTIFIED BY verbatim"
    assert native_hash(seen[0]) in log, "the hash form was logged instead"
    for password in seen:
        assert password not in log


# --------------------------------------------------------------------------- zero downtime


class FastClock:
    """UTC time running ``speed`` times faster than the wall clock, from now on: a grace of
    ``speed * x`` seconds lasts ``x`` real seconds (grace is counted in whole seconds)."""

    def __init__(self, speed: float) -> None:
        self.speed, self.start, self.mono = speed, utcnow(), time.monotonic()

    def __call__(self) -> datetime:
        elapsed = (time.monotonic() - self.mono) * self.speed
        return self.start + timedelta(seconds=elapsed)


def has_previous(svc: BlockingService, name: str) -> bool:
    return any(v.stage is Stage.PREVIOUS for v in svc.show(name).versions)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_zero_downtime_alternating_under_50_rotations(
    svc: BlockingService, mariadb_target: MariadbServer
) -> None:
    """Clients read CURRENT (then PREVIOUS) and log in without pause through 50 rotations:
    not one login fails. Grace 3 s on a clock running 10x (0.3 s of real time, above the
    clients' read-then-login time); after each rotation the revoker retires PREVIOUS when
    its grace ends, so the next rotation's idle account is free."""
    server = mariadb_target
    add_admin(svc, server)
    acc = make_account(server)
    add_mdb(svc, server, "mdb/app", acc, grace="3s")
    svc.kernel.clock = FastClock(10.0)
    stats = {"ok": 0, "failed": 0, "fallback": 0}
    last: list[tuple[str, str]] = []  # CURRENT before each rotation
    slowest = [0.0]  # the longest read-then-login of a client, in real seconds

    async def login(user: str, password: str) -> bool:
        try:
            conn = await aiomysql.connect(
                host=server.host,
                port=server.port,
                user=user,
                password=password,
                db=acc.database,
                connect_timeout=5,
            )
        except pymysql.err.OperationalError:
            return False
        async with conn.cursor() as cur:
            await cur.execute("SELECT x FROM t")
        await conn.ensure_closed()
        return True

    async def client(stop: asyncio.Event) -> None:
        while not stop.is_set():
            ok = False
            t0 = time.monotonic()
            for stage in (Stage.CURRENT, Stage.PREVIOUS):
                try:
                    user, password = await asyncio.to_thread(login_of, svc, "mdb/app", stage)
                except NotFound:
                    continue
                if await login(user, password):
                    ok = True
                    stats["fallback"] += stage is Stage.PREVIOUS
                    break
            stats["ok" if ok else "failed"] += 1
            slowest[0] = max(slowest[0], time.monotonic() - t0)

    async def go() -> None:
        stop = asyncio.Event()
        async with Engine(svc.kernel, FAST) as engine:
            clients = [asyncio.create_task(client(stop)) for _ in range(4)]
            revoker = asyncio.create_task(scheduler.run(engine, stop, poll_s=0.02, schedule=False))
            for _ in range(50):
                last.append(await asyncio.to_thread(login_of, svc, "mdb/app"))
                result = await engine.rotate([RotationRequest("mdb/app")])
                assert result.ok, result.to_json()
                while await asyncio.to_thread(has_previous, svc, "mdb/app"):
                    await asyncio.sleep(0.02)  # polling for the revoker's work, not a clock
            stop.set()
            await asyncio.gather(*clients, revoker)

    started = time.monotonic()
    asyncio.run(go())
    print(
        f"zero-downtime mariadb: {stats} in {time.monotonic() - started:.1f}s, "
        f"slowest client read+login {slowest[0]:.2f}s"
    )
    assert stats["failed"] == 0
    assert stats["ok"] > 100
    assert len(svc.show("mdb/app").versions) == 51
    for old in last[-2:]:
        assert not server.can_login(*old), "after its grace an old login is refused"
    assert server.can_login(*login_of(svc, "mdb/app"))


# ------------------------------------------------------------------------ hostile servers


def _packet(seq: int, payload: bytes) -> bytes:
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


CAPS = 0x1 | 0x200 | 0x8000 | 0x80000  # long password, 4.1 protocol, secure conn, plugins


def _greeting(caps: int, plugin: bytes = b"mysql_clear_password") -> bytes:
    """A server greeting (protocol 10) naming ``plugin`` as its auth plugin."""
    return _packet(
        0,
        b"\x0a8.0.36\x00"
        + struct.pack("<I", 7)
        + b"12345678\x00"
        + struct.pack("<H", caps & 0xFFFF)
        + b"\x21"
        + struct.pack("<HH", 2, caps >> 16)
        + bytes([21])
        + b"\x00" * 10
        + b"123456789012\x00"
        + plugin
        + b"\x00",
    )


async def _impostor(received: bytearray) -> asyncio.Server:
    """A server that announces ``mysql_clear_password`` in its greeting and, to whatever the
    client answers, asks to switch to it; it records every byte the client sends."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_greeting(CAPS))
        try:
            for seq in (2, 4):
                head = await reader.readexactly(4)
                body = await reader.readexactly(int.from_bytes(head[:3], "little"))
                received.extend(body)
                writer.write(_packet(seq, b"\xfemysql_clear_password\x00"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _tls_impostor(tmp_path: Path, plugin: bytes, reply: bytes) -> tuple[int, bytearray]:
    """A server offering TLS (a self-signed certificate) and ``plugin`` in its greeting; it
    answers the client's login packet with ``reply`` and records every byte the client sends
    inside TLS until the client hangs up (or 3 s pass)."""
    cert, key = _self_signed(tmp_path, plugin.decode())
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    received = bytearray()
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        listener.close()
        conn.settimeout(3)
        with contextlib.suppress(OSError), conn:
            conn.sendall(_greeting(CAPS | 0x800, plugin))  # 0x800: CLIENT_SSL
            request = b""
            while len(request) < 36:
                request += conn.recv(36 - len(request)) or b"x" * 36
            secure = tls.wrap_socket(conn, server_side=True)
            received.extend(secure.recv(4096))
            secure.sendall(reply)
            while chunk := secure.recv(4096):
                received.extend(chunk)

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], received


def test_a_server_asking_for_the_password_in_clear_text_gets_nothing(tmp_path: Path) -> None:
    """Nothing of the password reaches a server asking for it in clear text, nor (with the
    default ssl_mode=preferred, which does not check the certificate) one asking over TLS
    for sha256_password or caching_sha2_password's full authentication; each refusal is one
    message naming the ssl_mode to use."""
    password = "never-in-clear-" + uuid.uuid4().hex
    value = Secret(json.dumps({"username": "app", "password": password}))
    for plugin, reply in (
        # sha256_password over TLS: the login packet itself would carry the password; the
        # impostor then asks to switch to it.
        (b"sha256_password", _packet(3, b"\xfesha256_password\x00" + b"1" * 20 + b"\x00")),
        # caching_sha2_password: the scramble is refused, "full authentication needed".
        (b"caching_sha2_password", _packet(3, b"\x01\x04")),
    ):
        port, received = _tls_impostor(tmp_path, plugin, reply)
        cfg = MariadbConfig(port=port, user="app", admin="a")  # ssl_mode=preferred
        with pytest.raises(ConnectorError) as tls_refused:
            asyncio.run(MariadbConnector().test(cb.TestRequest("c", 2, cfg, value)))
        assert received, f"{plugin!r}: the impostor got no login packet"
        assert password.encode() not in received, plugin
        assert isinstance(tls_refused.value, cb.PermanentError)
        assert "nothing was sent: use ssl_mode=verify_ca or verify_identity" in str(
            tls_refused.value
        )
        assert password not in str(tls_refused.value)

    async def go() -> tuple[bytes, bytes, str]:
        ours, plain = bytearray(), bytearray()
        server = await _impostor(ours)
        port = server.sockets[0].getsockname()[1]
        cfg = MariadbConfig(port=port, user="app", admin="a", ssl_mode="disabled")
        with pytest.raises(cb.PermanentError) as refused:
            await MariadbConnector().test(cb.TestRequest("c", 2, cfg, value))
        server.close()
        # The control: the driver on its own hands this server the password.
        server = await _impostor(plain)
        port = server.sockets[0].getsockname()[1]
        with contextlib.suppress(pymysql.err.Error):
            await aiomysql.connect(host="127.0.0.1", port=port, user="app", password=password)
        server.close()
        return bytes(ours), bytes(plain), str(refused.value)

    ours, plain, message = asyncio.run(go())
    assert password.encode() in plain, "the control server is not the impostor it should be"
    assert password.encode() not in ours
    assert "asked for the password in clear text; nothing was sent" in message
    assert password not in message


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_verify_ca_refuses_a_server_certificate_from_another_ca(tmp_path: Path) -> None:
    """ssl_mode=verify_ca with the real CA: a server showing another certificate fails the
    TLS check (a permanent error naming it), and nothing but the TLS request reaches it."""
    password = "never-sent-" + uuid.uuid4().hex
    server_cert, server_key = _self_signed(tmp_path, "impostor")
    trusted_ca, _ = _self_signed(tmp_path, "real-ca")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(server_cert, server_key)

    received = bytearray()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        # Blocking sockets: reading exactly the TLS request leaves the client's TLS hello
        # in the socket for the handshake.
        conn, _ = listener.accept()
        with conn:
            conn.sendall(_greeting(CAPS | 0x800))  # 0x800: CLIENT_SSL
            while len(received) < 36:
                chunk = conn.recv(36 - len(received))
                if not chunk:
                    return
                received.extend(chunk)
            with contextlib.suppress(OSError):
                tls.wrap_socket(conn, server_side=True).recv(1024)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    async def go() -> str:
        cfg = MariadbConfig(
            port=port, user="app", admin="a", ssl_mode="verify_ca", ssl_ca=str(trusted_ca)
        )
        value = Secret(json.dumps({"username": "app", "password": password}))
        with pytest.raises(cb.PermanentError) as refused:
            await MariadbConnector().test(cb.TestRequest("c", 2, cfg, value))
        return str(refused.value)

    message = asyncio.run(go())
    thread.join(timeout=10)
    listener.close()
    assert "failed the TLS check of ssl_mode=verify_ca" in message
    assert len(received) == 36, "only the client's TLS request, no login"
    assert password.encode() not in received
