"""The postgres connector against a real PostgreSQL that checks passwords (scram-sha-256)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from psycopg import sql
from tests.conftest import LOOPBACK, PG_SUPERUSER, PgTarget, _PgCluster, _running

from rotator import scheduler
from rotator.connectors import base as cb
from rotator.connectors.postgres import PostgresConfig, PostgresConnector, parse_value
from rotator.domain.model import Stage
from rotator.domain.secret import Secret
from rotator.engine import BatchResult, Engine, EngineOptions, RotationRequest, Trigger
from rotator.errors import InvalidInput, NotFound, VerificationFailed
from rotator.service import BlockingService, PolicyInput, ValueInput

FAST = EngineOptions(retry_attempts=2, retry_initial_s=0.01, retry_max_s=0.05)


@dataclass
class Role:
    name: str
    password: str


def admin_exec(target: PgTarget, query: sql.Composable, params: tuple[Any, ...] = ()) -> Any:
    with psycopg.connect(target.dsn(), autocommit=True) as conn:
        cur = conn.execute(query, params or None)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else None


def can_login(target: PgTarget, user: str, password: str) -> bool:
    try:
        with psycopg.connect(target.dsn(user=user, password=password)) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


@pytest.fixture
def role(pg_target: PgTarget) -> Iterator[Role]:
    """A fresh login role with a password and SELECT on a table only it may read."""
    r = Role(f"app_{uuid.uuid4().hex[:8]}", "initial-" + uuid.uuid4().hex)
    admin_exec(
        pg_target,
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(r.name), sql.Literal(r.password)
        ),
    )
    table = sql.Identifier(f"t_{r.name}")
    admin_exec(pg_target, sql.SQL("CREATE TABLE {} (x int)").format(table))
    admin_exec(pg_target, sql.SQL("REVOKE ALL ON {} FROM PUBLIC").format(table))
    admin_exec(pg_target, sql.SQL("GRANT SELECT ON {} TO {}").format(table, sql.Identifier(r.name)))
    yield r
    for name in (r.name + "_clone", r.name):
        admin_exec(pg_target, sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        admin_exec(pg_target, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def add_pg(
    svc: BlockingService,
    target: PgTarget,
    name: str,
    role: Role,
    *,
    verify: bool = False,
    grace: str = "5m",
    **settings: str,
) -> None:
    if svc.list_credentials(tags={"kind": "pg-admin"}) == []:
        svc.add_credential(
            "pg/admin",
            "local",
            tags={"kind": "pg-admin"},
            value=ValueInput(value=Secret(target.password)),
        )
    cfg = {
        "host": target.host,
        "port": str(target.port),
        "role": role.name,
        "admin": "pg/admin",
        **settings,
    }
    svc.add_credential(
        name,
        "postgres",
        settings=cfg,
        policy=PolicyInput(grace=grace),
        value=ValueInput(value=Secret(role.password)),
        verify=verify,
    )


def login_of(svc: BlockingService, name: str, stage: Stage = Stage.CURRENT) -> tuple[str, str]:
    """(username, password) of a stage, as an application reads it (JSON, or the plain
    password first given for the configured role)."""
    login = parse_value(svc.get_value(name, stage), svc.show(name).config["role"])
    return login.username, login.password


def rotate(svc: BlockingService, *reqs: RotationRequest) -> BatchResult:
    async def go() -> BatchResult:
        async with Engine(svc.kernel, FAST) as engine:
            return await engine.rotate(list(reqs))

    return asyncio.run(go())


def test_alternating_rotation_uses_the_clone_and_keeps_the_old_login(
    svc: BlockingService, pg_target: PgTarget, role: Role
) -> None:
    add_pg(svc, pg_target, "pg/app", role, grace="1s")
    assert rotate(svc, RotationRequest("pg/app")).ok
    user, password = login_of(svc, "pg/app")
    assert user == f"{role.name}_clone"
    assert can_login(pg_target, user, password)
    assert can_login(pg_target, role.name, role.password), "the old login must work in grace"
    with psycopg.connect(pg_target.dsn(user=user, password=password)) as conn:
        conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(f"t_{role.name}")))
    # The next rotation waits out the 1s grace, revokes the old login, then reuses the role.
    assert rotate(svc, RotationRequest("pg/app")).ok
    user2, password2 = login_of(svc, "pg/app")
    assert user2 == role.name
    assert can_login(pg_target, user2, password2)
    assert not can_login(pg_target, role.name, role.password)
    assert can_login(pg_target, user, password), "PREVIOUS (the clone) still in its grace"


def test_single_mode_and_emergency_revoke_at_once(
    svc: BlockingService, pg_target: PgTarget, role: Role
) -> None:
    add_pg(svc, pg_target, "pg/single", role, mode="single", grace="1h")
    result = rotate(svc, RotationRequest("pg/single", trigger=Trigger.EMERGENCY, grace_s=0))
    assert result.ok, result.to_json()
    user, password = login_of(svc, "pg/single")
    assert user == role.name
    assert can_login(pg_target, user, password)
    assert not can_login(pg_target, role.name, role.password)
    stages = {v.number: v.stage for v in svc.show("pg/single").versions}
    assert stages == {1: Stage.RETIRED, 2: Stage.CURRENT}


def test_emergency_alternating_old_login_refused_when_rotate_returns(
    svc: BlockingService, pg_target: PgTarget, role: Role
) -> None:
    add_pg(svc, pg_target, "pg/app", role, grace="1h")
    result = rotate(svc, RotationRequest("pg/app", trigger=Trigger.EMERGENCY, grace_s=0))
    assert result.ok, result.to_json()
    assert not can_login(pg_target, role.name, role.password)
    assert can_login(pg_target, *login_of(svc, "pg/app"))


def test_rotate_root_the_admin_secret_itself(
    svc: BlockingService, pg_target: PgTarget, role: Role
) -> None:
    root = Role(f"root_{uuid.uuid4().hex[:8]}", "root-" + uuid.uuid4().hex)
    admin_exec(
        pg_target,
        sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
            sql.Identifier(root.name), sql.Literal(root.password)
        ),
    )
    try:
        cfg = {
            "host": pg_target.host,
            "port": str(pg_target.port),
            "role": root.name,
            "mode": "single",
        }
        svc.add_credential(
            "pg/root",
            "postgres",
            settings=cfg,
            value=ValueInput(value=Secret(root.password)),
            verify=True,
        )
        assert rotate(svc, RotationRequest("pg/root")).ok
        user, password = login_of(svc, "pg/root")
        assert (user, can_login(pg_target, user, password)) == (root.name, True)
        assert not can_login(pg_target, root.name, root.password)
        # The rotated root is the admin secret of an application credential.
        svc.add_credential(
            "pg/app",
            "postgres",
            settings={
                "host": pg_target.host,
                "port": str(pg_target.port),
                "role": role.name,
                "admin": "pg/root",
                "admin_user": root.name,
            },
            value=ValueInput(value=Secret(role.password)),
            verify=True,
        )
        assert rotate(svc, RotationRequest("pg/app")).ok
        assert can_login(pg_target, *login_of(svc, "pg/app"))
    finally:
        admin_exec(pg_target, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(root.name)))


@pytest.mark.parametrize(
    ("bad", "admin_value", "message"),
    [
        ({"role": "no_such_role"}, None, "does not exist"),
        ({}, "wrong-password", "refused the login"),
        ({"port": "1"}, None, "cannot reach postgres"),
        ({"admin": "pg/missing"}, None, "'pg/missing'"),
    ],
)
def test_bad_configuration_is_refused_at_add_with_verify(
    svc: BlockingService,
    pg_target: PgTarget,
    role: Role,
    bad: dict[str, str],
    admin_value: str | None,
    message: str,
) -> None:
    svc.add_credential(
        "pg/admin", "local", value=ValueInput(value=Secret(admin_value or pg_target.password))
    )
    cfg = {
        "host": pg_target.host,
        "port": str(pg_target.port),
        "role": role.name,
        "admin": "pg/admin",
        **bad,
    }
    with pytest.raises(VerificationFailed, match=message):
        svc.add_credential(
            "pg/app",
            "postgres",
            settings=cfg,
            value=ValueInput(value=Secret(role.password)),
            verify=True,
        )
    assert [c.name for c in svc.list_credentials()] == ["pg/admin"]


def test_invalid_settings_are_input_errors(svc: BlockingService) -> None:
    for bad in (
        {"role": "r", "mode": "bogus"},
        {"role": ""},
        {"role": "r", "port": "0"},
        {"role": "r", "clone": "r"},
        {"role": "r", "nope": "1"},
    ):
        with pytest.raises(InvalidInput):
            svc.add_credential("pg/x", "postgres", settings=bad)


def test_wrong_admin_secret_at_rotation_fails_and_old_login_works(
    svc: BlockingService, pg_target: PgTarget, role: Role
) -> None:
    add_pg(svc, pg_target, "pg/app", role)
    svc.update_credential("pg/admin", value=ValueInput(value=Secret("not-the-password")))
    data = rotate(svc, RotationRequest("pg/app")).to_json()
    assert data["failed"][0]["name"] == "pg/app"
    assert "refused the login" in data["failed"][0]["error"]
    assert "not-the-password" not in json.dumps(data)
    assert can_login(pg_target, role.name, role.password)
    assert svc.get_value("pg/app").reveal_text() == role.password


def test_quotes_spaces_and_unicode_in_role_names_and_passwords(pg_target: PgTarget) -> None:
    weird = Role("we\"ird 'rôle' ✓", "start-" + uuid.uuid4().hex)
    admin_exec(
        pg_target,
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(weird.name), sql.Literal(weird.password)
        ),
    )
    try:
        conn = PostgresConnector()
        cfg = PostgresConfig(
            host=pg_target.host, port=pg_target.port, role=weird.name, mode="single"
        )
        current = Secret(weird.password)
        for password in ("pä's\"wörd ✓ \\ ; DROP ROLE postgres; --", "Ⅸ\u00adx", "a\u00a0b"):
            pending = Secret(json.dumps({"username": weird.name, "password": password}))
            asyncio.run(conn.set(cb.SetRequest("w", 2, cfg, pending, current)))
            asyncio.run(conn.set(cb.SetRequest("w", 2, cfg, pending, current)))  # idempotent
            asyncio.run(conn.test(cb.TestRequest("w", 2, cfg, pending)))
            assert can_login(pg_target, weird.name, password)
            current = pending
        assert admin_exec(
            pg_target, sql.SQL("SELECT count(*) FROM pg_roles WHERE rolname = %s"), ("postgres",)
        ) == [(1,)]
    finally:
        admin_exec(pg_target, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(weird.name)))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_zero_downtime_alternating_under_50_rotations(
    svc: BlockingService, pg_target: PgTarget, role: Role
) -> None:
    # A 1 s grace (the shortest a policy holds: grace is whole seconds) is still some 20
    # times a client's read-then-login (tens of ms): a client that read a value just before a
    # rotation logs in long before the next rotation's wait ends and revokes it, so a failed
    # login here means a real gap, not a slow client. Each rotation waits out one grace.
    add_pg(svc, pg_target, "pg/app", role, grace="1s")
    stats = {"ok": 0, "failed": 0, "fallback": 0}

    async def client(stop: asyncio.Event) -> None:
        while not stop.is_set():
            ok = False
            for stage in (Stage.CURRENT, Stage.PREVIOUS):
                try:
                    user, password = await asyncio.to_thread(login_of, svc, "pg/app", stage)
                except NotFound:
                    continue
                try:
                    conn = await psycopg.AsyncConnection.connect(
                        pg_target.dsn(user=user, password=password)
                    )
                    await conn.execute("SELECT 1")
                    await conn.close()
                    ok = True
                    stats["fallback"] += stage is Stage.PREVIOUS
                    break
                except psycopg.OperationalError:
                    continue
            stats["ok" if ok else "failed"] += 1

    async def go() -> None:
        stop = asyncio.Event()
        async with Engine(svc.kernel, FAST) as engine:
            clients = [asyncio.create_task(client(stop)) for _ in range(4)]
            revoker = asyncio.create_task(scheduler.run(engine, stop, poll_s=0.1, schedule=False))
            for _ in range(50):
                result = await engine.rotate([RotationRequest("pg/app")])
                assert result.ok, result.to_json()
            stop.set()
            await asyncio.gather(*clients, revoker)

    started = time.monotonic()
    asyncio.run(go())
    print(f"zero-downtime postgres: {stats} in {time.monotonic() - started:.1f}s")
    assert stats["failed"] == 0
    assert stats["ok"] > 200
    assert len(svc.show("pg/app").versions) == 51
    previous = login_of(svc, "pg/app", Stage.PREVIOUS)
    # Past the last grace on the engine's clock, not by waiting it out.
    svc.kernel.clock = lambda: datetime.now(UTC) + timedelta(hours=1)

    async def revoke() -> None:
        async with Engine(svc.kernel, FAST) as engine:
            await engine.process_revocations()

    asyncio.run(revoke())
    assert not can_login(pg_target, *previous), "after the grace the old login is refused"
    assert can_login(pg_target, *login_of(svc, "pg/app"))


# ------------------------------------------------------------- hostile values and servers


def test_first_value_naming_the_superuser_is_refused_at_add(
    svc: BlockingService, pg_target: PgTarget, role: Role
) -> None:
    svc.add_credential("pg/admin", "local", value=ValueInput(value=Secret(pg_target.password)))
    crafted = json.dumps({"username": pg_target.superuser, "password": pg_target.password})
    settings = {"host": pg_target.host, "port": str(pg_target.port), "role": role.name}
    with pytest.raises(InvalidInput, match="names role 'postgres'") as err:
        svc.add_credential(
            "pg/app",
            "postgres",
            settings={**settings, "admin": "pg/admin"},
            value=ValueInput(value=Secret(crafted)),
        )
    assert pg_target.password not in str(err.value)
    assert [c.name for c in svc.list_credentials()] == ["pg/admin"]


@pytest.mark.parametrize("emergency", [False, True], ids=["manual", "emergency"])
def test_stored_value_naming_the_superuser_never_changes_its_password(
    svc: BlockingService, pg_target: PgTarget, role: Role, emergency: bool
) -> None:
    """The value got in another way (added under another connector, then switched): the
    rotation is refused before any login, and the superuser still logs in."""
    svc.add_credential("pg/admin", "local", value=ValueInput(value=Secret(pg_target.password)))
    crafted = json.dumps({"username": pg_target.superuser, "password": pg_target.password})
    svc.add_credential("pg/app", "local", value=ValueInput(value=Secret(crafted)))
    svc.update_credential(
        "pg/app",
        connector="postgres",
        settings={
            "host": pg_target.host,
            "port": str(pg_target.port),
            "role": role.name,
            "admin": "pg/admin",
        },
    )
    req = (
        RotationRequest("pg/app", trigger=Trigger.EMERGENCY, grace_s=0)
        if emergency
        else RotationRequest("pg/app")
    )
    data = rotate(svc, req).to_json()
    assert [f["name"] for f in data["failed"]] == ["pg/app"], data
    assert "names role 'postgres'" in data["failed"][0]["error"]
    assert pg_target.password not in json.dumps(data)
    assert can_login(pg_target, pg_target.superuser, pg_target.password)
    assert can_login(pg_target, role.name, role.password), "the configured role is untouched"


@dataclass
class FakeServer:
    """What a fake PostgreSQL server on loopback received from one client."""

    port: int
    received: bytearray


SSL_REQUEST, GSSENC_REQUEST = 80877103, 80877104
AUTH_CLEARTEXT = b"R" + (8).to_bytes(4, "big") + (3).to_bytes(4, "big")


async def fake_pg_server(ready: asyncio.Future[FakeServer], done: asyncio.Event) -> None:
    """Speaks just enough of the PostgreSQL startup protocol to impersonate a server: refuses
    TLS and GSS encryption, then asks for the password in clear text and records every byte
    the client sends (until it hangs up)."""
    received = bytearray()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(4)
                body = await reader.readexactly(int.from_bytes(head, "big") - 4)
                received.extend(head + body)
                if int.from_bytes(body[:4], "big") in (SSL_REQUEST, GSSENC_REQUEST):
                    writer.write(b"N")
                    await writer.drain()
                    continue
                writer.write(AUTH_CLEARTEXT)  # the startup message: ask for the password
                await writer.drain()
                break
            async with asyncio.timeout(5):
                while chunk := await reader.read(4096):
                    received.extend(chunk)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()
            done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        ready.set_result(FakeServer(server.sockets[0].getsockname()[1], received))
        await asyncio.Event().wait()


async def login_to_fake_server(
    step: str = "test", **settings: str
) -> tuple[Exception | None, bytes, str]:
    """A connector step against the fake server: (error, bytes received, password)."""
    password = "never-send-me-" + uuid.uuid4().hex
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[FakeServer] = loop.create_future()
    done = asyncio.Event()
    task = asyncio.create_task(fake_pg_server(ready, done))
    fake = await ready
    cfg = PostgresConfig(host="127.0.0.1", port=fake.port, role="app", **settings)  # type: ignore[arg-type]
    pending = Secret(json.dumps({"username": "app", "password": password}))
    error: Exception | None = None
    try:
        if step == "test":
            await PostgresConnector().test(cb.TestRequest("pg/app", 2, cfg, pending))
        else:  # revoke first checks whether the old value still logs in
            await PostgresConnector().revoke(cb.RevokeRequest("pg/app", 1, cfg, pending))
    except Exception as exc:
        error = exc
    async with asyncio.timeout(10):
        await done.wait()
    task.cancel()
    return error, bytes(fake.received), password


@pytest.mark.parametrize("step", ["test", "revoke"])
def test_impostor_asking_for_a_cleartext_password_gets_nothing(step: str) -> None:
    """Also not taken for "the old value no longer logs in" by revoke: it fails loudly."""
    error, received, password = asyncio.run(login_to_fake_server(step))
    assert isinstance(error, cb.PermanentError), error
    assert "require_auth" in str(error)
    assert b"user\x00app\x00" in received, "the fake server saw the startup message"
    assert password.encode() not in received
    assert password not in str(error)


def test_require_auth_opt_out_is_what_lets_a_cleartext_server_have_the_password() -> None:
    """The documented opt-out for md5/password-only servers really changes the behaviour (so
    the default above is what protects)."""
    _error, received, password = asyncio.run(login_to_fake_server(require_auth="password"))
    assert password.encode() in received


def test_verify_full_refuses_a_server_without_tls_before_sending_anything(
    tmp_path: Any,
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not used: the server never offers TLS\n")
    error, received, password = asyncio.run(
        login_to_fake_server(sslmode="verify-full", sslrootcert=str(ca))
    )
    assert isinstance(error, cb.PermanentError), error
    assert "verify-full" in str(error)
    assert b"user\x00" not in received, "no startup message may go out without TLS"
    assert password.encode() not in received


@pytest.mark.parametrize(
    "bad",
    [
        {"require_auth": "plaintext"},
        {"require_auth": "scram-sha-256;md5"},
        {"sslrootcert": "relative/ca.pem"},
    ],
)
def test_bad_tls_and_auth_settings_are_input_errors(
    svc: BlockingService, bad: dict[str, str]
) -> None:
    with pytest.raises(InvalidInput):
        svc.add_credential("pg/x", "postgres", settings={"role": "r", **bad})


# --------------------------------------------------------------- TLS with verify-full


def _cert(
    name: str, issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A CA (no issuer) or a server certificate for 127.0.0.1 signed by ``issuer``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[1].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), False
        )
    return key, builder.sign(issuer[0] if issuer else key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class _TlsPgCluster(_PgCluster):
    """A password-checking (SCRAM) cluster that also speaks TLS with the given certificate."""

    def __init__(self, base: Path, password: str, cert_pem: bytes, key_pem: bytes) -> None:
        super().__init__(base, "scram-sha-256", password)
        self.tls_files = {"server.crt": (cert_pem, 0o644), "server.key": (key_pem, 0o600)}

    def init(self) -> None:
        super().init()
        for name, (data, mode) in self.tls_files.items():
            path = self.data / name
            path.write_bytes(data)
            path.chmod(mode)
            if self.as_root:
                shutil.chown(path, user=PG_SUPERUSER, group=None)

    def configure(self, port: int) -> None:
        super().configure(port)
        with (self.data / "postgresql.auto.conf").open("a") as conf:
            conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")


@dataclass(frozen=True)
class TlsTarget:
    target: PgTarget
    ca_file: str  # the CA that signed the server's certificate
    other_ca_file: str  # a CA that did not


@pytest.fixture(scope="module")
def tls_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsTarget]:
    """A PostgreSQL 15 with TLS (a certificate for 127.0.0.1 from a test CA) and SCRAM."""
    ca = _cert("rotator test CA")
    server_key, server_cert = _cert("127.0.0.1", issuer=ca)
    other_ca = _cert("some other CA")
    files = tmp_path_factory.mktemp("tls")
    (files / "ca.pem").write_bytes(_pem(ca[1]))
    (files / "other-ca.pem").write_bytes(_pem(other_ca[1]))
    password = "pg-admin-" + uuid.uuid4().hex
    key_pem = server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    base = Path(tempfile.mkdtemp(prefix="rotator-pgtls-"))
    cluster = _TlsPgCluster(base, password, _pem(server_cert), key_pem)
    with _running(cluster) as port:
        target = PgTarget(LOOPBACK, port, PG_SUPERUSER, password)
        yield TlsTarget(target, str(files / "ca.pem"), str(files / "other-ca.pem"))


def test_verify_full_logs_in_over_tls_with_the_right_ca_only(tls_target: TlsTarget) -> None:
    t = tls_target.target
    admin = json.dumps({"username": t.superuser, "password": t.password})
    conn = PostgresConnector()

    def cfg(ca_file: str) -> PostgresConfig:
        return PostgresConfig(
            host=t.host,
            port=t.port,
            role=t.superuser,
            mode="single",
            sslmode="verify-full",
            sslrootcert=ca_file,
        )

    async def attempt(ca_file: str) -> None:
        await conn.test(cb.TestRequest("pg/root", 1, cfg(ca_file), Secret(admin)))

    asyncio.run(attempt(tls_target.ca_file))
    with pytest.raises(cb.PermanentError, match="failed the TLS check of sslmode=verify-full"):
        asyncio.run(attempt(tls_target.other_ca_file))
