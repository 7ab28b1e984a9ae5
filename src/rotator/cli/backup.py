"""``rotator backup``, ``rotator restore``, ``rotator keys export|import``: disaster recovery
(see docs/recovery.md)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from rotator.cli.app import app, fail, keys_app, out, service
from rotator.config import Settings
from rotator.errors import InvalidInput
from rotator.service import backup as dr


@app.command("backup")
def backup_cmd(
    file: Annotated[Path, typer.Argument(help="Write the backup here (mode 0600).")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing FILE.")] = False,
) -> None:
    """Write an encrypted, signed snapshot of the whole store (online: rotations go on)."""
    with service() as svc:
        r = svc.backup_store(file, force=force)
    out.print(
        f"backup written to {r.path}: {r.tables} tables, {r.rows} rows, {r.bytes} bytes, "
        f"audit head seq {r.audit_head_seq}"
    )


@app.command("restore")
def restore_cmd(
    file: Annotated[Path, typer.Argument(help="The backup file.")],
) -> None:
    """Restore a backup into an empty store (ROTATOR_DB not initialized), after checking its
    signature and integrity with the master key in ROTATOR_HOME (or ROTATOR_PASSPHRASE)."""
    r = dr.restore(Settings.from_env(), file)
    out.print(
        f"restored {r.rows} rows in {r.tables} tables (revision {r.revision}, backup of "
        f"{r.backup_created_at}, audit head seq {r.audit_head_seq}); {r.leases_expired} "
        "lease(s) from the old host ended: run `rotator recover` to resume rotations in flight"
    )


@keys_app.command("export")
def keys_export(
    split: Annotated[
        str, typer.Option("--split", help="THRESHOLD-of-SHARES, e.g. 3-of-5.")
    ] = "3-of-5",
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Write each share to its own file here (0600).")
    ] = None,
    stdout: Annotated[
        bool, typer.Option("--stdout", help="Print the shares, one per line (they are secrets).")
    ] = False,
) -> None:
    """Split the master key into Shamir shares (SLIP-0039 words); any THRESHOLD rebuild it."""
    if (out_dir is None) == (not stdout):
        raise InvalidInput("give exactly one of --out DIR and --stdout")
    dr.parse_split(split)  # bad input before the store is opened
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            fail(f"--out {out_dir} is not a folder")
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if any(out_dir.glob("share-*.txt")):
            fail(f"{out_dir} holds share files already: use an empty folder")
    with service() as svc:
        key_id, shares = svc.export_key_shares(split)
    if out_dir is None:
        sys.stdout.write("".join(s + "\n" for s in shares))
        return
    try:
        _write_shares(out_dir, shares)
    except OSError as exc:
        fail(f"cannot write the shares to {out_dir}: {exc.strerror or exc}; no share file left", 1)
    out.print(
        f"wrote {len(shares)} shares of master key {key_id} to {out_dir} "
        f"(any {split.split('-')[0]} rebuild it)"
    )


def _write_shares(out_dir: Path, shares: list[str]) -> None:
    """Each share to ``out_dir/share-I-of-N.txt`` (0600), all or none: every share is written
    and fsynced under a temporary name first, then linked to its name (refusing one that
    exists); on any failure the shares already placed and every temporary file are removed,
    so no partial set (fewer than N, maybe fewer than the threshold) is left to be trusted."""
    staged: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for i, share in enumerate(shares, 1):
            final = out_dir / f"share-{i}-of-{len(shares)}.txt"
            tmp = out_dir / f".{final.name}.{os.urandom(4).hex()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            staged.append((tmp, final))
            with os.fdopen(fd, "w") as f:
                f.write(share + "\n")
                f.flush()
                os.fsync(f.fileno())
        for tmp, final in staged:
            os.link(tmp, final)
            placed.append(final)
        dfd = os.open(out_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        for path in placed:
            path.unlink(missing_ok=True)
        raise
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


@keys_app.command("import")
def keys_import(
    files: Annotated[
        list[Path] | None, typer.Argument(help="Share files (one share each); none: stdin.")
    ] = None,
) -> None:
    """Rebuild the master key from Shamir shares into ROTATOR_HOME/master.key (0600)."""
    shares: list[str] = []
    if files:
        for path in files:
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                raise InvalidInput(f"share file {path} cannot be read as text") from None
            shares += [line for line in text.splitlines() if line.strip()]
    elif sys.stdin is not None and not sys.stdin.isatty():
        shares = [line for line in sys.stdin.read().splitlines() if line.strip()]
    settings = Settings.from_env()
    key_id, written = dr.import_shares(settings, shares)
    if written:
        out.print(f"master key {key_id} rebuilt into {settings.key_file}")
    else:
        out.print(f"master key {key_id} is in {settings.key_file} already")
