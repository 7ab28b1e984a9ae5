"""A throwaway OpenLDAP ``slapd`` for the ``ldap`` connector's tests.

One slapd per test session (``tests/conftest.py::ldap_target``), all of its files in a private
temp dir: a ``slapd.conf`` (mdb backend, suffix ``dc=example,dc=org``), a CA and a server
certificate made here with ``cryptography`` (StartTLS on the plain port, and an ldaps port),
Debian's ``argon2`` password module loaded when present, and ``loglevel stats`` written to
``slapd.log`` so a test can check that no value reaches the server's log.

Entries made at start: the suffix, ``ou=svc`` (the service accounts tests add), and the
directory admin ``cn=admin,dc=example,dc=org`` (a plain entry, not the rootdn): the ACL lets it
write every entry and read ``cn=config``, and lets each account change its own password. The
``rootdn`` (``cn=root``) is for the fixture's own seeding and the tests' checks only.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import ldap3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ldap3.utils.dn import escape_rdn

LOOPBACK = "127.0.0.1"
SUFFIX = "dc=example,dc=org"
SERVICE_OU = f"ou=svc,{SUFFIX}"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ROOT_DN = f"cn=root,{SUFFIX}"
SLAPD = "/usr/sbin/slapd"
MODULE_DIR = Path("/usr/lib/ldap")
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")
START_ATTEMPTS = 3
READY_TIMEOUT_S = 30.0


def slapd_binary() -> str | None:
    """Path of slapd, or None when it is not installed (scripts/test.sh installs it)."""
    found = shutil.which("slapd")
    if found:
        return found
    return SLAPD if Path(SLAPD).is_file() else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _cert(
    name: str, issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A CA (no issuer) or a server certificate for 127.0.0.1/localhost signed by ``issuer``."""
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
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]
            ),
            False,
        )
    return key, builder.sign(issuer[0] if issuer else key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class LdapTarget:
    """A running slapd: StartTLS-capable ``port``, ``ldaps_port``, the CA that signed its
    certificate (``ca_file``) and one that did not (``other_ca_file``)."""

    host: str
    port: int
    ldaps_port: int
    ca_file: str
    other_ca_file: str
    admin_password: str
    root_password: str
    log: Path
    argon2: bool  # the argon2 password module is loaded
    admin_dn: str = ADMIN_DN
    suffix: str = SUFFIX

    @property
    def url(self) -> str:
        return f"ldap://{self.host}:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://{self.host}:{self.ldaps_port}"

    def _root(self) -> ldap3.Connection:
        server = ldap3.Server(self.host, port=self.port, get_info=ldap3.NONE, connect_timeout=5)
        conn = ldap3.Connection(
            server, ROOT_DN, self.root_password, receive_timeout=10, raise_exceptions=True
        )
        conn.bind()
        return conn

    def add_account(
        self, name: str, password: str, ou: str = SERVICE_OU, uid: str | None = None
    ) -> str:
        """Add ``cn=<name>`` (escaped; ``cn=<name>+uid=<uid>``, a multi-valued RDN, when
        ``uid`` is given) under ``ou`` with ``password`` (hashed by the server through a
        Password Modify); returns its DN. Raises if it exists."""
        rdn = f"cn={escape_rdn(name)}" + (f"+uid={escape_rdn(uid)}" if uid else "")
        dn = f"{rdn},{ou}"
        self.add_entry(dn, {"sn": "service", "cn": name, "uid": uid or name}, ["inetOrgPerson"])
        self.set_password(dn, password)
        return dn

    def set_password(self, dn: str, password: str) -> None:
        conn = self._root()
        try:
            conn.extend.standard.modify_password(dn, new_password=password)
        finally:
            conn.unbind()

    def replace_user_password(self, dn: str, value: str) -> None:
        """Store ``value`` (a ``{SCHEME}...`` hash) as the ``userPassword`` of ``dn``."""
        conn = self._root()
        try:
            conn.modify(dn, {"userPassword": [(ldap3.MODIFY_REPLACE, [value])]})
        finally:
            conn.unbind()

    def add_entry(self, dn: str, attrs: dict[str, object], classes: list[str]) -> None:
        conn = self._root()
        try:
            if not conn.add(dn, classes, attrs):
                raise RuntimeError(f"adding {dn!r} failed: {conn.result}")
        finally:
            conn.unbind()

    def user_password(self, dn: str) -> list[bytes]:
        """The stored ``userPassword`` values of ``dn`` (hashes), read as the rootdn."""
        conn = self._root()
        try:
            conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["userPassword"])
            return [bytes(v) for v in conn.entries[0]["userPassword"].raw_values]
        finally:
            conn.unbind()

    def can_bind(self, dn: str, password: str) -> bool:
        """A fresh simple bind (plain port): does the server accept ``password`` for ``dn``?"""
        server = ldap3.Server(self.host, port=self.port, get_info=ldap3.NONE, connect_timeout=5)
        conn = ldap3.Connection(server, dn, password, receive_timeout=10)
        try:
            return bool(conn.bind())
        finally:
            conn.unbind()


