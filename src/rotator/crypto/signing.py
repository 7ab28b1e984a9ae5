"""The audit signing key: Ed25519, derived from an audit key, for signed audit checkpoints.

The private key is HKDF-SHA-256 (info ``rotator/audit-signing/v1``) over the audit key's
material, so every process holding that audit key (the master key's, or an older one kept
wrapped under it) derives the same key and nothing private is ever stored: the set of keys
rotator trusts is derived from the audit keys it holds, never read from the database. Its
public id is the first 16 hex digits of SHA-256 over the raw 32-byte public key, so anyone
holding the public key can recompute the id a checkpoint names. Repr never shows the private
key.
"""

from __future__ import annotations

import hashlib
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from rotator.crypto.integrity import AuditKey
from rotator.errors import CryptoError

_SIGNING_INFO = b"rotator/audit-signing/v1"


def public_key_id(public_raw: bytes) -> str:
    """The id of a raw Ed25519 public key: first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


class SigningKey:
    """An Ed25519 private key with its public half. Repr shows the id only."""

    __slots__ = ("_key", "id", "public_raw")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public_raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.id = public_key_id(self.public_raw)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"SigningKey(id={self.id!r})"


def audit_signing_key(audit_key: AuditKey) -> SigningKey:
    """The signing key that belongs to ``audit_key`` (same audit key, same signing key, in
    every process)."""
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SIGNING_INFO).derive(
        audit_key._key
    )
    return SigningKey(Ed25519PrivateKey.from_private_bytes(seed))


def public_pem(public_raw: bytes) -> str:
    """The SubjectPublicKeyInfo PEM of a raw Ed25519 public key."""
    return (
        Ed25519PublicKey.from_public_bytes(public_raw)
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


def load_public_pems(pem: bytes) -> list[bytes]:
    """The raw Ed25519 public keys of every PEM block in ``pem`` (other lines, such as the
    ``# key id`` comments of ``rotator audit public-key``, are ignored). CryptoError (one
    line) when it holds none, or a block that is not an Ed25519 public key."""
    found = []
    for block in _PEM_BLOCK.findall(pem):
        try:
            key = serialization.load_pem_public_key(block)
        except (ValueError, TypeError) as exc:
            raise CryptoError("the public key file holds a PEM block that does not load") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise CryptoError("the public key file holds a key that is not Ed25519")
        found.append(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    if not found:
        raise CryptoError("the public key file holds no PEM public key")
    return found


def verify_signature(public_raw: bytes, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is the Ed25519 signature of ``message`` by ``public_raw``."""
    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


__all__ = [
    "SigningKey",
    "audit_signing_key",
    "load_public_pems",
    "public_key_id",
    "public_pem",
    "verify_signature",
]
