"""Values at rest: tampered, swapped or mis-keyed ciphertexts never open; master-key rotation.

Every test runs on SQLite and on PostgreSQL (the ``db_url`` fixture).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update

from rotator import crypto
from rotator.config import Settings
from rotator.domain.secret import Secret
from rotator.errors import DecryptionError, IntegrityError, MasterKeyError
from rotator.service import LOCAL_PRINCIPAL, BlockingService, ValueInput
from rotator.store.schema import credentials, data_keys, versions


def add(svc: BlockingService, name: str, value: str, tenant: str = "default") -> None:
    if tenant not in {t.name for t in svc.list_tenants()}:  # tenants are never made on use
        svc.add_tenant(tenant)
    svc.add_credential(
        name,
        "local",
        value=ValueInput(value=Secret(value)),
        principal=LOCAL_PRINCIPAL.with_tenant(tenant),
    )


def ciphertext_of(raw_db: Engine, name: str) -> tuple[int, bytes]:
    with raw_db.connect() as c:
        row = c.execute(
            select(versions.c.id, versions.c.ciphertext)
            .join(credentials, credentials.c.id == versions.c.credential_id)
            .where(credentials.c.name == name)
        ).one()
    return row.id, bytes(row.ciphertext)


def set_ciphertext(raw_db: Engine, version_row_id: int, blob: bytes) -> None:
    with raw_db.begin() as c:
        c.execute(update(versions).where(versions.c.id == version_row_id).values(ciphertext=blob))


def test_values_round_trip_through_the_store(svc: BlockingService) -> None:
    add(svc, "a", "value-a")
    add(svc, "b", "välue 'b' \"quoted\"")
    assert svc.get_value("a").reveal_text() == "value-a"
    assert svc.get_value("b").reveal_text() == "välue 'b' \"quoted\""


def test_one_flipped_bit_in_a_stored_ciphertext_fails_to_open(
    svc: BlockingService, raw_db: Engine
) -> None:
    add(svc, "a", "value-a")
    row_id, blob = ciphertext_of(raw_db, "a")
    flipped = bytearray(blob)
    flipped[len(flipped) // 2] ^= 0x04
    set_ciphertext(raw_db, row_id, bytes(flipped))
    with pytest.raises(DecryptionError):
        svc.get_value("a")


def test_two_credentials_ciphertexts_swapped_fail_to_open(
    svc: BlockingService, raw_db: Engine
) -> None:
    add(svc, "a", "value-a")
    add(svc, "b", "value-b")
    id_a, blob_a = ciphertext_of(raw_db, "a")
    id_b, blob_b = ciphertext_of(raw_db, "b")
    set_ciphertext(raw_db, id_a, blob_b)
    set_ciphertext(raw_db, id_b, blob_a)
    for name in ("a", "b"):
        with pytest.raises(DecryptionError):
            svc.get_value(name)


def test_ciphertext_copied_to_another_tenant_fails_to_open(
    svc: BlockingService, raw_db: Engine
) -> None:
    add(svc, "shared", "tenant-one", tenant="one")
    add(svc, "shared", "tenant-two", tenant="two")
    with raw_db.connect() as c:
        rows = c.execute(
            select(versions.c.id, versions.c.ciphertext, versions.c.data_key_id).order_by(
                versions.c.id
            )
        ).all()
    # Move tenant one's ciphertext and data-key reference into tenant two's row.
    with raw_db.begin() as c:
        c.execute(
            update(versions)
            .where(versions.c.id == rows[1].id)
            .values(ciphertext=rows[0].ciphertext, data_key_id=rows[0].data_key_id)
        )
    with pytest.raises(IntegrityError, match="another tenant"):
        svc.get_value("shared", principal=LOCAL_PRINCIPAL.with_tenant("two"))
    assert (
        svc.get_value("shared", principal=LOCAL_PRINCIPAL.with_tenant("one")).reveal_text()
        == "tenant-one"
    )


def test_wrong_key_file_does_not_open_the_store(svc: BlockingService, settings: Settings) -> None:
    add(svc, "a", "value-a")
    svc.close()
    settings.key_file.unlink()
    crypto.write_key_file(settings.key_file, crypto.MasterKey.generate())
    with pytest.raises(DecryptionError, match="does not open this store"):
        BlockingService.open(settings)


def test_wrong_passphrase_does_not_open_the_store(settings: Settings) -> None:
    right = dataclasses.replace(settings, passphrase=Secret("correct horse battery"))
    svc, _ = BlockingService.init(right)
    add(svc, "a", "value-a")
    svc.close()
    with pytest.raises(DecryptionError, match="ROTATOR_PASSPHRASE"):
        BlockingService.open(dataclasses.replace(settings, passphrase=Secret("wrong horse")))
    with pytest.raises(MasterKeyError, match="ROTATOR_PASSPHRASE"):
        BlockingService.open(settings)
    again = BlockingService.open(right)
    assert again.get_value("a").reveal_text() == "value-a"
    again.close()
    assert not settings.key_file.exists()


def test_init_is_idempotent(svc: BlockingService, settings: Settings) -> None:
    add(svc, "a", "value-a")
    again, created = BlockingService.init(settings)
    assert not created
    assert again.get_value("a").reveal_text() == "value-a"
    again.close()


def _all_values(svc: BlockingService, tenants: list[str]) -> dict[tuple[str, str], str]:
    out = {}
    for t in tenants:
        for c in svc.list_credentials(principal=LOCAL_PRINCIPAL.with_tenant(t)):
            out[(t, c.name)] = svc.get_value(
                c.name, principal=LOCAL_PRINCIPAL.with_tenant(t)
            ).reveal_text()
    return out


def _assert_old_key_opens_nothing(raw_db: Engine, old: crypto.MasterKey) -> None:
    with raw_db.connect() as c:
        rows = c.execute(select(data_keys)).all()
    assert rows
    for r in rows:
        with pytest.raises(DecryptionError):
            crypto.unwrap(old, bytes(r.wrapped), r.tenant_id, r.id)


TENANTS = ["default", "t1", "t2", "t3"]


def _fill(svc: BlockingService) -> dict[tuple[str, str], str]:
    for i, t in enumerate(TENANTS):
        for j in range(3):
            add(svc, f"cred-{j}", f"value-{i}-{j}", tenant=t)
    return _all_values(svc, TENANTS)


def test_rotate_master_rewraps_data_keys_and_retires_old_key(
    svc: BlockingService, settings: Settings, raw_db: Engine
) -> None:
    before = _fill(svc)
    old = crypto.read_key_file(settings.key_file)
    with raw_db.connect() as c:
        ciphertexts = (
            c.execute(select(versions.c.ciphertext).order_by(versions.c.id)).scalars().all()
        )
    _, new_id, n = svc.rotate_master_key()
    assert n == len(TENANTS)
    assert crypto.read_key_file(settings.key_file).id == new_id != old.id
    assert not settings.next_key_file.exists()
    reopened = BlockingService.open(settings)
    assert _all_values(reopened, TENANTS) == before
    reopened.close()
    with raw_db.connect() as c:
        after = c.execute(select(versions.c.ciphertext).order_by(versions.c.id)).scalars().all()
    assert after == ciphertexts, "versions must not be re-encrypted"
    _assert_old_key_opens_nothing(raw_db, old)


class Interrupted(Exception):
    pass


def test_rotate_master_interrupted_then_resumed(
    svc: BlockingService, settings: Settings, raw_db: Engine
) -> None:
    before = _fill(svc)
    old = crypto.read_key_file(settings.key_file)

    def stop_after_two(done: int, total: int) -> None:
        if done == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        svc.rotate_master_key(progress=stop_after_two)
    assert settings.next_key_file.exists()
    # Half re-wrapped: every value still opens (the ring holds both keys) ...
    mid = BlockingService.open(settings)
    assert _all_values(mid, TENANTS) == before
    # ... and new tenants made in between get a data key under the new key.
    add(mid, "late", "late-value", tenant="late")
    mid.rotate_master_key()
    mid.close()
    assert not settings.next_key_file.exists()
    done = BlockingService.open(settings)
    assert _all_values(done, [*TENANTS, "late"]) == {**before, ("late", "late"): "late-value"}
    done.close()
    _assert_old_key_opens_nothing(raw_db, old)


def test_rotate_master_stopped_before_key_file_moved(
    svc: BlockingService, settings: Settings, raw_db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _fill(svc)
    old = crypto.read_key_file(settings.key_file)
    from rotator.kernel import keyring

    def crash(src: Path, dst: Path) -> None:
        raise Interrupted

    monkeypatch.setattr(keyring.crypto, "replace_key_file", crash)
    with pytest.raises(Interrupted):
        svc.rotate_master_key()
    monkeypatch.undo()
    assert settings.next_key_file.exists()
    # The store already names the new key; opening finishes the file move.
    reopened = BlockingService.open(settings)
    assert not settings.next_key_file.exists()
    assert _all_values(reopened, TENANTS) == before
    reopened.close()
    _assert_old_key_opens_nothing(raw_db, old)


def test_rotate_master_with_passphrases(settings: Settings, raw_db: Engine) -> None:
    first = dataclasses.replace(settings, passphrase=Secret("first passphrase"))
    svc, _ = BlockingService.init(first)
    before = _fill(svc)
    with pytest.raises(MasterKeyError, match="ROTATOR_NEW_PASSPHRASE"):
        svc.rotate_master_key()
    svc.close()
    moving = dataclasses.replace(first, new_passphrase=Secret("second passphrase"))
    svc = BlockingService.open(moving)

    def stop(done: int, total: int) -> None:
        if done == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        svc.rotate_master_key(progress=stop)
    svc.close()
    wrong_new = dataclasses.replace(first, new_passphrase=Secret("third"))
    with pytest.raises(DecryptionError, match="interrupted"):
        BlockingService.open(wrong_new).rotate_master_key()
    resumed = BlockingService.open(moving)
    resumed.rotate_master_key()
    resumed.close()
    second = dataclasses.replace(settings, passphrase=Secret("second passphrase"))
    done = BlockingService.open(second)
    assert _all_values(done, TENANTS) == before
    done.close()
    with pytest.raises(DecryptionError):
        BlockingService.open(first)