def _config(base: Path, argon2: bool, root_password: str, idle_timeout: int | None = None) -> str:
    lines = [f"include /etc/ldap/schema/{s}.schema" for s in SCHEMAS]
    lines += [
        f"modulepath {MODULE_DIR}",
        "moduleload back_mdb",
        *(["moduleload argon2"] if argon2 else []),
        f"pidfile {base}/slapd.pid",
        f"argsfile {base}/slapd.args",
        f"TLSCACertificateFile {base}/ca.pem",
        f"TLSCertificateFile {base}/server.pem",
        f"TLSCertificateKeyFile {base}/server.key",
        "loglevel stats",
        "password-hash {SSHA}",
        *([f"idletimeout {idle_timeout}"] if idle_timeout else []),
        "",
        "database config",
        f'access to * by dn.exact="{ADMIN_DN}" read by * none',
        "",
        "database mdb",
        f'suffix "{SUFFIX}"',
        f'rootdn "{ROOT_DN}"',
        f"rootpw {root_password}",
        f"directory {base}/data",
        "access to attrs=userPassword",
        "  by self write",
        f'  by dn.exact="{ADMIN_DN}" write',
        "  by anonymous auth",
        "  by * none",
        "access to *",
        f'  by dn.exact="{ADMIN_DN}" write',
        "  by self read",
        "  by users read",
        "  by * none",
        "",
    ]
    return "\n".join(lines)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _answers(host: str, port: int) -> bool:
    try:
        server = ldap3.Server(host, port=port, get_info=ldap3.NONE, connect_timeout=1)
        conn = ldap3.Connection(server, receive_timeout=2)
        ok = bool(conn.bind())
        conn.unbind()
        return ok
    except ldap3.core.exceptions.LDAPException:
        return False


@contextlib.contextmanager
def running_slapd(
    binary: str, argon2: bool | None = None, idle_timeout: int | None = None
) -> Iterator[LdapTarget]:
    """Start slapd (see the module docstring), seed it, yield it; stop it and delete its
    files on exit, also when the body fails. ``argon2``: load the argon2 password module
    (default: when it is installed). ``idle_timeout``: seconds after which slapd closes an
    idle client connection (its ``idletimeout``; default none)."""
    base = Path(tempfile.mkdtemp(prefix="rotator-slapd-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        ca_key, ca = _cert("rotator test LDAP CA")
        key, cert = _cert("127.0.0.1", (ca_key, ca))
        _, other_ca = _cert("another CA")
        (base / "ca.pem").write_bytes(_pem(ca))
        (base / "other-ca.pem").write_bytes(_pem(other_ca))
        (base / "server.pem").write_bytes(_pem(cert))
        key_file = base / "server.key"
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_file.chmod(0o600)
        (base / "data").mkdir()
        if argon2 is None:
            argon2 = (MODULE_DIR / "argon2.so").exists()
        root_password = "root-" + secrets.token_urlsafe(12)
        admin_password = "admin-" + secrets.token_urlsafe(12)
        conf = base / "slapd.conf"
        conf.write_text(_config(base, argon2, root_password, idle_timeout))
        log = base / "slapd.log"
        for _ in range(START_ATTEMPTS):
            port, ldaps_port = _free_port(), _free_port()
            urls = f"ldap://{LOOPBACK}:{port}/ ldaps://{LOOPBACK}:{ldaps_port}/"
            with log.open("ab") as out:
                # -d stats: stay in the foreground and write the stats log to stderr.
                proc = subprocess.Popen(
                    [binary, "-f", str(conf), "-h", urls, "-d", "stats"],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                )
            deadline = time.monotonic() + READY_TIMEOUT_S
            while proc.poll() is None and time.monotonic() < deadline:
                if _answers(LOOPBACK, port):
                    break
                time.sleep(0.05)
            if proc.poll() is None and _answers(LOOPBACK, port):
                break
            _stop(proc)
            proc = None
        if proc is None:
            raise RuntimeError(f"slapd did not start:\n{_tail(log)}")
        target = LdapTarget(
            host=LOOPBACK,
            port=port,
            ldaps_port=ldaps_port,
            ca_file=str(base / "ca.pem"),
            other_ca_file=str(base / "other-ca.pem"),
            admin_password=admin_password,
            root_password=root_password,
            log=log,
            argon2=argon2,
        )
        target.add_entry(SUFFIX, {"dc": "example", "o": "example"}, ["dcObject", "organization"])
        target.add_entry(SERVICE_OU, {"ou": "svc"}, ["organizationalUnit"])
        target.add_entry(
            ADMIN_DN,
            {"cn": "admin", "sn": "admin", "uid": "admin"},
            ["inetOrgPerson"],
        )
        target.set_password(ADMIN_DN, admin_password)
        yield target
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(base, ignore_errors=True)
