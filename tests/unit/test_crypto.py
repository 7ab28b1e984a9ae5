"""Envelope crypto: round trips, tampering, wrong keys, key files, passphrases."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rotator import crypto
from rotator.crypto import DataKey, KdfParams, MasterKey
from rotator.domain.secret import Secret
from rotator.errors import DecryptionError, MasterKeyError

ids = st.integers(min_value=1, max_value=2**31)


def data_key(tenant_id: int = 1, key_id: int = 1) -> DataKey:
    return DataKey(key_id, tenant_id, crypto.new_data_key_material())


@given(value=st.binary(min_size=0, max_size=4096), tenant=ids, cred=ids, version=ids)
def test_seal_open_round_trip(value: bytes, tenant: int, cred: int, version: int) -> None:
    dk = data_key(tenant)
    blob = crypto.seal(dk, Secret(value), cred, version)
    assert crypto.open_(dk, blob, cred, version).reveal() == value


@given(value=st.binary(min_size=1, max_size=256), data=st.data())
def test_any_flipped_bit_fails_to_open(value: bytes, data: st.DataObject) -> None:
    dk = data_key()
    blob = bytearray(crypto.seal(dk, Secret(value), 7, 1))
    bit = data.draw(st.integers(min_value=0, max_value=len(blob) * 8 - 1))
    blob[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(DecryptionError):
        crypto.open_(dk, bytes(blob), 7, 1)


@given(value=st.binary(max_size=64), cred=ids, version=ids)
def test_ciphertext_moved_to_another_place_fails(value: bytes, cred: int, version: int) -> None:
    dk = data_key(tenant_id=3)
    blob = crypto.seal(dk, Secret(value), cred, version)
    with pytest.raises(DecryptionError):
        crypto.open_(dk, blob, cred + 1, version)
    with pytest.raises(DecryptionError):
        crypto.open_(dk, blob, cred, version + 1)
    other_tenant = DataKey(dk.id, 4, dk._key)
    with pytest.raises(DecryptionError):
        crypto.open_(other_tenant, blob, cred, version)


def test_two_seals_of_one_value_differ() -> None:
    dk = data_key()
    assert crypto.seal(dk, Secret("x"), 1, 1) != crypto.seal(dk, Secret("x"), 1, 1)


@pytest.mark.parametrize("blob", [b"", b"\x01", b"\x02" + bytes(40), bytes(28)])
def test_truncated_or_foreign_blobs_fail(blob: bytes) -> None:
    with pytest.raises(DecryptionError):
        crypto.open_(data_key(), blob, 1, 1)


def test_wrong_data_key_fails() -> None:
    blob = crypto.seal(data_key(), Secret("v"), 1, 1)
    with pytest.raises(DecryptionError):
        crypto.open_(data_key(), blob, 1, 1)


@settings(max_examples=25)
@given(tenant=ids, key_id=ids)
def test_wrap_unwrap_and_rewrap(tenant: int, key_id: int) -> None:
    old, new = MasterKey.generate(), MasterKey.generate()
    material = crypto.new_data_key_material()
    wrapped = crypto.wrap(old, material, tenant, key_id)
    assert crypto.unwrap(old, wrapped, tenant, key_id)._key == material
    rewrapped = crypto.rewrap(old, new, wrapped, tenant, key_id)
    assert crypto.unwrap(new, rewrapped, tenant, key_id)._key == material
    with pytest.raises(DecryptionError):
        crypto.unwrap(old, rewrapped, tenant, key_id)
    with pytest.raises(DecryptionError):
        crypto.unwrap(new, rewrapped, tenant + 1, key_id)


def test_wrong_passphrase_does_not_unwrap() -> None:
    params = KdfParams.fresh()
    right = crypto.derive_master_key("correct horse", params)
    wrong = crypto.derive_master_key("battery staple", params)
    wrapped = crypto.wrap(right, crypto.new_data_key_material(), 1, 1)
    assert right.id != wrong.id
    with pytest.raises(DecryptionError):
        crypto.unwrap(wrong, wrapped, 1, 1)


def test_passphrase_derivation_is_deterministic_and_salted() -> None:
    params = KdfParams.fresh()
    assert crypto.derive_master_key("pw", params).id == crypto.derive_master_key("pw", params).id
    assert (
        crypto.derive_master_key("pw", params).id
        != crypto.derive_master_key("pw", KdfParams.fresh()).id
    )


def test_weak_scrypt_parameters_are_refused() -> None:
    weak = KdfParams(salt=os.urandom(16), n=2**10).to_json()
    with pytest.raises(MasterKeyError, match="below"):
        KdfParams.from_json(weak)


def test_key_file_round_trip_and_mode(tmp_path: Path) -> None:
    key = MasterKey.generate()
    path = tmp_path / "k" / "master.key"
    crypto.write_key_file(path, key)
    assert path.stat().st_mode & 0o777 == 0o600
    assert crypto.read_key_file(path).id == key.id
    with pytest.raises(FileExistsError):
        crypto.write_key_file(path, MasterKey.generate())


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    crypto.write_key_file(path, MasterKey.generate())
    path.chmod(0o644)
    with pytest.raises(MasterKeyError, match="0644"):
        crypto.read_key_file(path)


@pytest.mark.parametrize(
    "content",
    [
        "",
        "rotator-master-key-v1:",
        "rotator-master-key-v1:!!!",
        "rotator-master-key-v1:AAAA",
        "something else",
    ],
)
def test_malformed_key_files_are_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "master.key"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(MasterKeyError, match="malformed"):
        crypto.read_key_file(path)


def test_missing_key_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError, match="missing"):
        crypto.read_key_file(tmp_path / "nope.key")


def test_key_reprs_do_not_show_material() -> None:
    key = MasterKey.generate()
    dk = data_key()
    assert key.material.hex() not in repr(key)
    assert dk._key.hex() not in repr(dk)
    assert "DataKey(id=1" in repr(dk)
