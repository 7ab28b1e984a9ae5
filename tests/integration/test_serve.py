"""``rotator serve`` as a process: TLS, start-up refusals in one line, a clean stop."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.support.server import ROTATOR, ServeProcess, serve_env

from rotator.config import Settings
from rotator.domain.principal import Role
from rotator.service import BlockingService


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    env = serve_env(home, f"sqlite:///{home}/rotator.db")
    subprocess.run([ROTATOR, "init"], env=env, check=True, capture_output=True, timeout=60)
    return home


def env_of(home: Path) -> dict[str, str]:
    return serve_env(home, f"sqlite:///{home}/rotator.db")


def self_signed(tmp: Path, passphrase: bytes | None = None) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()
            if passphrase is None
            else serialization.BestAvailableEncryption(passphrase),
        )
    )
    return cert_path, key_path


def one_line_refusal(home: Path, *args: str) -> str:
    proc = subprocess.run(
        [ROTATOR, "serve", *args],
        env=env_of(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("rotator: error: ")
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_with_a_certificate_and_key_the_api_is_served_over_https(
    home: Path, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    with ServeProcess(
        env_of(home), ("--no-scheduler", "--tls-cert", str(cert), "--tls-key", str(key))
    ) as server:
        assert server.base_url.startswith("https://127.0.0.1:")
        trust = ssl.create_default_context(cafile=str(cert))
        r = httpx.get(f"{server.base_url}/healthz", verify=trust)
        assert r.status_code == 200
        plain = server.base_url.replace("https://", "http://")
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{plain}/healthz", timeout=5)


def test_start_up_refusals_are_one_line_and_exit_2(home: Path, tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    assert "both" in one_line_refusal(home, "--port", "0", "--tls-cert", str(cert))
    missing = one_line_refusal(
        home, "--port", "0", "--tls-cert", str(cert), "--tls-key", str(tmp_path / "nope.pem")
    )
    assert "nope.pem" in missing
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert f"127.0.0.1:{port}" in one_line_refusal(home, "--port", str(port))


def test_a_second_serve_with_the_scheduler_on_one_sqlite_store_is_refused(home: Path) -> None:
    with ServeProcess(env_of(home), ()):
        line = one_line_refusal(home, "--port", "0")
        assert "another rotator worker is running" in line


def test_sigterm_stops_serve_with_exit_0(home: Path) -> None:
    server = ServeProcess(env_of(home), ())
    with server:
        assert httpx.get(f"{server.base_url}/readyz").status_code == 200
    assert server.stop() == 0


def test_an_encrypted_tls_key_is_refused_in_one_line_without_asking_for_a_pass_phrase(
    home: Path, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path, passphrase=b"pass-phrase-1")
    # No controlling terminal: OpenSSL's pass phrase prompt would read stdin (and wait for
    # ever on one that stays open).
    proc = subprocess.Popen(
        [ROTATOR, "serve", "--port", "0", "--tls-cert", str(cert), "--tls-key", str(key)],
        env=env_of(home),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rotator: error: ")
    assert "encrypted" in lines[0], lines[0]
    assert str(key) in lines[0], lines[0]
    assert "Enter PEM pass phrase" not in err


def test_sigterm_with_open_watch_streams_stops_cleanly_without_stray_stderr(home: Path) -> None:
    with BlockingService.open(Settings(home=home, db_url=f"sqlite:///{home}/rotator.db")) as svc:
        svc.add_principal("watcher", Role.READER, scope="*", kind="service")
        token = svc.create_token("watcher")[1]
    server = ServeProcess(env_of(home), ("--no-scheduler",))
    ready = threading.Semaphore(0)

    def watch() -> None:
        with (
            contextlib.suppress(httpx.HTTPError),
            httpx.stream(
                "GET",
                f"{server.base_url}/v1/watch",
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            ) as r,
        ):
            for line in r.iter_lines():
                if line.startswith("event: ready"):
                    ready.release()

    with server:
        threads = [threading.Thread(target=watch, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        for _ in threads:
            assert ready.acquire(timeout=60), "a watch stream never got ready"
    assert server.stop() == 0
    for t in threads:
        t.join(timeout=30)
    # sse_starlette's shutdown watcher was left pending: "Task was destroyed but it is
    # pending!" and its task's repr on stderr.
    assert "Task was destroyed" not in server.stderr, server.stderr
    assert "Traceback" not in server.stderr, server.stderr
