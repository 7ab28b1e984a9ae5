"""Master keys: from a 0600 key file or from a passphrase through scrypt.

A master key only wraps data keys; it never encrypts a credential value itself. Its ``id`` is
an HMAC fingerprint that identifies the key without revealing it.
"""

from __future__ import annotations

import base64
import binascii
import errno
import functools
import hashlib
import hmac
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from rotator.crypto.aead import KEY_BYTES
from rotator.errors import ConfigError, MasterKeyError

log = logging.getLogger(__name__)

KEY_FILE_HEADER = "rotator-master-key-v1:"
MAX_KEY_FILE_BYTES = 4096  # a key file is ~70 bytes; anything much bigger is not one
# scrypt cost. New parameters use DEFAULT_SCRYPT_N (OWASP's 2^17 with r=8, p=1) unless
# ROTATOR_SCRYPT_N says otherwise. Stores made by older versions keep their 2^15. Every stored
# parameter is checked before use: a row edited to n=2^40 or r=10^6 must not make each process
# allocate terabytes (scrypt needs 128 * n * r bytes: 128 MiB at 2^17, 1 GiB at the maximum).
MIN_SCRYPT_N = 2**15
DEFAULT_SCRYPT_N = 2**17
MAX_SCRYPT_N = 2**20
SCRYPT_R_RANGE = (1, 32)
SCRYPT_P_RANGE = (1, 16)
MAX_SCRYPT_MEMORY = 2**30  # bytes: 128 * n * r
SALT_BYTES = 16
SALT_BYTES_RANGE = (16, 64)


def check_scrypt_n(n: int, what: str) -> int:
    """``n`` if it is a power of two in [MIN_SCRYPT_N, MAX_SCRYPT_N]; else MasterKeyError."""
    if not (MIN_SCRYPT_N <= n <= MAX_SCRYPT_N and n & (n - 1) == 0):
        raise MasterKeyError(
            f"{what} n={n} is not a power of two from 2^{MIN_SCRYPT_N.bit_length() - 1} "
            f"to 2^{MAX_SCRYPT_N.bit_length() - 1}"
        )
    return n


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
    n: int = DEFAULT_SCRYPT_N
    r: int = 8
    p: int = 1

    @classmethod
    def fresh(cls, n: int = DEFAULT_SCRYPT_N) -> KdfParams:
        """New parameters with a random salt; ``n`` is checked like a stored one."""
        return cls(salt=os.urandom(SALT_BYTES), n=check_scrypt_n(n, "scrypt parameter"))

    def to_json(self) -> dict[str, Any]:
        return {
            "alg": "scrypt",
            "salt": base64.b64encode(self.salt).decode(),
            "n": self.n,
            "r": self.r,
            "p": self.p,
        }

    @classmethod
    def from_json(cls, data: Any) -> KdfParams:
        """Parameters read back from the store, each one checked: MasterKeyError (one line,
        naming the parameter) for a wrong type, a missing key, an unknown ``alg``, a salt of
        the wrong length, or a cost outside the ranges above (too weak or too costly)."""
        what = "stored scrypt parameter"
        if not isinstance(data, dict):
            raise MasterKeyError("stored scrypt parameters are not a JSON object")
        if data.get("alg") != "scrypt":
            raise MasterKeyError(f"{what} alg is not 'scrypt'")

        def integer(name: str) -> int:
            value = data.get(name)
            if type(value) is not int:  # not bool, not a string of digits, not a float
                raise MasterKeyError(f"{what} {name} is missing or not an integer")
            return value

        n, r, p = integer("n"), integer("r"), integer("p")
        if n < MIN_SCRYPT_N:
            raise MasterKeyError(f"{what} n={n} is below {MIN_SCRYPT_N}")
        check_scrypt_n(n, what)
        for name, value, (low, high) in (("r", r, SCRYPT_R_RANGE), ("p", p, SCRYPT_P_RANGE)):
            if not low <= value <= high:
                raise MasterKeyError(f"{what} {name}={value} is not in [{low}, {high}]")
        if 128 * n * r > MAX_SCRYPT_MEMORY:
            raise MasterKeyError(
                f"{what}s n={n}, r={r} need more than {MAX_SCRYPT_MEMORY >> 20} MiB of memory"
            )
        salt_text = data.get("salt")
        if not isinstance(salt_text, str) or len(salt_text) > 4 * SALT_BYTES_RANGE[1]:
            raise MasterKeyError(f"{what} salt is missing or not a base64 string")
        try:
            salt = base64.b64decode(salt_text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MasterKeyError(f"{what} salt is not valid base64") from exc
        low, high = SALT_BYTES_RANGE
        if not low <= len(salt) <= high:
            raise MasterKeyError(f"{what} salt is {len(salt)} bytes: it must be {low} to {high}")
        return cls(salt=salt, n=n, r=r, p=p)


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


def check_home(home: Path) -> None:
    """Make sure only its owner can write the directory holding key files and the store.

    A directory that group or others can write lets them swap ``master.key`` or the database.
    One owned by this user is tightened to 0700 (logged); one owned by someone else, or a
    sticky shared directory like /tmp, is refused with ConfigError. A missing directory is
    left alone (it is created 0700 when needed); one that is not a directory is not judged here.
    """
    try:
        st = os.stat(home)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"ROTATOR_HOME {home} cannot be used: {exc.strerror}") from exc
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISDIR(st.st_mode) or not mode & 0o022:
        return
    if st.st_uid != os.geteuid() or mode & stat.S_ISVTX:
        raise ConfigError(
            f"ROTATOR_HOME {home} has mode {mode:04o} and can be written by group or others: "
            "use a directory that only you can write"
        )
    os.chmod(home, 0o700)
    log.warning("ROTATOR_HOME %s had mode %04o (writable by others): tightened to 0700", home, mode)


