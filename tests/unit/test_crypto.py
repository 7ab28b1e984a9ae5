"""Envelope crypto: round trips, tampering, wrong keys, key files, passphrases."""

from __future__ import annotations

import base64
import os
import pwd
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rotator import crypto
from rotator.crypto import DataKey, KdfParams, MasterKey
from rotator.domain.secret import Secret
from rotator.errors import ConfigError, DecryptionError, MasterKeyError

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


# -- scrypt parameters: new ones cost at least 2^17; stored ones are checked before use ------

GOOD_SALT = base64.b64encode(bytes(16)).decode()


def stored(**changes: object) -> dict[str, object]:
    params: dict[str, object] = {"alg": "scrypt", "salt": GOOD_SALT, "n": 2**17, "r": 8, "p": 1}
    params.update(changes)
    return {k: v for k, v in params.items() if v is not MISSING}


MISSING = object()


def test_new_scrypt_parameters_cost_at_least_2_17_and_round_trip() -> None:
    params = KdfParams.fresh()
    assert params.n >= 2**17
    assert (params.r, params.p) == (8, 1)
    assert len(params.salt) >= 16
    assert KdfParams.from_json(params.to_json()) == params


def test_stored_scrypt_parameters_of_older_stores_still_open() -> None:
    assert KdfParams.from_json(stored(n=2**15)).n == 2**15


@pytest.mark.parametrize(
    ("params", "named"),
    [
        pytest.param(stored(n=2**40), "n=1099511627776", id="n-2^40"),
        pytest.param(stored(n=3), "n=3", id="n-3"),
        pytest.param(stored(n=2**17 + 1), "n=131073", id="n-not-power-of-two"),
        pytest.param(stored(n=2**14), "below", id="n-below-2^15"),
        pytest.param(stored(n=0), "below", id="n-0"),
        pytest.param(stored(n=-(2**17)), "below", id="n-negative"),
        pytest.param(stored(n="131072"), "n is missing or not an integer", id="n-string"),
        pytest.param(stored(n=131072.0), "n is missing or not an integer", id="n-float"),
        pytest.param(stored(n=True), "n is missing or not an integer", id="n-bool"),
        pytest.param(stored(n=None), "n is missing or not an integer", id="n-null"),
        pytest.param(stored(n=MISSING), "n is missing or not an integer", id="n-missing"),
        pytest.param(stored(r=0), "r=0", id="r-0"),
        pytest.param(stored(r=10**6), "r=1000000", id="r-huge"),
        pytest.param(stored(r="8"), "r is missing", id="r-string"),
        pytest.param(stored(p=0), "p=0", id="p-0"),
        pytest.param(stored(p=10**6), "p=1000000", id="p-huge"),
        pytest.param(stored(p=MISSING), "p is missing", id="p-missing"),
        pytest.param(stored(n=2**20, r=32), "memory", id="memory-4GiB"),
        pytest.param(stored(salt=base64.b64encode(b"xy").decode()), "2 bytes", id="salt-2-bytes"),
        pytest.param(stored(salt=base64.b64encode(bytes(65)).decode()), "65 bytes", id="salt-65"),
        pytest.param(stored(salt="A" * 10**6), "salt", id="salt-a-megabyte"),
        pytest.param(stored(salt="not base64!"), "base64", id="salt-not-base64"),
        pytest.param(stored(salt=12345), "salt", id="salt-int"),
        pytest.param(stored(salt=MISSING), "salt", id="salt-missing"),
        pytest.param(stored(alg="argon2id"), "alg", id="alg-other"),
        pytest.param(stored(alg=MISSING), "alg", id="alg-missing"),
        pytest.param(["scrypt", 2**17], "JSON object", id="a-list"),
        pytest.param("scrypt", "JSON object", id="a-string"),
    ],
)
def test_hostile_stored_scrypt_parameters_are_refused_in_one_line(
    params: object, named: str
) -> None:
    with pytest.raises(MasterKeyError) as info:
        KdfParams.from_json(params)
    message = str(info.value)
    assert named in message
    assert "\n" not in message
    assert len(message) < 200


def test_new_scrypt_parameters_outside_the_range_are_refused() -> None:
    for n in (2**14, 2**21, 3 * 2**15):
        with pytest.raises(MasterKeyError):
            KdfParams.fresh(n)


# -- key files: only a regular file of ours that no one else can read; a home only we write --


def test_key_file_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere.key"
    crypto.write_key_file(real, MasterKey.generate())
    link = tmp_path / "master.key"
    link.symlink_to(real)
    with pytest.raises(MasterKeyError, match="symbolic link"):
        crypto.read_key_file(link)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_key_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    crypto.write_key_file(path, MasterKey.generate())
    os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)
    with pytest.raises(MasterKeyError, match="owned by uid"):
        crypto.read_key_file(path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o660])
def test_key_file_readable_or_writable_by_group_or_others_is_refused(
    tmp_path: Path, mode: int
) -> None:
    path = tmp_path / "master.key"
    crypto.write_key_file(path, MasterKey.generate())
    path.chmod(mode)
    with pytest.raises(MasterKeyError, match=f"{mode:04o}"):
        crypto.read_key_file(path)


def test_key_file_that_is_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    os.mkfifo(path, 0o600)
    with pytest.raises(MasterKeyError, match="not a regular file"):
        crypto.read_key_file(path)


def test_home_writable_by_others_and_ours_is_tightened_to_0700(tmp_path: Path) -> None:
    home = tmp_path / "home"
    crypto.write_key_file(home / "master.key", MasterKey.generate())
    home.chmod(0o777)
    crypto.read_key_file(home / "master.key")
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_home_writable_by_others_and_not_ours_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    crypto.write_key_file(home / "master.key", MasterKey.generate())
    os.chown(home, pwd.getpwnam("nobody").pw_uid, -1)
    home.chmod(0o777)
    with pytest.raises(ConfigError, match=r"ROTATOR_HOME .* 0777"):
        crypto.read_key_file(home / "master.key")
    assert stat.S_IMODE(home.stat().st_mode) == 0o777, "not ours: must not be changed"


def test_sticky_shared_home_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "shared"
    home.mkdir()
    home.chmod(0o1777)
    with pytest.raises(ConfigError, match="ROTATOR_HOME"):
        crypto.write_key_file(home / "master.key", MasterKey.generate())
    assert not (home / "master.key").exists()


def test_key_file_write_interrupted_leaves_no_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "master.key"

    def fail(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="I/O error"):
        crypto.write_key_file(path, MasterKey.generate())
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == [], "a half-written key file or temporary was left"
