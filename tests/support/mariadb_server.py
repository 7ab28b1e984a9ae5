"""A throwaway MariaDB server for tests: ``mariadb-install-db`` into a private temp dir,
``mariadbd`` on a free 127.0.0.1 port with its own socket (as the ``mysql`` OS user when we
are root: the server refuses to run as root), root's password set, stopped at the end.

Used by the ``mariadb_target`` session fixture in tests/conftest.py and by
bench/mariadb_bench.py. Nothing here reads /etc/mysql (``--no-defaults``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

LOOPBACK = "127.0.0.1"
OS_USER = "mysql"
READY_TIMEOUT_S = 60.0
START_ATTEMPTS = 3


class MariadbUnavailable(RuntimeError):
    """The server binaries are missing or it did not start (the message says why)."""


def _binary(name: str) -> str:
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise MariadbUnavailable(
            f"{name} not found: install Debian's 'mariadb-server' package "
            "(scripts/test.sh does this)"
        )
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class MariadbServer:
    """One data directory and the ``mariadbd`` running on it. ``start()`` then ``stop()``."""

    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rotator-mariadb-")))
    password: str = field(default_factory=lambda: "mdb-admin-" + uuid.uuid4().hex)
    host: str = LOOPBACK
    port: int = 0
    admin_user: str = "root"
    proc: subprocess.Popen[bytes] | None = None
    _conn: pymysql.connections.Connection[Any] | None = field(default=None, repr=False)

    @property
    def socket(self) -> Path:
        return self.base / "mysqld.sock"

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "error.log"

    @property
    def general_log(self) -> Path:
        return self.base / "general.log"

    def _as_user(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        try:
            pwd.getpwnam(OS_USER)
        except KeyError:
            raise MariadbUnavailable(
                f"running as root but there is no '{OS_USER}' OS user to run MariaDB as "
                "(install the mariadb-server package)"
            ) from None
        shutil.chown(self.base, user=OS_USER, group=None)
        return [f"--user={OS_USER}"]

    def start(self) -> MariadbServer:
        user = self._as_user()
        install = subprocess.run(
            [
                _binary("mariadb-install-db"),
                "--no-defaults",
                f"--datadir={self.data}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
                *user,
            ],
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if install.returncode != 0:
            raise MariadbUnavailable(
                f"mariadb-install-db failed (exit {install.returncode}):\n"
                f"{install.stdout[-2000:]}\n{install.stderr[-2000:]}"
            )
        for _ in range(START_ATTEMPTS):
            self.port = _free_port()
            if self._launch(user):
                self._secure()
                return self
            self.stop(remove=False)
        raise MariadbUnavailable(f"mariadbd did not start:\n{_tail(self.log)}")

    def _launch(self, user: list[str]) -> bool:
        cmd = [
            _binary("mariadbd"),
            "--no-defaults",
            *user,
            f"--datadir={self.data}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            f"--socket={self.socket}",
            f"--pid-file={self.base / 'mariadbd.pid'}",
            f"--log-error={self.log}",
            f"--general-log-file={self.general_log}",
            "--general-log=0",
            "--skip-name-resolve",
            "--max-connections=1000",
            "--max-connect-errors=1000000",
            "--innodb-buffer-pool-size=32M",
            "--innodb-flush-log-at-trx-commit=0",
            "--innodb-doublewrite=0",
            "--skip-log-bin",
        ]
        self.proc = subprocess.Popen(
            cmd, cwd=self.base, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                pymysql.connect(
                    unix_socket=str(self.socket), user="root", connect_timeout=2
                ).close()
                return True
            except pymysql.err.OperationalError:
                time.sleep(0.05)
        return False

    def _secure(self) -> None:
        """Give every root account the admin password (none has one after install-db)."""
        with (
            pymysql.connect(unix_socket=str(self.socket), user="root", autocommit=True) as conn,
            conn.cursor() as cur,
        ):
            # root@<hostname> is left: --skip-name-resolve makes it unusable.
            for host in ("localhost", LOOPBACK, "::1"):
                cur.execute("ALTER USER 'root'@%s IDENTIFIED BY %s", (host, self.password))

    def admin(self, **kwargs: Any) -> pymysql.connections.Connection[Any]:
        """A blocking admin connection (root over TCP), autocommit."""
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.admin_user,
            password=self.password,
            autocommit=True,
            charset="utf8mb4",
            **kwargs,
        )

    def execute(self, query: str, args: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement as root on a connection kept for the next call (not thread-safe:
        call it from the test's thread only)."""
        if self._conn is None or not self._conn.open:
            self._conn = self.admin()
        with self._conn.cursor() as cur:
            cur.execute(query, args)
            return list(cur.fetchall())

    def can_login(self, user: str, password: str) -> bool:
        try:
            pymysql.connect(
                host=self.host,
                port=self.port,
                user=user,
                password=password.encode("utf-8"),  # type: ignore[arg-type]
                charset="utf8mb4",
                connect_timeout=5,
            ).close()
            return True
        except pymysql.err.OperationalError as exc:
            if exc.args and exc.args[0] in (1045, 1698, 4151):
                return False
            raise

    def stop(self, remove: bool = True) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if remove:
            shutil.rmtree(self.base, ignore_errors=True)