def stage_private_file(path: Path, data: bytes) -> Path:
    """``data`` in a new hidden temporary file beside ``path`` (mode 0600, created exclusively,
    never through a planted link, fsynced); its path. The caller links or renames it into
    place and removes it in every case; on a failure here nothing is left."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_key_file(path: Path, key: MasterKey) -> None:
    """Write ``key`` to ``path`` with mode 0600, durably and atomically: ``path`` either does
    not exist or holds the whole key, also after a crash. Refuses to overwrite an existing file
    (FileExistsError)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    check_home(path.parent)
    data = (KEY_FILE_HEADER + base64.b64encode(key.material).decode() + "\n").encode()
    # Written under a temporary name, then linked into place: a crash mid-write leaves only a
    # hidden temporary file, never a truncated key file that every later command would refuse.
    tmp = stage_private_file(path, data)
    try:
        os.link(tmp, path)  # unlike rename, never replaces an existing file
    finally:
        tmp.unlink(missing_ok=True)
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
    """Read a master key file. MasterKeyError (one line naming the file) if it is missing, a
    symbolic link, not a regular file, owned by another user, readable or writable by group or
    others, or malformed; ConfigError if its directory is writable by others (see check_home)."""
    check_home(path.parent)
    try:
        # O_NOFOLLOW: a link planted in place of the key would make us use someone else's key;
        # O_NONBLOCK: a FIFO planted there must not hang the process.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise MasterKeyError(
            f"master key file {path} is missing (run `rotator init`, or set "
            "ROTATOR_PASSPHRASE if this store uses a passphrase)"
        ) from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MasterKeyError(
                f"master key file {path} is a symbolic link: it must be a regular file"
            ) from exc
        raise MasterKeyError(f"master key file {path} cannot be read: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise MasterKeyError(f"master key file {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise MasterKeyError(
                f"master key file {path} is owned by uid {st.st_uid}, not by this user "
                f"(uid {os.geteuid()})"
            )
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise MasterKeyError(
                f"master key file {path} has mode {stat.S_IMODE(st.st_mode):04o}: it must be "
                "0600 (readable by its owner only)"
            )
        raw_text = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw_text) > MAX_KEY_FILE_BYTES:
        raise MasterKeyError(f"master key file {path} is malformed")
    text = raw_text.decode(errors="replace").strip()
    if not text.startswith(KEY_FILE_HEADER):
        raise MasterKeyError(f"master key file {path} is malformed")
    try:
        raw = base64.b64decode(text[len(KEY_FILE_HEADER) :], validate=True)
    except ValueError as exc:
        raise MasterKeyError(f"master key file {path} is malformed") from exc
    if len(raw) != KEY_BYTES:
        raise MasterKeyError(f"master key file {path} is malformed")
    return MasterKey(raw)
