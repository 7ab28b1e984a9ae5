"""No secret value leaves rotator except through ``rotator credential get``.

A full CLI session on SQLite and on PostgreSQL: values with unique markers (quotes, spaces, tabs,
unicode, a newline) are added through ``--value-stdin``, others are ``--generate``d (learnt only
through ``get``), values are replaced, the master key is rotated, commands fail on purpose. Then
no secret may appear, raw or encoded (hex, base64 at any alignment, JSON / repr / URL escapes),
in any stdout or stderr (the ``get`` stdouts aside), any file in ROTATOR_HOME other than the key
files, any column of any table (``versions.ciphertext`` aside) or, on SQLite, the raw database
file. ``ROTATOR_LOG_LEVEL=debug`` is set so that logging added later is covered too.

Most commands run through the CLI's entry point in this process (``Session.run``); ``init``,
``keys rotate-master`` and a refused value on stdin run as real ``rotator`` processes, so what
only a process prints (the interpreter, warnings, the file descriptors) is searched too.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool
from tests.support.fuzz import run_in_process

CLI = Path(sys.executable).parent / "rotator"
TIMEOUT_S = 60
KEY_FILE_HEADER = "rotator-master-key-v1:"  # rotator.crypto.keys.KEY_FILE_HEADER


def canary(tail: str = "") -> tuple[str, str]:
    """A unique marker and a value that contains it."""
    marker = f"leak-canary-{uuid.uuid4().hex}"
    return marker, marker + tail


# ------------------------------------------------------------------------------ encodings


def _b64_cores(data: bytes) -> set[bytes]:
    """Base64 (standard and URL-safe) of ``data`` wherever it sits in a longer byte stream.

    For each of the 3 alignments, keep only the characters that depend on ``data`` alone.
    """
    cores: set[bytes] = set()
    for k in range(3):
        first = -(-8 * k // 6)  # ceil: chars that mix in the k bytes before
        last = 8 * (k + len(data)) // 6  # floor: drop the char that mixes in what follows
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            core = encode(b"\0" * k + data)[first:last]
            if len(core) >= 16:
                cores.add(core)
    return cores


def encoded_forms(secret: bytes) -> dict[str, bytes]:
    """The secret as bytes a leak could take: raw, hex, base64, escaped in JSON/repr/URLs."""
    forms = {"raw": secret, "hex": secret.hex().encode(), "HEX": secret.hex().upper().encode()}
    for i, core in enumerate(sorted(_b64_cores(secret))):
        forms[f"base64#{i}"] = core
    try:
        text = secret.decode()
    except UnicodeDecodeError:
        return forms
    forms["json"] = json.dumps(text)[1:-1].encode()
    forms["json-utf8"] = json.dumps(text, ensure_ascii=False)[1:-1].encode()
    forms["repr"] = repr(text)[1:-1].encode()
    forms["ascii"] = ascii(text)[1:-1].encode()
    forms["url"] = urllib.parse.quote(text, safe="").encode()
    forms["url-plus"] = urllib.parse.quote_plus(text).encode()
    return forms


# ------------------------------------------------------------------------------ session


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    code: int
    out: bytes
    err: bytes

    def describe(self) -> str:
        return (
            f"$ rotator {shlex.join(self.args)}\nexit {self.code}\n"
            f"--- stderr ---\n{self.err.decode('utf-8', 'replace')}"
        )


@dataclass
class Session:
    """Runs the CLI and keeps everything it printed, except what ``get`` printed on stdout."""

    env: dict[str, str]
    printed: list[tuple[str, bytes]] = field(default_factory=list)
    secrets: dict[str, bytes] = field(default_factory=dict)

    def run(
        self,
        *args: str,
        stdin: bytes = b"",
        code: int = 0,
        env: Mapping[str, str] | None = None,
        process: bool = False,
    ) -> Run:
        """``process``: a real ``rotator`` process (what the interpreter itself prints at start
        or exit, warnings, anything written to the file descriptors). Otherwise through
        ``rotator.cli.main.main`` in this process with streams that encode as a process's
        (tests.support.fuzz.run_in_process; ~0.7 s of imports saved per command): the same
        code, the same logging (ROTATOR_LOG_LEVEL=debug) to the same stderr."""
        run_env = {**self.env, **(env or {})}
        if process:
            proc = subprocess.run(
                [str(CLI), *args],
                env=run_env,
                input=stdin,
                capture_output=True,
                timeout=TIMEOUT_S,
                check=False,
            )
            result = Run(tuple(args), proc.returncode, proc.stdout, proc.stderr)
        else:
            # Both streams hold only UTF-8 (stdout strict, stderr backslash-escaped), so
            # encoding the decoded text gives back the exact bytes written.
            here = run_in_process(args, run_env, stdin)
            result = Run(tuple(args), here.code, here.out.encode(), here.err.encode())
        where = f"rotator {shlex.join(args)}"
        self.printed.append((f"stderr of {where}", result.err))
        if args[:2] != ("credential", "get"):
            self.printed.append((f"stdout of {where}", result.out))
        assert b"Traceback" not in result.out + result.err, result.describe()
        assert result.code == code, result.describe()
        return result

    def fail(self, *args: str, stdin: bytes = b"", code: int = 2, process: bool = False) -> Run:
        """A command that must fail with ``code`` and a one-line error."""
        result = self.run(*args, stdin=stdin, code=code, process=process)
        assert result.out == b"", result.describe()
        assert result.err.startswith(b"rotator: error: "), result.describe()
        assert result.err.count(b"\n") == 1, result.describe()
        return result

    def add_value(self, name: str, value: str, *options: str) -> None:
        self.secrets[f"value of {name} v1"] = value.encode()
        # A trailing newline is stripped by --value-stdin; exercise both ways.
        stdin = value.encode() + (b"\n" if len(self.secrets) % 2 else b"")
        self.run("credential", "add", name, "--connector", "local", "--value-stdin", *options,
                 stdin=stdin)  # fmt: skip

    def get(self, name: str, stage: str = "CURRENT") -> bytes:
        """The value ``get`` prints: exactly the value and one newline."""
        result = self.run("credential", "get", name, "--stage", stage)
        assert result.err == b"", result.describe()
        assert result.out.endswith(b"\n"), result.describe()
        return result.out[:-1]


def _cell_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False).encode() + json.dumps(value).encode()
    return str(value).encode()


def dump_database(db_url: str) -> list[tuple[str, bytes]]:
    """Every column of every row of every table, except ``versions.ciphertext``."""
    engine = sa.create_engine(db_url, poolclass=NullPool)
    found: list[tuple[str, bytes]] = []
    try:
        md = sa.MetaData()
        md.reflect(engine)
        assert {"audit_log", "credentials", "versions", "data_keys", "meta"} <= set(md.tables)
        with engine.connect() as conn:
            for name, table in sorted(md.tables.items()):
                for i, row in enumerate(conn.execute(sa.select(table)).mappings()):
                    for column, value in row.items():
                        if (name, column) == ("versions", "ciphertext"):
                            continue
                        found.append((f"db {name}[{i}].{column}", _cell_bytes(value)))
    finally:
        engine.dispose()
    return found


def audit_rows(db_url: str) -> list[dict[str, Any]]:
    engine = sa.create_engine(db_url, poolclass=NullPool)
    try:
        table = sa.Table("audit_log", sa.MetaData(), autoload_with=engine)
        with engine.connect() as conn:
            return [
                dict(r) for r in conn.execute(sa.select(table).order_by(table.c.seq)).mappings()
            ]
    finally:
        engine.dispose()


def home_files(home: Path) -> list[tuple[str, bytes]]:
    """Files in ROTATOR_HOME other than the key files and a SQLite database kept there."""
    skip_prefixes = ("master.key", "rotator.db")
    return [
        (f"file {p.relative_to(home)}", p.read_bytes())
        for p in sorted(home.rglob("*"))
        if p.is_file() and not p.name.startswith(skip_prefixes)
    ]


def sqlite_files(db_url: str) -> list[tuple[str, bytes]]:
    """The raw SQLite database and its WAL: a plaintext value must never reach the disk."""
    url = sa.engine.make_url(db_url)
    if url.get_backend_name() != "sqlite" or not url.database:
        return []
    base = Path(url.database)
    paths = [base, base.with_name(base.name + "-wal")]
    return [(f"raw file {p.name}", p.read_bytes()) for p in paths if p.exists()]


def find_leaks(
    secrets: Mapping[str, bytes],
    haystacks: Sequence[tuple[str, bytes]],
    raw_only: Sequence[tuple[str, bytes]] = (),
) -> list[str]:
    """Where any form of any secret occurs. ``raw_only`` places are searched for raw bytes only."""
    leaks = []
    for label, secret in secrets.items():
        for form, needle in encoded_forms(secret).items():
            places = [*haystacks, *raw_only] if form == "raw" else haystacks
            for where, data in places:
                if needle in data:
                    leaks.append(f"{label} ({form}) in {where}")
    return leaks


def read_master_key(home: Path) -> bytes:
    text = (home / "master.key").read_text().strip()
    assert text.startswith(KEY_FILE_HEADER)
    return base64.b64decode(text[len(KEY_FILE_HEADER) :])


def session_env(home: Path, db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
    return {**env, "ROTATOR_HOME": str(home), "ROTATOR_DB": db_url, "ROTATOR_LOG_LEVEL": "debug"}


# ------------------------------------------------------------------------------ the tests


def test_no_secret_value_leaks_from_a_full_cli_session(db_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    s = Session(session_env(home, db_url))
    markers: dict[str, bytes] = {}

    s.run("init", process=True)
    master_keys = {"master key (init)": read_master_key(home)}

    given = {
        "app/plain": canary("-plain"),
        "app/quoted": canary(""" "double" 'single' `tick` $HOME \\back;semi"""),
        "app/spaced": canary("  two  spaces\tand a tab, trailing space "),
        "app/unicode": canary("-ünïcødé-密码-🔑-é"),
        "app/multiline": canary("\nsecond line of the value"),
    }
    for name, (marker, _value) in given.items():
        markers[f"marker of {name}"] = marker.encode()
    s.add_value("app/plain", given["app/plain"][1], "--tag", "env=prod", "--every", "30d")
    s.add_value("app/quoted", given["app/quoted"][1], "--cron", "0 3 * * 0", "--window", "2h")
    s.add_value("app/spaced", given["app/spaced"][1], "--grace", "1h", "--max-uses", "5")
    s.add_value("app/unicode", given["app/unicode"][1])
    s.add_value("app/multiline", given["app/multiline"][1])
    s.run("credential", "add", "gen/password", "--connector", "local", "--generate")
    s.run("credential", "add", "gen/token", "--connector", "local", "--generate", "--json",
          "--set", "generator=token", "--set", "length=40", "--tag", "team=core")  # fmt: skip

    s.run("credential", "list")
    s.run("credential", "list", "--json")
    s.run("credential", "show", "app/quoted")
    s.run("credential", "show", "gen/token", "--json")

    # get prints exactly the value; generated values are learnt here and become secrets too
    for name, (_marker, value) in given.items():
        assert s.get(name) == value.encode(), f"get {name} did not print the stored value"
    for name in ("gen/password", "gen/token"):
        generated = s.get(name)
        assert len(generated) >= 32
        s.secrets[f"value of {name} v1"] = generated
    assert len(s.secrets["value of gen/token v1"]) == 40

    # new values: the old ones become PREVIOUS
    marker, new_plain = canary(" (second value)")
    markers["marker of app/plain v2"] = marker.encode()
    s.secrets["value of app/plain v2"] = new_plain.encode()
    s.run("credential", "update", "app/plain", "--value-stdin", "--grace", "2h",
          stdin=new_plain.encode() + b"\n")  # fmt: skip
    s.run("credential", "update", "gen/password", "--generate", "--json")
    assert s.get("app/plain") == new_plain.encode()
    assert s.get("app/plain", "PREVIOUS") == given["app/plain"][1].encode()
    s.secrets["value of gen/password v2"] = s.get("gen/password")
    assert s.get("gen/password", "PREVIOUS") == s.secrets["value of gen/password v1"]
    assert s.secrets["value of gen/password v2"] != s.secrets["value of gen/password v1"]
    s.run("credential", "show", "app/plain")

    # master key rotation re-wraps data keys; values still open afterwards
    s.run("keys", "rotate-master", process=True)
    master_keys["master key (rotated)"] = read_master_key(home)
    assert master_keys["master key (rotated)"] != master_keys["master key (init)"]
    assert s.get("app/unicode") == given["app/unicode"][1].encode()

    # failures, several of them with a secret on stdin that must not be echoed back
    def rejected_value(label: str) -> bytes:
        marker, value = canary(f" rejected {label}")
        markers[f"marker of rejected {label}"] = marker.encode()
        s.secrets[f"rejected value ({label})"] = value.encode()
        return value.encode()

    # In a real process: a value on stdin that an error path echoed, however it got out.
    s.fail("credential", "add", "app/plain", "-c", "local", "--value-stdin",
           stdin=rejected_value("duplicate"), process=True)  # fmt: skip
    s.fail("credential", "add", "app/new", "-c", "local", "--set", "length=3", "--value-stdin",
           stdin=rejected_value("bad setting"))  # fmt: skip
    s.fail("credential", "update", "app/plain", "--every", "0s", "--value-stdin",
           stdin=rejected_value("bad policy"))  # fmt: skip
    s.fail("credential", "update", "no/such", "--value-stdin",
           stdin=rejected_value("missing credential"))  # fmt: skip
    s.fail("credential", "add", "app/huge", "-c", "local", "--value-stdin",
           stdin=rejected_value("too long") * 2000)  # fmt: skip
    s.fail("credential", "get", "app/spaced", "--stage", "PENDING")

    s.run("credential", "remove", "app/multiline")
    s.run("credential", "list", "--json")
    s.run("audit", "list")
    s.run("audit", "list", "--json")
    s.run("audit", "verify")
    export = s.run("audit", "export")

    # the session really happened: every get is audited, the chain holds, nothing was lost
    exported = [json.loads(line) for line in export.out.decode().splitlines()]
    actions = [e["action"] for e in exported]
    assert actions.count("value.read") == 12
    assert actions.count("credential.add") == 7
    assert actions.count("credential.update") == 2
    assert "keys.rotate_master.done" in actions
    rows = audit_rows(db_url)
    assert [r["seq"] for r in rows] == [e["seq"] for e in exported]

    # now look everywhere
    secrets = {**s.secrets, **markers, **master_keys}
    assert len(set(secrets.values())) == len(secrets), "two secrets are equal"
    places: list[tuple[str, bytes]] = [
        *s.printed,
        *home_files(home),
        *[(f"audit_log row {r['seq']}", repr(r).encode()) for r in rows],
        *dump_database(db_url),
    ]
    raw_only = sqlite_files(db_url)
    assert len(s.printed) > 60
    leaks = find_leaks(secrets, places, raw_only)
    assert leaks == [], "secret values leaked:\n" + "\n".join(leaks)


def test_no_passphrase_or_value_leaks_in_passphrase_mode(db_url: str, tmp_path: Path) -> None:
    """The passphrases (old and new) are secrets too: never printed, never stored."""
    home = tmp_path / "home"
    old_pw = canary(" old passphrase ü")[1]
    new_pw = canary(" new passphrase 🔑")[1]
    s = Session({**session_env(home, db_url), "ROTATOR_PASSPHRASE": old_pw})
    s.secrets = {"old passphrase": old_pw.encode(), "new passphrase": new_pw.encode()}

    s.run("init", process=True)
    s.add_value("app/one", canary(" in passphrase mode")[1])
    s.run("credential", "add", "gen/one", "--connector", "local", "--generate")
    s.secrets["value of gen/one v1"] = s.get("gen/one")
    s.run("keys", "rotate-master", env={"ROTATOR_NEW_PASSPHRASE": new_pw}, process=True)
    s.env["ROTATOR_PASSPHRASE"] = new_pw
    assert s.get("app/one") == s.secrets["value of app/one v1"]
    wrong = Session({**s.env, "ROTATOR_PASSPHRASE": old_pw})
    wrong.fail("credential", "get", "app/one")
    s.printed += wrong.printed
    s.run("credential", "show", "app/one", "--json")
    s.run("audit", "export")

    assert not (home / "master.key").exists()
    places = [*s.printed, *home_files(home), *dump_database(db_url)]
    leaks = find_leaks(s.secrets, places, sqlite_files(db_url))
    assert leaks == [], "secrets leaked:\n" + "\n".join(leaks)


def test_leak_finder_sees_every_encoding_at_any_offset() -> None:
    """The detector itself: a value hidden in hex, base64 (any alignment) or JSON is found."""
    secret = canary(' "quoted" ü 🔑')[1].encode()
    for prefix in (b"", b"a", b"ab", b"abc"):
        blob = prefix + secret + b"tail"
        hidden = {
            "base64": base64.b64encode(blob),
            "urlsafe": base64.urlsafe_b64encode(blob),
            "hex": blob.hex().encode(),
            "json": json.dumps({"x": blob.decode()}).encode(),
        }
        for how, data in hidden.items():
            assert find_leaks({"s": secret}, [(how, data)]), f"{how} with prefix {prefix!r}"
    assert find_leaks({"s": secret}, [("clean", b"nothing to see " * 100)]) == []
    assert find_leaks({"s": secret}, [], raw_only=[("raw", b"xx" + secret)])
