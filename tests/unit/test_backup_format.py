"""The backup file format (rotator.crypto.snapshot): every byte is covered by the signature,
the body is encrypted, and only the master key it was made under opens it."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from rotator.config import Settings
from rotator.crypto import MasterKey, write_key_file
from rotator.crypto import snapshot as sealed
from rotator.errors import InvalidInput
from rotator.kernel import utcnow
from rotator.service.backup import parse_split, seal_snapshot, verify_backup
from rotator.store.snapshot import Snapshot, TableDump

BODY = b'{"credentials": "sealed rows"}' * 20


def test_a_backup_opens_under_its_master_key_and_its_body_is_not_in_clear() -> None:
    key = MasterKey.generate()
    data = sealed.seal(key, {"revision": "0016"}, BODY)
    assert b"sealed rows" not in data
    header, body = sealed.open_(key, data, "f")
    assert body == BODY
    assert header["revision"] == "0016"
    assert header["master_key_id"] == key.id
    assert header["signing_key_id"] == sealed.backup_signing_key(key).id


def test_changing_any_byte_of_header_body_or_signature_is_refused() -> None:
    key = MasterKey.generate()
    data = sealed.seal(key, {"revision": "0016"}, BODY)
    for i in range(len(data)):
        changed = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]
        with pytest.raises(InvalidInput):
            sealed.open_(key, changed, "f")


def test_another_master_key_truncation_and_trailing_bytes_are_refused() -> None:
    key = MasterKey.generate()
    data = sealed.seal(key, {}, BODY)
    with pytest.raises(InvalidInput, match="made under master key"):
        sealed.open_(MasterKey.generate(), data, "f")
    for cut in (0, 5, len(sealed.MAGIC) + 2, len(data) // 2, len(data) - 1):
        with pytest.raises(InvalidInput, match=r"truncated|not a rotator backup"):
            sealed.open_(key, data[:cut], "f")
    with pytest.raises(InvalidInput, match="after its signature"):
        sealed.open_(key, data + b"x", "f")


def test_each_file_uses_its_own_salt_and_nonce() -> None:
    key = MasterKey.generate()
    a, b = sealed.seal(key, {}, BODY), sealed.seal(key, {}, BODY)
    assert sealed.read_header(a, "a")["salt"] != sealed.read_header(b, "b")["salt"]
    assert a[-200:] != b[-200:]


@pytest.mark.parametrize("text", ["3of5", "1-of-5", "6-of-5", "3-of-17", "x-of-5", "", "3-of-"])
def test_split_outside_2_to_16_shares_is_bad_input(text: str) -> None:
    with pytest.raises(InvalidInput, match="--split"):
        parse_split(text)


def test_split_parses_threshold_of_shares() -> None:
    assert parse_split("3-of-5") == (3, 5)
    assert parse_split(" 2-OF-2 ") == (2, 2)


NESTED = b"[" * 100_000 + b"]" * 100_000  # deeper than any JSON parser recurses


def test_a_header_or_body_of_deeply_nested_json_is_refused_as_bad_input(tmp_path: Path) -> None:
    forged = sealed.MAGIC + struct.pack(">I", len(NESTED)) + NESTED + struct.pack(">Q", 0)
    with pytest.raises(InvalidInput, match="header that is not JSON"):
        sealed.read_header(forged + bytes(64), "f")
    # A body nested as deep (it would take the master key to sign one).
    settings = Settings(home=tmp_path, db_url=f"sqlite:///{tmp_path}/r.db")
    key = MasterKey.generate()
    write_key_file(settings.key_file, key)
    path = tmp_path / "nested.bak"
    path.write_bytes(sealed.seal(key, {"revision": "0016"}, zlib.compress(NESTED)))
    with pytest.raises(InvalidInput, match="body that is not a snapshot"):
        verify_backup(settings, path)


def test_the_plain_header_names_no_table_row_count_or_digest_and_the_body_holds_them(
    tmp_path: Path,
) -> None:
    key = MasterKey.generate()
    snap = Snapshot(
        "0016",
        {
            "meta": TableDump(["key", "value"], ["plain", "json"], [["master", {"id": key.id}]]),
            "principals": TableDump(["name"], ["plain"], [["root"], ["ops"]]),
        },
    )
    info, data = seal_snapshot(key, snap, now=utcnow(), backend="sqlite", kdf=None)
    header = sealed.read_header(data, "f")
    assert set(header) == {
        "format", "master_key_id", "signing_key_id", "salt", "kdf", "created_at",
        "rotator_version",
    }  # fmt: skip
    assert b"principals" not in data
    assert b"0016" not in data
    settings = Settings(home=tmp_path, db_url=f"sqlite:///{tmp_path}/r.db")
    write_key_file(settings.key_file, key)
    path = tmp_path / "f.bak"
    path.write_bytes(data)
    opened, restored, _, _, _ = verify_backup(settings, path)
    assert restored.tables == snap.tables
    assert opened["revision"] == info["revision"] == "0016"
    assert opened["audit_head_seq"] == 0
