"""AES-256-GCM with 96-bit random nonces: the one primitive the recipes build on.

Internal to crypto/: other packages use the recipes in :mod:`rotator.crypto`.
Blob layout: ``version byte (1) || nonce (12) || ciphertext || tag (16)``.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from rotator.errors import DecryptionError

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
FORMAT_V1 = b"\x01"


def encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt and authenticate ``plaintext`` bound to ``aad``; a fresh random nonce every call."""
    if len(key) != KEY_BYTES:
        raise ValueError("AES-256-GCM needs a 32-byte key")
    nonce = os.urandom(NONCE_BYTES)
    return FORMAT_V1 + nonce + AESGCM(key).encrypt(nonce, plaintext, FORMAT_V1 + aad)


def decrypt(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Open a blob made by :func:`encrypt` with the same key and aad.

    Any failure (wrong key, changed byte, other aad, truncated blob) raises DecryptionError.
    """
    if len(blob) < 1 + NONCE_BYTES + TAG_BYTES or blob[:1] != FORMAT_V1 or len(key) != KEY_BYTES:
        raise DecryptionError()
    nonce = blob[1 : 1 + NONCE_BYTES]
    try:
        return AESGCM(key).decrypt(nonce, blob[1 + NONCE_BYTES :], FORMAT_V1 + aad)
    except InvalidTag as exc:
        raise DecryptionError() from exc
