"""Shared pytest fixtures: real, throwaway PostgreSQL 15 and Redis servers.

Each server runs on a free 127.0.0.1 port with all of its files inside a private temp
directory, so it never touches (or depends on) a system-wide instance. Servers are
started lazily (only when a test asks for them) and stopped at session end, also when
tests fail.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import psycopg.conninfo
import pytest
import redis
from psycopg import sql

if TYPE_CHECKING:
    from tests.support.ldap_server import LdapTarget


from tests.support.mariadb_server import MariadbServer, MariadbUnavailable
from tests.support.openbao_server import OpenBaoServer, running_openbao

PG_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
PG_SUPERUSER = "postgres"
LOOPBACK = "127.0.0.1"
START_ATTEMPTS = 3  # a free port can be taken between probing and binding: retry
READY_TIMEOUT_S = 30.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    """Last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class PgServer:
    """A running throwaway PostgreSQL server (superuser ``postgres``, trust auth)."""

    host: str
    port: int

    def url(self, dbname: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3 driver) for ``dbname``."""
        return f"postgresql+psycopg://{PG_SUPERUSER}@{self.host}:{self.port}/{dbname}"

    def dsn(self, dbname: str = "postgres") -> str:
        """libpq/psycopg connection string for ``dbname``."""
        return f"host={self.host} port={self.port} user={PG_SUPERUSER} dbname={dbname}"


class _PgCluster:
    """Owns one initdb'd data directory and the postmaster running on it."""

    def __init__(self, base: Path, host_auth: str = "trust", password: str | None = None) -> None:
        self.base = base
        self.host_auth = host_auth
        self.password = password
        self.data = base / "data"
        self.sockets = base / "sockets"
        self.log = base / "postgres.log"
        self.as_root = os.geteuid() == 0
        self.started = False

    def _run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL binary, as the ``postgres`` user when we are root."""
        cmd = [str(PG_BIN_DIR / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", PG_SUPERUSER, "--", *cmd]
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        return subprocess.run(
            cmd, cwd=self.base, env=env, capture_output=True, text=True, timeout=timeout
        )

    def _check(self, proc: subprocess.CompletedProcess[str], what: str) -> None:
        if proc.returncode != 0:
            pytest.fail(
                f"{what} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
                f"--- {self.log} ---\n{_tail(self.log)}",
                pytrace=False,
            )

    def init(self) -> None:
        """Create the directories and run initdb (trust auth for local and host)."""
        self.sockets.mkdir()
        if self.as_root:
            try:
                pwd.getpwnam(PG_SUPERUSER)
            except KeyError:
                pytest.fail(
                    f"running as root but there is no '{PG_SUPERUSER}' OS user to run "
                    "PostgreSQL as (install the postgresql-15 package)",
                    pytrace=False,
                )
            for path in (self.base, self.sockets):
                shutil.chown(path, user=PG_SUPERUSER, group=None)
        extra: list[str] = []
        if self.password is not None:
            pwfile = self.base / "pwfile"
            pwfile.write_text(self.password + "\n")
            if self.as_root:
                shutil.chown(pwfile, user=PG_SUPERUSER, group=None)
            extra = ["--pwfile", str(pwfile)]
        proc = self._run(
            "initdb",
            "--pgdata", str(self.data),
            "--username", PG_SUPERUSER,
            "--auth-local", "trust",
            "--auth-host", self.host_auth,
            "--encoding", "UTF8",
            "--no-locale",
            "--no-sync",
            *extra,
        )  # fmt: skip
        self._check(proc, "initdb")

    def configure(self, port: int) -> None:
        """(Re)write our settings; the last occurrence in postgresql.conf wins."""
        settings = {
            "listen_addresses": f"'{LOOPBACK}'",
            "port": str(port),
            "unix_socket_directories": f"'{self.sockets}'",
            "max_connections": "300",
            "shared_buffers": "64MB",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "wal_level": "minimal",
            "max_wal_senders": "0",
            "log_min_messages": "warning",
        }
        block = "".join(f"{key} = {value}\n" for key, value in settings.items())
        (self.data / "postgresql.auto.conf").write_text(f"# written by tests/conftest.py\n{block}")

    def start(self, port: int) -> bool:
        """Start the postmaster on ``port``; False if it did not come up."""
        self.configure(port)
        proc = self._run(
            "pg_ctl", "start", "--pgdata", str(self.data), "--log", str(self.log),
            "--wait", "--timeout", str(int(READY_TIMEOUT_S)),
        )  # fmt: skip
        self.started = True  # even on failure a postmaster may linger: always stop
        return proc.returncode == 0

    def stop(self) -> None:
        """Stop immediately (no checkpoint); harmless if it is not running."""
        if self.started and (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "--pgdata", str(self.data), "-m", "immediate", "--wait")
        self.started = False


def _wait_for_pg(server: PgServer, log: Path) -> None:
    """Block until the server accepts a psycopg connection (bounded)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            with psycopg.connect(server.dsn(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"PostgreSQL on port {server.port} not ready after {READY_TIMEOUT_S}s: "
                    f"{exc}\n--- {log} ---\n{_tail(log)}",
                    pytrace=False,
                )
            time.sleep(0.1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL 15 server on a free 127.0.0.1 port, private to this test session.

    Guarantees: superuser ``postgres`` with trust auth, durability off (fsync etc.),
    max_connections=300, unix sockets only inside its temp dir; stopped with
    ``pg_ctl stop -m immediate`` and its temp dir deleted at session end.
    """
    _check_binaries()
    base = Path(tempfile.mkdtemp(prefix="rotator-pg-"))
    cluster = _PgCluster(base)
    with _running(cluster) as port:
        server = PgServer(host=LOOPBACK, port=port)
        _wait_for_pg(server, cluster.log)
        yield server


def _check_binaries() -> None:
    missing = [b for b in ("initdb", "pg_ctl", "postgres") if not (PG_BIN_DIR / b).is_file()]
    if missing:
        pytest.fail(
            f"PostgreSQL 15 binaries missing from {PG_BIN_DIR}: {', '.join(missing)}. "
            "Install the 'postgresql-15' package (scripts/test.sh does this).",
            pytrace=False,
        )


@contextlib.contextmanager
def _running(cluster: _PgCluster) -> Iterator[int]:
    """initdb + start on a free port (retried); always stopped and removed afterwards."""
    try:
        cluster.init()
        for attempt in range(1, START_ATTEMPTS + 1):
            port = free_port()
            if cluster.start(port):
                break
            cluster.stop()
            if attempt == START_ATTEMPTS:
                pytest.fail(
                    f"PostgreSQL did not start after {START_ATTEMPTS} attempts:\n"
                    f"--- {cluster.log} ---\n{_tail(cluster.log)}",
                    pytrace=False,
                )
        yield port
    finally:
        cluster.stop()
        shutil.rmtree(cluster.base, ignore_errors=True)


@dataclass(frozen=True)
class PgTarget:
    """A PostgreSQL server that checks passwords (scram-sha-256 on TCP), as a rotation target."""

    host: str
    port: int
    superuser: str
    password: str

    def dsn(
        self, user: str | None = None, password: str | None = None, dbname: str = "postgres"
    ) -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.host,
            port=self.port,
            user=user or self.superuser,
            password=self.password if password is None else password,
            dbname=dbname,
            connect_timeout=5,
        )


@pytest.fixture(scope="session")
def pg_target() -> Iterator[PgTarget]:
    """A second PostgreSQL 15 whose TCP logins need a password (scram-sha-256).

    The store tests' server trusts every login, which would make a password rotation test
    prove nothing; this one refuses a wrong password. Superuser ``postgres`` with a random
    password given in ``.password``.
    """
    _check_binaries()
    password = "pg-admin-" + uuid.uuid4().hex
    cluster = _PgCluster(Path(tempfile.mkdtemp(prefix="rotator-pgt-")), "scram-sha-256", password)
    with _running(cluster) as port:
        target = PgTarget(LOOPBACK, port, PG_SUPERUSER, password)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                with psycopg.connect(target.dsn()) as conn:
                    conn.execute("SELECT 1")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"target PostgreSQL not ready:\n{_tail(cluster.log)}", pytrace=False
                    )
                time.sleep(0.1)
        yield target


@pytest.fixture
def pg_database(pg_server: PgServer) -> Iterator[str]:
    """SQLAlchemy URL of a fresh, empty database that exists only for this test.

    The database is dropped ``WITH (FORCE)`` afterwards, so connections a test leaves
    open do not block cleanup.
    """
    name = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield pg_server.url(name)
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# --------------------------------------------------------------------------------- Redis


@dataclass(frozen=True)
class RedisServer:
    """A running throwaway Redis server (no auth, no persistence)."""

    host: str
    port: int

    @property
    def url(self) -> str:
        """redis-py URL for database 0."""
        return f"redis://{self.host}:{self.port}/0"


def _redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    if Path("/usr/bin/redis-server").is_file():
        return "/usr/bin/redis-server"
    pytest.fail(
        "redis-server not found on PATH or at /usr/bin/redis-server. Install the "
        "'redis-server' package (scripts/test.sh does this).",
        pytrace=False,
    )


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _start_redis(binary: str, workdir: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start redis-server and wait until it answers PING; retry on a port race."""
    for _ in range(START_ATTEMPTS):
        port = free_port()
        cmd = [
            binary,
            "--port", str(port),
            "--bind", LOOPBACK,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
            "--daemonize", "no",
        ]  # fmt: skip
        with log.open("ab") as log_file:
            proc = subprocess.Popen(
                cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file
            )
        client = redis.Redis(host=LOOPBACK, port=port, socket_connect_timeout=1)
        deadline = time.monotonic() + READY_TIMEOUT_S
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    if client.ping():
                        return proc, port
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    time.sleep(0.05)
        finally:
            client.close()
        _stop_process(proc)
    pytest.fail(
        f"redis-server did not answer PING after {START_ATTEMPTS} attempts:\n{_tail(log)}",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A Redis server on a free 127.0.0.1 port, private to this test session.

    Guarantees: answers PING before the fixture returns, no persistence (RDB/AOF off),
    working directory inside a temp dir; terminated and the temp dir deleted at session
    end. Tests share it, so use unique key/user names or flush what you write.
    """
    binary = _redis_binary()
    workdir = Path(tempfile.mkdtemp(prefix="rotator-redis-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc, port = _start_redis(binary, workdir, workdir / "redis.log")
        yield RedisServer(host=LOOPBACK, port=port)
    finally:
        if proc is not None:
            _stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------------ store backends


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLAlchemy URL of an empty database; every test using it runs once per backend.

    ``sqlite``: a not-yet-created file in the test's tmp_path. ``postgresql``: a fresh
    database from ``pg_database`` (PostgreSQL is only started if this param runs, so
    ``-k sqlite`` or ``-m "not postgres"`` never needs it).
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/rotator.db"
    url: str = request.getfixturevalue("pg_database")
    return url


# ---------------------------------------------------------------------------------- LDAP


@pytest.fixture(scope="session")
def ldap_target() -> Iterator[LdapTarget]:
    """An OpenLDAP slapd on free 127.0.0.1 ports (StartTLS and ldaps), private to this test
    session; see tests/support/ldap_server.py. Tests share it: add accounts with unique names."""
    from tests.support.ldap_server import running_slapd, slapd_binary  # ldap3: only when used

    binary = slapd_binary()
    if binary is None:
        pytest.fail(
            "slapd not found: install Debian's 'slapd' (scripts/test.sh does)", pytrace=False
        )
    with running_slapd(binary) as target:
        yield target


# ------------------------------------------------------------------------------- MariaDB


@pytest.fixture(scope="session")
def mariadb_target() -> Iterator[MariadbServer]:
    """A MariaDB server on a free 127.0.0.1 port, private to this test session (see
    tests/support/mariadb_server.py): root's password in ``.password``, general log off
    (file ``.general_log``); stopped and its temp dir removed at session end. Tests share it:
    use unique account names."""
    server = MariadbServer()
    try:
        try:
            server.start()
        except MariadbUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------------------- OpenBao


@pytest.fixture(scope="session")
def openbao_server() -> Iterator[OpenBaoServer]:
    """An OpenBao dev server over TLS on a free 127.0.0.1 port, private to this session (see
    tests/support/openbao_server.py): KV v2 at ``secret/``, AppRole role ``rotator``. Tests
    share it: use unique secret paths."""
    with running_openbao() as server:
        yield server
