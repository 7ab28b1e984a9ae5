"""Settings from the environment (the public contract's variables)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from rotator.domain.secret import Secret
from rotator.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Settings:
    """Where rotator keeps its data and how it finds its master key.

    ``ROTATOR_HOME`` (default ``~/.local/share/rotator``) holds ``rotator.db`` and
    ``master.key``; ``ROTATOR_DB`` overrides the database URL; ``ROTATOR_PASSPHRASE`` replaces
    the key file with a scrypt-derived key; ``ROTATOR_NEW_PASSPHRASE`` is the new passphrase
    for ``rotator keys rotate-master`` in passphrase mode. ``ROTATOR_SCRYPT_N`` (a power of two,
    2^15 to 2^20) sets the scrypt cost of passphrase parameters made from now on (by ``init``
    and ``keys rotate-master``); stored parameters keep their own.
    """

    home: Path
    db_url: str
    passphrase: Secret | None = None
    new_passphrase: Secret | None = None
    scrypt_n: int | None = None
    # ROTATOR_AUDIT_CHECKPOINT_S: how often a worker signs an audit checkpoint (when entries
    # were added since the last one).
    audit_checkpoint_s: float = 3600.0

    @property
    def key_file(self) -> Path:
        return self.home / "master.key"

    @property
    def next_key_file(self) -> Path:
        return self.home / "master.key.next"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the variables. Raises ConfigError (one line, never quoting a passphrase) for a
        ``ROTATOR_HOME`` that exists but is not a directory, or a passphrase that is not UTF-8
        text (Python hands undecodable environment bytes over as lone surrogates)."""
        env = os.environ if env is None else env
        home = Path(env.get("ROTATOR_HOME") or Path.home() / ".local/share/rotator").expanduser()
        if home.exists() and not home.is_dir():
            raise ConfigError(f"ROTATOR_HOME {str(home)!r} is not a directory")
        # Quoted: a '?', '#' or '%' in the home's path is part of the file name, not URL syntax.
        db_url = env.get("ROTATOR_DB") or f"sqlite:///{quote(str(home / 'rotator.db'))}"
        return cls(
            home=home,
            db_url=db_url,
            passphrase=_passphrase(env, "ROTATOR_PASSPHRASE"),
            new_passphrase=_passphrase(env, "ROTATOR_NEW_PASSPHRASE"),
            scrypt_n=_scrypt_n(env.get("ROTATOR_SCRYPT_N")),
            audit_checkpoint_s=_checkpoint_s(env.get("ROTATOR_AUDIT_CHECKPOINT_S")),
        )


def _passphrase(env: Mapping[str, str], name: str) -> Secret | None:
    text = env.get(name)
    if not text:
        return None
    try:
        return Secret(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ConfigError(f"{name} is not valid UTF-8 text") from None


def _scrypt_n(text: str | None) -> int | None:
    from rotator.crypto.keys import MAX_SCRYPT_N, MIN_SCRYPT_N

    if not text:
        return None
    low, high = MIN_SCRYPT_N.bit_length() - 1, MAX_SCRYPT_N.bit_length() - 1
    bad = ConfigError(f"ROTATOR_SCRYPT_N must be a power of two from 2^{low} to 2^{high}")
    try:
        n = int(text) if len(text) <= 20 else 0  # no int() of a million digits
    except ValueError:
        raise bad from None
    if not (MIN_SCRYPT_N <= n <= MAX_SCRYPT_N and n & (n - 1) == 0):
        raise bad
    return n


MAX_CHECKPOINT_S = 7 * 86400.0


def _checkpoint_s(text: str | None) -> float:
    if not text:
        return 3600.0
    bad = ConfigError(
        f"ROTATOR_AUDIT_CHECKPOINT_S must be a number of seconds from 1 to {MAX_CHECKPOINT_S:g}"
    )
    try:
        value = float(text) if len(text) <= 20 else 0.0
    except ValueError:
        raise bad from None
    if not 1.0 <= value <= MAX_CHECKPOINT_S:  # also refuses NaN
        raise bad
    return value
