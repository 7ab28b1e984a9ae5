"""The real `rotator` command refuses an unsafe key file or home, and checks stored scrypt
parameters, with exit 2 and one line naming the problem; a new store is durable and costly
to brute-force. Every store test runs on SQLite and PostgreSQL (``db_url``).
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from rotator.store import normalize_url
from rotator.store.schema import meta

CLI = Path(sys.executable).parent / "rotator"
TIMEOUT_S = 60
PASSPHRASE = "correct horse battery staple"
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="giving files to `nobody` needs root")


@dataclass(frozen=True)
class Store:
    home: Path
    db_url: str

    @property
    def key_file(self) -> Path:
        return self.home / "master.key"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
        return {**env, "ROTATOR_HOME": str(self.home), "ROTATOR_DB": self.db_url, **extra}

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CLI), *args],
            env=self.env(**extra),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )


def assert_bad_input(proc: subprocess.CompletedProcess[str], *named: str) -> None:
    described = f"exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
    assert proc.returncode == 2, described
    assert proc.stdout == "", described
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, described
    assert lines[0].startswith("rotator: error: "), described
    for text in named:
        assert text in lines[0], described


def nobody() -> int:
    return pwd.getpwnam("nobody").pw_uid


def stored_kdf(db_url: str) -> dict[str, object]:
    engine = sa.create_engine(normalize_url(db_url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            master = conn.execute(sa.select(meta.c.value).where(meta.c.key == "master")).scalar()
    finally:
        engine.dispose()
    assert isinstance(master["kdf"], dict)
    return master["kdf"]


def set_stored_kdf(db_url: str, **changes: object) -> None:
    engine = sa.create_engine(normalize_url(db_url), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            master = conn.execute(sa.select(meta.c.value).where(meta.c.key == "master")).scalar()
            master = {**master, "kdf": {**master["kdf"], **changes}}
            conn.execute(sa.update(meta).where(meta.c.key == "master").values(value=master))
    finally:
        engine.dispose()


@pytest.fixture
def store(tmp_path: Path, db_url: str) -> Store:
    s = Store(tmp_path / "home", db_url)
    proc = s.run("init")
    assert proc.returncode == 0, proc.stderr
    return s


# -- item 11: the key file and ROTATOR_HOME ------------------------------------------------


def test_key_file_that_is_a_symlink_exits_2_naming_it(store: Store) -> None:
    real = store.home.parent / "elsewhere.key"
    store.key_file.rename(real)
    store.key_file.symlink_to(real)
    assert_bad_input(store.run("credential", "list"), str(store.key_file), "symbolic link")


@ROOT_ONLY
def test_key_file_owned_by_another_user_exits_2_naming_it(store: Store) -> None:
    os.chown(store.key_file, nobody(), -1)
    assert_bad_input(store.run("credential", "list"), str(store.key_file), "owned by uid")


def test_group_readable_key_file_exits_2_naming_it(store: Store) -> None:
    store.key_file.chmod(0o640)
    assert_bad_input(store.run("credential", "list"), str(store.key_file), "0640")


def test_world_writable_home_of_ours_is_tightened_to_0700(store: Store) -> None:
    store.home.chmod(0o777)
    proc = store.run("credential", "list")
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(store.home.stat().st_mode) == 0o700


@ROOT_ONLY
def test_world_writable_home_of_another_user_exits_2_and_is_left_alone(store: Store) -> None:
    os.chown(store.home, nobody(), -1)
    store.home.chmod(0o777)
    assert_bad_input(store.run("credential", "list"), "ROTATOR_HOME", str(store.home), "0777")
    assert stat.S_IMODE(store.home.stat().st_mode) == 0o777


@ROOT_ONLY
def test_world_writable_home_holding_the_database_is_refused_in_passphrase_mode_too(
    tmp_path: Path,
) -> None:
    """No key file then, but ROTATOR_HOME holds the SQLite store (which holds the salt)."""
    s = Store(tmp_path / "home", f"sqlite:///{tmp_path / 'home' / 'rotator.db'}")
    assert s.run("init", ROTATOR_PASSPHRASE=PASSPHRASE, ROTATOR_SCRYPT_N="32768").returncode == 0
    os.chown(s.home, nobody(), -1)
    s.home.chmod(0o777)
    proc = s.run("credential", "list", ROTATOR_PASSPHRASE=PASSPHRASE)
    assert_bad_input(proc, "ROTATOR_HOME", "0777")


# -- item 7: scrypt cost -------------------------------------------------------------------


def test_new_passphrase_store_uses_scrypt_n_of_at_least_2_17(tmp_path: Path, db_url: str) -> None:
    s = Store(tmp_path / "home", db_url)
    proc = s.run("init", ROTATOR_PASSPHRASE=PASSPHRASE)
    assert proc.returncode == 0, proc.stderr
    kdf = stored_kdf(db_url)
    assert isinstance(kdf["n"], int)
    assert kdf["n"] >= 2**17
    assert (kdf["r"], kdf["p"]) == (8, 1)
    assert s.run("credential", "list", ROTATOR_PASSPHRASE=PASSPHRASE).returncode == 0


def test_rotator_scrypt_n_sets_the_cost_of_a_new_store(tmp_path: Path, db_url: str) -> None:
    s = Store(tmp_path / "home", db_url)
    proc = s.run("init", ROTATOR_PASSPHRASE=PASSPHRASE, ROTATOR_SCRYPT_N="65536")
    assert proc.returncode == 0, proc.stderr
    assert stored_kdf(db_url)["n"] == 65536


@pytest.mark.parametrize("value", ["1000", "2048", "2097152", "lots", "1e9", "9" * 30])
def test_bad_rotator_scrypt_n_exits_2_and_makes_no_store(
    tmp_path: Path, db_url: str, value: str
) -> None:
    s = Store(tmp_path / "home", db_url)
    proc = s.run("init", ROTATOR_PASSPHRASE=PASSPHRASE, ROTATOR_SCRYPT_N=value)
    assert_bad_input(proc, "ROTATOR_SCRYPT_N", "power of two")
    assert not s.home.exists()


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        pytest.param({"n": 2**40}, "n=1099511627776", id="n-2^40"),
        pytest.param({"n": 3}, "n=3", id="n-3"),
        pytest.param({"n": "131072"}, "n is missing or not an integer", id="n-string"),
        pytest.param({"r": 0}, "r=0", id="r-0"),
        pytest.param({"p": 10**6}, "p=1000000", id="p-huge"),
        pytest.param({"salt": "AAA="}, "salt is 2 bytes", id="salt-2-bytes"),
        pytest.param({"alg": "md5"}, "alg", id="alg"),
    ],
)
def test_hostile_stored_scrypt_parameters_exit_2_naming_them(
    tmp_path: Path, db_url: str, changes: dict[str, object], named: str
) -> None:
    s = Store(tmp_path / "home", db_url)
    assert s.run("init", ROTATOR_PASSPHRASE=PASSPHRASE, ROTATOR_SCRYPT_N="32768").returncode == 0
    set_stored_kdf(db_url, **changes)
    proc = s.run("credential", "list", ROTATOR_PASSPHRASE=PASSPHRASE)
    assert_bad_input(proc, "stored scrypt parameter", named)
    assert PASSPHRASE not in proc.stderr


# -- item 3: commits are durable before any target call ------------------------------------


def test_new_sqlite_store_commits_with_synchronous_full(tmp_path: Path) -> None:
    """PRAGMA synchronous is per connection: every connection rotator opens must say FULL (2),
    so a committed intent is on disk before the engine calls the target."""
    from rotator.store import Database

    s = Store(tmp_path / "home", f"sqlite:///{tmp_path / 'home' / 'rotator.db'}")
    assert s.run("init").returncode == 0
    db = Database(s.db_url)
    try:
        with db.engine.connect() as first, db.engine.connect() as second:
            for conn in (first, second):
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        db.dispose()
