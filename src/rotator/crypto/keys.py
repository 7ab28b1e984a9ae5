"""Master keys: from a 0600 key file or from a passphrase through scrypt.

A master key only wraps data keys; it never encrypts a credential value itself. Its ``id`` is
an HMAC fingerprint that identifies the key without revealing it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from rotator.crypto.aead import KEY_BYTES
from rotator.errors import MasterKeyError

KEY_FILE_HEADER = "rotator-master-key-v1:"
MIN_SCRYPT_N = 2**15


class MasterKey:
    """A 32-byte key-encryption key. Its repr shows only the fingerprint id."""

    __slots__ = ("_key", "id")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise MasterKeyError("a master key is 32 bytes")
        self._key = key
        self.id = hmac.new(key, b"rotator master key id", hashlib.sha256).hexdigest()[:16]

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(KEY_BYTES))

    @property
    def material(self) -> bytes:
        """The raw key, for the aead primitive only."""
        return self._key

    def __repr__(self) -> str:
        return f"MasterKey(id={self.id!r})"


@dataclass(frozen=True, slots=True)
class KdfParams:
    """scrypt parameters stored beside the data so the passphrase derives the same key later."""

    salt: bytes
    n: int = 2**15
    r: int = 8
    p: int = 1

    @classmethod
    def fresh(cls) -> KdfParams:
        return cls(salt=os.urandom(16))

    def to_json(self) -> dict[str, Any]:
        return {
            "alg": "scrypt",
            "salt": base64.b64encode(self.salt).decode(),
            "n": self.n,
            "r": self.r,
            "p": self.p,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KdfParams:
        params = cls(
            salt=base64.b64decode(data["salt"]),
            n=int(data["n"]),
            r=int(data["r"]),
            p=int(data["p"]),
        )
        if params.n < MIN_SCRYPT_N:
            raise MasterKeyError(f"stored scrypt parameter n={params.n} is below {MIN_SCRYPT_N}")
        return params


@functools.lru_cache(maxsize=8)
def _scrypt(
    passphrase_digest: bytes, passphrase: bytes, salt: bytes, n: int, r: int, p: int
) -> bytes:
    # Cached so a process derives a passphrase key once, never per operation.
    del passphrase_digest  # only part of the cache key
    kdf = Scrypt(salt=salt, length=KEY_BYTES, n=n, r=r, p=p)
    return kdf.derive(passphrase)


def derive_master_key(passphrase: str, params: KdfParams) -> MasterKey:
    """Derive the master key from a passphrase. Costly (scrypt); cached per process."""
    if not passphrase:
        raise MasterKeyError("ROTATOR_PASSPHRASE is empty")
    raw = passphrase.encode()
    key = _scrypt(hashlib.sha256(raw).digest(), raw, params.salt, params.n, params.r, params.p)
    return MasterKey(key)


def write_key_file(path: Path, key: MasterKey) -> None:
    """Write ``key`` to ``path`` with mode 0600, durably. Refuses to overwrite an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = (KEY_FILE_HEADER + base64.b64encode(key.material).decode() + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)


def replace_key_file(src: Path, dst: Path) -> None:
    """Atomically move the key file ``src`` over ``dst`` (the old key at ``dst`` is gone)."""
    os.replace(src, dst)
    _fsync_dir(dst.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_key_file(path: Path) -> MasterKey:
    """Read a master key file; MasterKeyError if missing, readable by others, or malformed."""
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise MasterKeyError(
            f"master key file {path} is missing (run `rotator init`, or set "
            "ROTATOR_PASSPHRASE if this store uses a passphrase)"
        ) from exc
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise MasterKeyError(
            f"master key file {path} has mode {stat.S_IMODE(st.st_mode):04o}: it must be 0600 "
            "(readable by its owner only)"
        )
    text = path.read_text(errors="replace").strip()
    if not text.startswith(KEY_FILE_HEADER):
        raise MasterKeyError(f"master key file {path} is malformed")
    try:
        raw = base64.b64decode(text[len(KEY_FILE_HEADER) :], validate=True)
    except ValueError as exc:
        raise MasterKeyError(f"master key file {path} is malformed") from exc
    if len(raw) != KEY_BYTES:
        raise MasterKeyError(f"master key file {path} is malformed")
    return MasterKey(raw)
