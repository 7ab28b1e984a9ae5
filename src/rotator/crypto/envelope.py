"""Envelope encryption: values sealed under per-tenant data keys, data keys wrapped by a master key.

The AAD binds each ciphertext to where it belongs, so a ciphertext copied to another row, another
credential, another version or another tenant fails to open.
"""

from __future__ import annotations

import os

from rotator.crypto import aead
from rotator.crypto.keys import MasterKey
from rotator.domain.secret import Secret


class DataKey:
    """A tenant's data-encryption key, unwrapped in memory. Repr never shows the key."""

    __slots__ = ("_key", "id", "tenant_id")

    def __init__(self, id: int, tenant_id: int, key: bytes) -> None:
        self.id = id
        self.tenant_id = tenant_id
        self._key = key

    def __repr__(self) -> str:
        return f"DataKey(id={self.id}, tenant_id={self.tenant_id})"


def new_data_key_material() -> bytes:
    return os.urandom(aead.KEY_BYTES)


def version_aad(tenant_id: int, credential_id: int, version: int) -> bytes:
    return f"rotator/value|t={tenant_id}|c={credential_id}|v={version}".encode()


def data_key_aad(tenant_id: int, data_key_id: int) -> bytes:
    return f"rotator/data-key|t={tenant_id}|k={data_key_id}".encode()


def seal(data_key: DataKey, value: Secret, credential_id: int, version: int) -> bytes:
    """Encrypt ``value`` as version ``version`` of credential ``credential_id``."""
    aad = version_aad(data_key.tenant_id, credential_id, version)
    return aead.encrypt(data_key._key, value.reveal(), aad)


def open_(data_key: DataKey, blob: bytes, credential_id: int, version: int) -> Secret:
    """Decrypt what :func:`seal` made for the same place. Raises DecryptionError otherwise."""
    aad = version_aad(data_key.tenant_id, credential_id, version)
    return Secret(aead.decrypt(data_key._key, blob, aad))


def wrap(master: MasterKey, material: bytes, tenant_id: int, data_key_id: int) -> bytes:
    """Wrap a data key under the master key."""
    return aead.encrypt(master.material, material, data_key_aad(tenant_id, data_key_id))


def unwrap(master: MasterKey, wrapped: bytes, tenant_id: int, data_key_id: int) -> DataKey:
    """Unwrap a data key. Raises DecryptionError for a wrong master key or a changed blob."""
    material = aead.decrypt(master.material, wrapped, data_key_aad(tenant_id, data_key_id))
    return DataKey(data_key_id, tenant_id, material)


def rewrap(
    old: MasterKey, new: MasterKey, wrapped: bytes, tenant_id: int, data_key_id: int
) -> bytes:
    """Re-wrap a data key from ``old`` to ``new`` without touching any value it encrypts."""
    dk = unwrap(old, wrapped, tenant_id, data_key_id)
    return wrap(new, dk._key, tenant_id, data_key_id)
