"""Keyed integrity recipes: the stage-map MAC of a credential and the audit key.

Both keys come from HKDF-SHA-256 (cryptography's) over a key rotator already holds, with a
distinct ``info`` per use, so neither key ever encrypts anything and neither reveals its parent:

- a credential's stage map is MAC'd under a key derived from its tenant's data key, so only a
  holder of the master key can make a stage map (tenant, credential id, name, every version's
  number and stage) that verifies;
- the audit log is MAC'd under an audit key derived from the master key. Old audit keys are
  kept wrapped (AES-256-GCM, like data keys) under the current master key so that entries
  written before a master-key rotation stay verifiable.

Callers outside crypto/ see only MAC strings and key ids, never key bytes.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from rotator.crypto import aead
from rotator.crypto.envelope import DataKey
from rotator.crypto.keys import MasterKey

_STAGE_MAP_INFO = b"rotator/stage-map-mac/v1"
_AUDIT_INFO = b"rotator/audit-key/v1"


def _hkdf(material: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(material)


class MacKey:
    """An HMAC-SHA-256 key with a public fingerprint ``id``. Repr never shows the key."""

    __slots__ = ("_key", "id")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self.id = hmac.new(key, b"rotator mac key id", hashlib.sha256).hexdigest()[:16]

    def mac(self, message: bytes) -> str:
        """HMAC-SHA-256 of ``message``, hex."""
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def verify(self, message: bytes, tag: str) -> bool:
        """True when ``tag`` is this key's MAC of ``message`` (constant-time compare)."""
        return hmac.compare_digest(self.mac(message), tag)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r})"


class AuditKey(MacKey):
    """The key the audit chain is MAC'd with; derived from one master key."""


def stage_map_key(data_key: DataKey) -> MacKey:
    """The stage-map MAC key of a tenant, derived from its data key."""
    return MacKey(_hkdf(data_key._key, _STAGE_MAP_INFO))


def audit_key(master: MasterKey) -> AuditKey:
    """The audit key that belongs to ``master`` (same master, same key, in every process)."""
    return AuditKey(_hkdf(master.material, _AUDIT_INFO))


def _audit_key_aad(key_id: str) -> bytes:
    return f"rotator/audit-key|k={key_id}".encode()


def wrap_audit_key(master: MasterKey, key: AuditKey) -> bytes:
    """Wrap an (old) audit key under ``master`` so entries it MAC'd stay verifiable."""
    return aead.encrypt(master.material, key._key, _audit_key_aad(key.id))


def unwrap_audit_key(master: MasterKey, wrapped: bytes, key_id: str) -> AuditKey:
    """Unwrap an audit key. DecryptionError for a wrong master key, a changed blob or id."""
    key = AuditKey(aead.decrypt(master.material, wrapped, _audit_key_aad(key_id)))
    if key.id != key_id:  # pragma: no cover - the AAD binds the id already
        from rotator.errors import DecryptionError

        raise DecryptionError()
    return key


__all__ = [
    "AuditKey",
    "MacKey",
    "audit_key",
    "stage_map_key",
    "unwrap_audit_key",
    "wrap_audit_key",
]
