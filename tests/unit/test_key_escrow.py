"""Rebuilding the master key from SLIP-0039 shares (rotator.service.backup.import_shares):
any THRESHOLD distinct shares or more rebuild it; a damaged share is named, never skipped."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import shamir_mnemonic
from shamir_mnemonic.share import Share

from rotator.config import Settings
from rotator.crypto import MasterKey, read_key_file
from rotator.errors import InvalidInput
from rotator.service.backup import import_shares


def shares_of(key: MasterKey, threshold: int, count: int) -> list[str]:
    return shamir_mnemonic.generate_mnemonics(1, [(threshold, count)], key.material)[0]


def settings_at(tmp_path: Path, name: str) -> Settings:
    # ROTATOR_DB names no store (a file that does not exist): only the key file is written.
    return Settings(home=tmp_path / name, db_url=f"sqlite:///{tmp_path}/{name}.db")


def test_more_shares_than_the_threshold_rebuild_the_key_in_any_order_and_with_repeats(
    tmp_path: Path,
) -> None:
    key = MasterKey.generate()
    shares = shares_of(key, 3, 5)
    cases = {
        "four": shares[1:],
        "five": shares[::-1],
        "repeats": [shares[0], shares[0], shares[3], shares[4]],
    }
    for name, given in cases.items():
        settings = settings_at(tmp_path, name)
        assert import_shares(settings, given) == (key.id, True), name
        assert read_key_file(settings.key_file).id == key.id


def test_a_damaged_share_is_refused_by_its_place_even_when_enough_good_ones_remain(
    tmp_path: Path,
) -> None:
    key = MasterKey.generate()
    shares = shares_of(key, 3, 5)
    words = shares[3].split()
    words[4] = "academic" if words[4] != "academic" else "acid"
    settings = settings_at(tmp_path, "damaged")
    with pytest.raises(InvalidInput, match="share 4 is not a valid share") as err:
        import_shares(settings, [*shares[:3], " ".join(words), shares[4]])
    assert not any(w in str(err.value) for w in words if len(w) > 3)
    # Two different shares claiming the same member: one was changed (past its checksum).
    first = Share.from_mnemonic(shares[0])
    forged = dataclasses.replace(first, value=bytes(b ^ 1 for b in first.value)).mnemonic()
    with pytest.raises(InvalidInput, match="shares 1 and 4 are the same member"):
        import_shares(settings, [*shares[:3], forged])
    assert not settings.key_file.exists()
