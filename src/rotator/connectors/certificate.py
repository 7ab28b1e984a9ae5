"""The ``certificate`` connector: an internal CA and the leaf certificates it signs (DUAL).

Two roles (``role`` setting):

- ``ca``:   the value is a self-signed CA: its private key and certificate. Leaves name it by
            credential name (``ca``) and read it through the secret resolver, so the CA key
            lives only in rotator's store and every use of it is audited.
- ``leaf``: the value is a new key and a certificate for ``common_name`` / ``sans`` signed by
            that CA, valid for ``validity``. Consecutive leaves overlap: the old one stays
            valid until it expires, so nothing breaks while servers pick up the new one.
            ``next_rotation_hint`` asks for the next rotation at ``renew_fraction`` of the
            lifetime (default 0.66), well before expiry.

The value is a PEM bundle: private key (PKCS#8), certificate, then (leaf) the CA certificate.

- create:   a CA in the engine's process pool; a leaf in process (it needs the CA).
- set:      with ``publish``, write the bundle to that file (atomic, mode 0600). A CA with
            ``trust_bundle`` adds its new certificate to that file of trusted CA certificates
            (public, 0644) so verifiers trust it before any leaf it signs shows up.
- test:     the bundle parses, the key matches the certificate, the certificate chains to the
            CA (signature checked with the CA's public key), is valid now, names the configured
            common name and SANs; a CA's new certificate is in its trust bundle.
- finish:   with ``publish``, make sure the file holds the new CURRENT bundle; the trust bundle
            holds the CURRENT and PREVIOUS CA certificates.
- revoke:   a leaf: nothing (a certificate ends at its expiry; no CRL/OCSP here). A CA: its
            certificate leaves the trust bundle, so give a CA a grace at least as long as a
            leaf's validity, or rotate its leaves within the grace.
- rollback: with ``publish``, put the CURRENT bundle back; drop the new CA certificate from the
            trust bundle.
- verify:   (``credential add --verify``) the CA is readable, a CA, valid now, and can sign.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import Field, field_validator, model_validator

from rotator.connectors import _files
from rotator.connectors.base import (
    ConnectorConfig,
    CreateRequest,
    FinishRequest,
    PermanentError,
    RevokeRequest,
    RollbackRequest,
    SecretResolver,
    SetRequest,
    Strategy,
    TestRequest,
    TransientError,
    VerifyRequest,
)
from rotator.domain.policy import parse_duration
from rotator.domain.secret import Secret
from rotator.errors import PolicyError

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

DEFAULT_VALIDITY = {"ca": "365d", "leaf": "30d"}
_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"^(?:\*\.)?(?:{_DNS_LABEL}\.)*{_DNS_LABEL}$", re.IGNORECASE)
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL)


def utcnow() -> datetime:
    """The connector's clock (tests replace it)."""
    return datetime.now(UTC)


def _duration(text: str, what: str) -> timedelta:
    try:
        return parse_duration(text, what)
    except PolicyError as exc:
        raise ValueError(exc.message) from None


def _parse_sans(text: str) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    dns: list[str] = []
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        try:
            ips.append(ipaddress.ip_address(item))
            continue
        except ValueError:
            pass
        if len(item) > 253 or not _DNS_NAME.match(item):
            raise ValueError(f"SAN {item!r} is neither a DNS name nor an IP address")
        dns.append(item.lower())
    return dns, ips


