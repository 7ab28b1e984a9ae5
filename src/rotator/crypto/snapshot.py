"""Backup files: the body encrypted and the whole file signed, under keys derived from the
master key.

File layout (every length big-endian)::

    b"rotator-backup\\n"  u32 header length  header (canonical JSON)
    u64 body length  body (12-byte nonce + AES-256-GCM ciphertext and tag)
    64-byte Ed25519 signature over everything before it

* The body key is HKDF-SHA-256 over the master key with info ``rotator/backup-encryption/v1``
  and a fresh random 32-byte salt per file (kept in the header), so no two files share a key;
  the GCM associated data is the SHA-256 of the header bytes, binding header and body.
* The signing key is Ed25519, its seed HKDF-SHA-256 over the master key with info
  ``rotator/backup-signing/v1`` (the same construction as the audit signing key). The header
  names its public key id. Ed25519 rather than an HMAC: GCM already stops anyone without the
  master key from changing the body, so a MAC would add nothing; a public-key signature also
  lets someone who holds only the public key (a backup store's checker, an auditor) tell a
  genuine file from a forged one without ever holding the master key.

Verification always uses the key derived from the master key in hand, never anything the file
says. Every failure is InvalidInput with one line that quotes no content of the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from rotator.crypto.keys import MasterKey
from rotator.crypto.signing import SigningKey, verify_signature
from rotator.errors import InvalidInput

MAGIC = b"rotator-backup\n"
FORMAT = 2  # 2: revision, audit head and table digests moved into the body
_ENCRYPTION_INFO = b"rotator/backup-encryption/v1"
_SIGNING_INFO = b"rotator/backup-signing/v1"
_SIG_BYTES = 64
_NONCE_BYTES = 12
MAX_HEADER_BYTES = 1 << 20  # a header is a few kilobytes; more is not a header of ours


def _hkdf(material: bytes, info: bytes, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(material)


def backup_signing_key(master: MasterKey) -> SigningKey:
    """The Ed25519 key that signs backups made under ``master`` (same master, same key)."""
    return SigningKey(Ed25519PrivateKey.from_private_bytes(_hkdf(master.material, _SIGNING_INFO)))


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def seal(master: MasterKey, header: dict[str, Any], body: bytes) -> bytes:
    """The backup file holding ``body`` (encrypted) and ``header`` (plain, signed). Adds
    ``format``, ``master_key_id``, ``signing_key_id`` and ``salt`` to the header."""
    salt = os.urandom(32)
    signer = backup_signing_key(master)
    header = {
        **header,
        "format": FORMAT,
        "master_key_id": master.id,
        "signing_key_id": signer.id,
        "salt": salt.hex(),
    }
    head = canonical(header)
    nonce = os.urandom(_NONCE_BYTES)
    key = _hkdf(master.material, _ENCRYPTION_INFO, salt)
    ct = nonce + AESGCM(key).encrypt(nonce, body, hashlib.sha256(head).digest())
    signed = MAGIC + struct.pack(">I", len(head)) + head + struct.pack(">Q", len(ct)) + ct
    return signed + signer.sign(signed)


def read_header(data: bytes, what: str) -> dict[str, Any]:
    """The header of the backup file ``data`` (``what`` names it in messages), NOT verified:
    only for what is needed before verifying (which master key, scrypt parameters).
    InvalidInput when ``data`` is not a backup of a format this version reads."""
    return _split(data, what)[0]


def _split(data: bytes, what: str) -> tuple[dict[str, Any], bytes, bytes, bytes]:
    if not data.startswith(MAGIC):
        raise InvalidInput(f"{what} is not a rotator backup")
    pos = len(MAGIC)
    if len(data) < pos + 4:
        raise InvalidInput(f"{what} is truncated")
    (hlen,) = struct.unpack_from(">I", data, pos)
    pos += 4
    if hlen > MAX_HEADER_BYTES:
        raise InvalidInput(f"{what} has a header of {hlen} bytes: not a rotator backup")
    if len(data) < pos + hlen + 8:
        raise InvalidInput(f"{what} is truncated")
    head = data[pos : pos + hlen]
    pos += hlen
    (blen,) = struct.unpack_from(">Q", data, pos)
    pos += 8
    if len(data) < pos + blen + _SIG_BYTES:
        raise InvalidInput(f"{what} is truncated")
    if len(data) != pos + blen + _SIG_BYTES:
        raise InvalidInput(f"{what} has bytes after its signature")
    try:
        header = json.loads(head)
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than any header
        raise InvalidInput(f"{what} has a header that is not JSON") from None
    if not isinstance(header, dict):
        raise InvalidInput(f"{what} has a header that is not a JSON object")
    if header.get("format") != FORMAT:
        raise InvalidInput(f"{what} is in a backup format this rotator does not read")
    body = data[pos : pos + blen]
    return header, head, body, data[pos + blen :]


def open_(master: MasterKey, data: bytes, what: str) -> tuple[dict[str, Any], bytes]:
    """(header, body) of the backup file ``data``, after checking its signature and
    decrypting its body with keys derived from ``master``. InvalidInput (one line) for a file
    that is not a backup, is truncated, was changed, or was made under another master key."""
    header, head, body, signature = _split(data, what)
    if header.get("master_key_id") != master.id:
        raise InvalidInput(
            f"{what} was made under master key {str(header.get('master_key_id'))[:16]!r}, "
            f"not this store's key {master.id!r}"
        )
    signer = backup_signing_key(master)
    if not verify_signature(signer.public_raw, signature, data[: -len(signature)]):
        raise InvalidInput(f"{what} fails its signature check: it was changed after it was made")
    try:
        salt = bytes.fromhex(str(header["salt"]))
        key = _hkdf(master.material, _ENCRYPTION_INFO, salt)
        plain = AESGCM(key).decrypt(
            body[:_NONCE_BYTES], body[_NONCE_BYTES:], hashlib.sha256(head).digest()
        )
    except (KeyError, ValueError, InvalidTag):
        raise InvalidInput(f"{what} does not decrypt: it was changed after it was made") from None
    return header, plain


__all__ = ["FORMAT", "MAGIC", "backup_signing_key", "canonical", "open_", "read_header", "seal"]
