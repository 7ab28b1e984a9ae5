"""Settings from the environment (the public contract's variables)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rotator.domain.secret import Secret


@dataclass(frozen=True, slots=True)
class Settings:
    """Where rotator keeps its data and how it finds its master key.

    ``ROTATOR_HOME`` (default ``~/.local/share/rotator``) holds ``rotator.db`` and
    ``master.key``; ``ROTATOR_DB`` overrides the database URL; ``ROTATOR_PASSPHRASE`` replaces
    the key file with a scrypt-derived key; ``ROTATOR_NEW_PASSPHRASE`` is the new passphrase
    for ``rotator keys rotate-master`` in passphrase mode.
    """

    home: Path
    db_url: str
    passphrase: Secret | None = None
    new_passphrase: Secret | None = None

    @property
    def key_file(self) -> Path:
        return self.home / "master.key"

    @property
    def next_key_file(self) -> Path:
        return self.home / "master.key.next"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home = Path(env.get("ROTATOR_HOME") or Path.home() / ".local/share/rotator").expanduser()
        db_url = env.get("ROTATOR_DB") or f"sqlite:///{home / 'rotator.db'}"
        pw = env.get("ROTATOR_PASSPHRASE")
        new_pw = env.get("ROTATOR_NEW_PASSPHRASE")
        return cls(
            home=home,
            db_url=db_url,
            passphrase=Secret(pw) if pw else None,
            new_passphrase=Secret(new_pw) if new_pw else None,
        )