class CertificateConfig(ConnectorConfig):
    """``role`` ca | leaf (default); ``common_name``; ``ca`` (leaf: the CA credential's name);
    ``sans`` (leaf: comma-separated DNS names and IP addresses); ``key_type`` ec (P-256,
    default) | rsa (``rsa_bits``, default 3072) | ed25519; ``validity`` (default 365d for a
    CA, 30d for a leaf); ``renew_fraction`` of the lifetime after which to rotate (default
    0.66); ``backdate`` of not-before for clock skew (default 5m); ``publish``: absolute path
    to write the bundle to (mode ``publish_mode``, default 0600); ``trust_bundle`` (CA only):
    absolute path of the PEM file of trusted CA certificates verifiers read (mode
    ``trust_bundle_mode``, default 0644)."""

    role: Literal["ca", "leaf"] = "leaf"
    common_name: str = Field(min_length=1, max_length=64)
    ca: str | None = None
    sans: str = ""
    key_type: Literal["ec", "rsa", "ed25519"] = "ec"
    rsa_bits: int = Field(default=3072, ge=2048, le=8192)
    validity: str | None = None
    renew_fraction: float = Field(default=0.66, gt=0.0, lt=1.0)
    backdate: str = "5m"
    publish: str | None = None
    publish_mode: str = "0600"
    trust_bundle: str | None = None
    trust_bundle_mode: str = "0644"

    @field_validator("validity")
    @classmethod
    def _validity(cls, v: str | None) -> str | None:
        if v is not None and _duration(v, "validity") <= timedelta(0):
            raise ValueError("validity must be longer than zero")
        return v

    @field_validator("backdate")
    @classmethod
    def _backdate(cls, v: str) -> str:
        _duration(v, "backdate")
        return v

    @field_validator("sans")
    @classmethod
    def _sans(cls, v: str) -> str:
        _parse_sans(v)
        return v

    @field_validator("publish", "trust_bundle")
    @classmethod
    def _publish(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).is_absolute():
            raise ValueError("must be an absolute path")
        return v

    @field_validator("publish_mode", "trust_bundle_mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        _files.parse_mode(v)
        return v

    @model_validator(mode="after")
    def _role(self) -> CertificateConfig:
        if self.role == "leaf" and not self.ca:
            raise ValueError("a leaf needs 'ca': the name of the CA credential")
        if self.role == "ca" and self.ca:
            raise ValueError("'ca' is for role leaf only")
        if self.role == "ca" and self.sans:
            raise ValueError("'sans' is for role leaf only")
        if self.role == "leaf" and self.trust_bundle:
            raise ValueError("'trust_bundle' is for role ca only")
        return self

    @property
    def lifetime(self) -> timedelta:
        return _duration(self.validity or DEFAULT_VALIDITY[self.role], "validity")

    @property
    def skew(self) -> timedelta:
        return _duration(self.backdate, "backdate")

    def san_names(self) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
        return _parse_sans(self.sans)


# -- keys and certificates (pure) ------------------------------------------------------------


def generate_key(key_type: str, rsa_bits: int = 3072) -> PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def _hash_for(key: PrivateKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def issue_ca(
    key: PrivateKey, common_name: str, not_before: datetime, not_after: datetime
) -> x509.Certificate:
    """A self-signed CA certificate that may sign leaf certificates (path length 0)."""
    name = _name(common_name)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, _hash_for(key))
    )


def issue_leaf(
    public_key: PublicKey,
    common_name: str,
    dns: list[str],
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
    ca: Bundle,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """An end-entity certificate (server and client auth) signed by ``ca``."""
    try:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        )
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(aki, critical=False)
    )
    if dns or ips:
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ip) for ip in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca.key, _hash_for(ca.key))


def to_pem(
    key: PrivateKey, cert: x509.Certificate, chain: Sequence[x509.Certificate] = ()
) -> bytes:
    """The bundle: PKCS#8 private key, certificate, then the chain."""
    out = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    for c in (cert, *chain):
        out += c.public_bytes(serialization.Encoding.PEM)
    return out


def self_signed_ca_pem(
    common_name: str,
    not_before: datetime,
    not_after: datetime,
    key_type: str = "ec",
    rsa_bits: int = 3072,
) -> bytes:
    """A CA bundle with an explicit validity window (also for tests: an expired CA)."""
    key = generate_key(key_type, rsa_bits)
    return to_pem(key, issue_ca(key, common_name, not_before, not_after))


def generate_ca(config: ConnectorConfig) -> bytes:
    """A new self-signed CA bundle for ``config``. Top-level and picklable: the engine runs it
    in its process pool (RSA key generation takes a while)."""
    assert isinstance(config, CertificateConfig)
    now = utcnow()
    return self_signed_ca_pem(
        config.common_name,
        now - config.skew,
        now + config.lifetime,
        config.key_type,
        config.rsa_bits,
    )


@dataclass(frozen=True)
class Bundle:
    key: PrivateKey
    cert: x509.Certificate
    chain: list[x509.Certificate]


def parse_bundle(data: bytes, what: str = "the value") -> Bundle:
    """Private key, certificate, chain from a PEM bundle; PermanentError naming the problem."""
    keys: list[bytes] = []
    certs: list[bytes] = []
    for m in _PEM_BLOCK.finditer(data):
        label = m.group(1)
        if label == b"CERTIFICATE":
            certs.append(m.group(0))
        elif label.endswith(b"PRIVATE KEY"):
            if label == b"ENCRYPTED PRIVATE KEY":
                raise PermanentError(f"{what} holds an encrypted private key")
            keys.append(m.group(0))
    if len(keys) != 1:
        raise PermanentError(f"{what} must hold one private key, found {len(keys)}")
    if not certs:
        raise PermanentError(f"{what} holds no certificate")
    try:
        key = serialization.load_pem_private_key(keys[0], password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise PermanentError(f"{what}: the private key does not parse") from None
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise PermanentError(f"{what}: unsupported key type {type(key).__name__}")
    try:
        parsed = [x509.load_pem_x509_certificate(c) for c in certs]
    except ValueError:
        raise PermanentError(f"{what}: a certificate does not parse") from None
    return Bundle(key, parsed[0], parsed[1:])


def key_matches(bundle: Bundle) -> bool:
    """The bundle's private key is the one the certificate was issued for."""
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    mine = bundle.key.public_key().public_bytes(*spki)
    return mine == bundle.cert.public_key().public_bytes(*spki)


def _ts(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bc.ca


def _may_sign_certs(cert: x509.Certificate) -> bool:
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True  # no keyUsage: no restriction
    return ku.key_cert_sign


def _sign_check(key: PrivateKey, cert: x509.Certificate) -> bool:
    """Sign a probe with ``key`` and verify it with the certificate's public key."""
    probe = b"rotator: can this CA sign?"
    pub = cert.public_key()
    try:
        if isinstance(key, ed25519.Ed25519PrivateKey) and isinstance(pub, ed25519.Ed25519PublicKey):
            pub.verify(key.sign(probe), probe)
        elif isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(
            pub, ec.EllipticCurvePublicKey
        ):
            pub.verify(key.sign(probe, ec.ECDSA(hashes.SHA256())), probe, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPrivateKey) and isinstance(pub, rsa.RSAPublicKey):
            pad = padding.PKCS1v15()
            pub.verify(key.sign(probe, pad, hashes.SHA256()), probe, pad, hashes.SHA256())
        else:
            return False
    except InvalidSignature:
        return False
    return True


def check_window(cert: x509.Certificate, now: datetime, who: str) -> None:
    if now > cert.not_valid_after_utc:
        raise PermanentError(f"{who} expired on {_ts(cert.not_valid_after_utc)}")
    if now < cert.not_valid_before_utc:
        raise PermanentError(f"{who} is not valid before {_ts(cert.not_valid_before_utc)}")


def check_ca(bundle: Bundle, name: str, now: datetime, *, probe: bool = False) -> None:
    """``bundle`` is a usable CA now: a CA certificate, its key, valid, allowed to sign."""
    who = f"CA {name!r}"
    if not _is_ca(bundle.cert):
        raise PermanentError(
            f"credential {name!r} is not a CA: its certificate lacks basicConstraints CA=true"
        )
    if not _may_sign_certs(bundle.cert):
        raise PermanentError(f"{who} may not sign certificates: keyUsage lacks keyCertSign")
    if not key_matches(bundle):
        raise PermanentError(f"{who}: its private key does not match its certificate")
    check_window(bundle.cert, now, who)
    if probe and not _sign_check(bundle.key, bundle.cert):
        raise PermanentError(f"{who}: its key cannot make a signature its certificate verifies")


async def read_ca(secrets: SecretResolver, name: str, now: datetime) -> Bundle:
    value = await secrets.get(name)
    ca = parse_bundle(value.reveal(), f"CA {name!r}")
    check_ca(ca, name, now)
    return ca


def _fingerprint(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


def check_bundle(bundle: Bundle, cfg: CertificateConfig, ca: Bundle | None, now: datetime) -> None:
    """What ``test`` proves about a bundle; ``ca`` is None for role ca (self-signed)."""
    if not key_matches(bundle):
        raise PermanentError("the private key does not match the certificate")
    issuer = ca.cert if ca is not None else bundle.cert
    try:
        bundle.cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        who = f"CA {cfg.ca!r}" if ca is not None else "itself"
        raise PermanentError(f"the certificate is not signed by {who}") from None
    check_window(bundle.cert, now, "the certificate")
    cns = bundle.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [a.value for a in cns] != [cfg.common_name]:
        raise PermanentError(f"the certificate's common name is not {cfg.common_name!r}")
    if ca is None:
        if not _is_ca(bundle.cert):
            raise PermanentError("the certificate is not a CA certificate")
        return
    if bundle.chain and _fingerprint(bundle.chain[0]) != _fingerprint(ca.cert):
        raise PermanentError(f"the bundle's chain does not hold the certificate of CA {cfg.ca!r}")
    want_dns, want_ips = cfg.san_names()
    try:
        san = bundle.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        got_dns = {d.lower() for d in san.get_values_for_type(x509.DNSName)}
        got_ips = set(san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        got_dns, got_ips = set(), set()
    if got_dns != set(want_dns) or got_ips != set(want_ips):
        got = ", ".join(sorted(got_dns) + sorted(str(i) for i in got_ips)) or "none"
        raise PermanentError(f"the certificate's SANs ({got}) are not the configured ones")


def lifetime_hint(cert: x509.Certificate, fraction: float) -> datetime:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * fraction


# -- the connector ---------------------------------------------------------------------------


def _cfg(config: ConnectorConfig) -> CertificateConfig:
    assert isinstance(config, CertificateConfig)
    return config


def _publish(cfg: CertificateConfig, value: Secret) -> None:
    assert cfg.publish is not None
    try:
        if _files.read_or_none(cfg.publish) != value.reveal():
            _files.atomic_write(cfg.publish, value.reveal(), _files.parse_mode(cfg.publish_mode))
    except OSError as exc:
        raise _files.io_error("write", cfg.publish, exc) from exc


def _unpublish_if(cfg: CertificateConfig, value: Secret) -> None:
    assert cfg.publish is not None
    try:
        if _files.read_or_none(cfg.publish) == value.reveal():
            os.unlink(cfg.publish)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise TransientError(f"cannot remove {cfg.publish}: {exc.strerror or exc}") from exc


class TrustBundle:
    """A PEM file of trusted CA certificates, changed by SHA-256 fingerprint under the file
    lock. Certificates rotator did not add are kept; an unreadable file is never overwritten."""

    def __init__(self, path: str, mode: int) -> None:
        self.path = path
        self.mode = mode

    def read(self) -> list[tuple[bytes, bytes]]:
        """(PEM block, SHA-256 fingerprint) of each certificate ([] when there is no file)."""
        try:
            raw = _files.read_or_none(self.path)
        except OSError as exc:
            raise _files.io_error("read", self.path, exc) from exc
        if raw is None:
            return []
        blocks = [m.group(0) for m in _PEM_BLOCK.finditer(raw)]
        rest = _PEM_BLOCK.sub(b"", raw).strip()
        if rest or any(not b.startswith(b"-----BEGIN CERTIFICATE-----") for b in blocks):
            raise PermanentError(
                f"trust bundle {self.path} holds something other than certificates; "
                "not overwriting it"
            )
        try:
            certs = [x509.load_pem_x509_certificate(b) for b in blocks]
        except ValueError:
            raise PermanentError(
                f"trust bundle {self.path} holds a certificate that does not parse; "
                "not overwriting it"
            ) from None
        return [(c.public_bytes(serialization.Encoding.PEM), _fingerprint(c)) for c in certs]

    def fingerprints(self) -> set[bytes]:
        return {fp for _, fp in self.read()}

    def update(self, add: list[x509.Certificate], remove: list[x509.Certificate]) -> None:
        """Add and remove certificates (by fingerprint); write only when something changed."""
        gone = {_fingerprint(c) for c in remove}
        try:
            with _files.locked(self.path):
                before = self.read()
                after = [(pem, fp) for pem, fp in before if fp not in gone]
                for c in add:
                    fp = _fingerprint(c)
                    if fp not in gone and all(fp != f for _, f in after):
                        after.append((c.public_bytes(serialization.Encoding.PEM), fp))
                if after != before:
                    data = b"".join(pem for pem, _ in after)
                    try:
                        _files.atomic_write(self.path, data, self.mode)
                    except OSError as exc:
                        raise _files.io_error("write", self.path, exc) from exc
        except OSError as exc:
            raise _files.io_error("update", self.path, exc) from exc


def _trust(cfg: CertificateConfig) -> TrustBundle | None:
    if cfg.trust_bundle is None:
        return None
    return TrustBundle(cfg.trust_bundle, _files.parse_mode(cfg.trust_bundle_mode))


async def _make_leaf(cfg: CertificateConfig, secrets: SecretResolver) -> bytes:
    assert cfg.ca is not None
    now = utcnow()
    ca = await read_ca(secrets, cfg.ca, now)
    key = await asyncio.to_thread(generate_key, cfg.key_type, cfg.rsa_bits)
    # A leaf never outlives its CA: it is cut at the CA's expiry (and so renewed earlier).
    # ... nor starts before it (some validators want the leaf's window inside the CA's).
    not_before = max(now - cfg.skew, ca.cert.not_valid_before_utc)
    not_after = min(now + cfg.lifetime, ca.cert.not_valid_after_utc)
    dns, ips = cfg.san_names()
    cert = issue_leaf(key.public_key(), cfg.common_name, dns, ips, ca, not_before, not_after)
    return to_pem(key, cert, [ca.cert])


class CertificateConnector:
    kind: ClassVar[str] = "certificate"
    strategy: ClassVar[Strategy] = Strategy.DUAL
    # A value given or generated at `credential add` is made real through finish().
    publish_on_add: ClassVar[bool] = True
    config_model: ClassVar[type[ConnectorConfig]] = CertificateConfig
    references: ClassVar[tuple[str, ...]] = ("ca",)

    def host_effect(self, config: ConnectorConfig) -> str | None:
        """A certificate with ``publish`` is written by rotator to a path on its host."""
        publish = _cfg(config).publish
        return f"writes {publish}" if publish else None

    def target_key(self, config: ConnectorConfig) -> str:
        cfg = _cfg(config)
        return f"pki:{cfg.ca}" if cfg.role == "leaf" else "pki"

    def offload(self, config: ConnectorConfig) -> Callable[[ConnectorConfig], bytes] | None:
        """A CA is made in the engine's process pool; a leaf needs the CA, read in process."""
        return generate_ca if _cfg(config).role == "ca" else None

    async def create(self, req: CreateRequest) -> Secret:
        cfg = _cfg(req.config)
        if cfg.role == "ca":
            return Secret(await asyncio.to_thread(generate_ca, cfg))
        return Secret(await _make_leaf(cfg, req.secrets))

    def next_rotation_hint(self, config: ConnectorConfig, value: Secret) -> datetime | None:
        """At ``renew_fraction`` of the certificate's lifetime (not-before to not-after)."""
        cfg = _cfg(config)
        return lifetime_hint(parse_bundle(value.reveal()).cert, cfg.renew_fraction)

    async def set(self, req: SetRequest) -> None:
        cfg = _cfg(req.config)
        pending = parse_bundle(req.pending.reveal())
        trust = _trust(cfg)
        if trust is not None:
            await asyncio.to_thread(trust.update, [pending.cert], [])
        if cfg.publish is not None:
            await asyncio.to_thread(_publish, cfg, req.pending)

    async def test(self, req: TestRequest) -> None:
        cfg = _cfg(req.config)
        bundle = parse_bundle(req.pending.reveal())
        now = utcnow()
        ca = await read_ca(req.secrets, cfg.ca, now) if cfg.ca is not None else None
        if cfg.role == "ca":
            check_ca(bundle, req.credential, now, probe=True)
        check_bundle(bundle, cfg, ca, now)
        trust = _trust(cfg)
        if trust is not None:
            found = await asyncio.to_thread(trust.fingerprints)
            if _fingerprint(bundle.cert) not in found:
                raise PermanentError(
                    f"the new CA certificate is not in the trust bundle {cfg.trust_bundle}"
                )

    async def finish(self, req: FinishRequest) -> None:
        cfg = _cfg(req.config)
        trust = _trust(cfg)
        if trust is not None:
            certs = [parse_bundle(req.current.reveal()).cert]
            if req.previous is not None:
                certs.append(parse_bundle(req.previous.reveal(), "the previous value").cert)
            await asyncio.to_thread(trust.update, certs, [])
        if cfg.publish is not None:
            await asyncio.to_thread(_publish, cfg, req.current)

    async def revoke(self, req: RevokeRequest) -> None:
        """A leaf ends at its expiry (no CRL here); a CA leaves the trust bundle."""
        trust = _trust(_cfg(req.config))
        if trust is not None:
            cert = parse_bundle(req.value.reveal(), "the revoked value").cert
            await asyncio.to_thread(trust.update, [], [cert])

    async def rollback(self, req: RollbackRequest) -> None:
        cfg = _cfg(req.config)
        trust = _trust(cfg)
        if trust is not None and not (req.current is not None and req.current == req.pending):
            await asyncio.to_thread(trust.update, [], [parse_bundle(req.pending.reveal()).cert])
        if cfg.publish is None:
            return
        if req.current is not None:
            await asyncio.to_thread(_publish, cfg, req.current)
        else:
            await asyncio.to_thread(_unpublish_if, cfg, req.pending)

    async def verify(self, req: VerifyRequest) -> None:
        """The CA is readable, a CA, valid now and able to sign; a given value passes test."""
        cfg = _cfg(req.config)
        now = utcnow()
        ca: Bundle | None = None
        if cfg.role == "leaf":
            assert cfg.ca is not None
            ca = await read_ca(req.secrets, cfg.ca, now)
            check_ca(ca, cfg.ca, now, probe=True)
        if req.current is not None:
            bundle = parse_bundle(req.current.reveal())
            if cfg.role == "ca":
                check_ca(bundle, req.credential, now, probe=True)
            check_bundle(bundle, cfg, ca, now)
        for path in (cfg.publish, cfg.trust_bundle):
            if path is not None:
                directory = Path(path).parent
                if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
                    raise PermanentError(f"directory {directory} of {path} is not writable")
        trust = _trust(cfg)
        if trust is not None:
            await asyncio.to_thread(trust.read)
