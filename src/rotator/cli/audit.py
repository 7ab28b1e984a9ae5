"""``rotator audit ...``: read, verify and export the audit log."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from rotator.cli.app import (
    MAX_LIMIT,
    JsonOpt,
    audit_app,
    emit_json,
    fail,
    out,
    service,
    use_cases,
)
from rotator.domain import names
from rotator.errors import (
    InvalidInput,
)
from rotator.service.checkpoints import verify_copy


@audit_app.command("list")
def audit_list(
    credential: Annotated[
        str | None, typer.Option("--credential", help="Only this credential.")
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", min=1, max=MAX_LIMIT, help="Only the newest N."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List audit entries, oldest first."""
    if credential is not None:
        names.check_credential_name(credential)
    with use_cases() as svc:
        entries = svc.audit_entries(credential=credential, limit=limit)
    if as_json:
        emit_json([e.to_json() for e in entries])
        return
    from rich.table import Table

    table = Table("SEQ", "TIME", "ACTOR", "ACTION", "CREDENTIAL", "DETAILS")
    for e in entries:
        table.add_row(
            str(e.seq),
            e.ts,
            e.actor,
            e.action,
            e.credential or "-",
            json.dumps(e.details, sort_keys=True),
        )
    out.print(table)


@audit_app.command("verify")
def audit_verify(
    expect_head: Annotated[
        str | None,
        typer.Option(
            "--expect-head",
            metavar="SEQ:HASH",
            help="A head printed by `rotator audit head` earlier: it must still be in the log.",
        ),
    ] = None,
) -> None:
    """Verify the keyed chain; exit 1 naming the first entry that does not verify."""
    expected = _parse_head(expect_head) if expect_head is not None else None
    with use_cases() as svc:
        result = svc.audit_verify(expected)
    if result.ok:
        out.print(f"audit chain ok: {result.entries} entries")
        return
    fail(f"audit chain broken at entry {result.first_bad_seq}: {result.reason}", code=1)


def _parse_head(text: str) -> tuple[int, str]:
    seq, sep, mac = text.strip().partition(":")
    if not (sep and seq.isascii() and seq.isdigit() and len(seq) <= 18 and int(seq) >= 1):
        raise InvalidInput("--expect-head must be SEQ:HASH as printed by `rotator audit head`")
    if len(mac) != 64 or any(c not in "0123456789abcdef" for c in mac.lower()):
        raise InvalidInput("--expect-head must be SEQ:HASH with a 64-digit hex HASH")
    return int(seq), mac.lower()


@audit_app.command("head")
def audit_head() -> None:
    """Print SEQ:HASH of the newest entry: keep it outside the store for --expect-head."""
    with use_cases() as svc:
        seq, mac = svc.audit_head()
    sys.stdout.write(f"{seq}:{mac}\n")


@audit_app.command("export")
def audit_export(
    fmt: Annotated[
        str, typer.Option("--format", help="jsonl (one entry per line, with hashes) or cef.")
    ] = "jsonl",
    since: Annotated[
        int, typer.Option("--since", min=0, max=MAX_LIMIT, help="Only entries after seq SEQ.")
    ] = 0,
) -> None:
    """Print audit entries for archiving or a SIEM: jsonl (verifiable with `audit verify-copy`)
    or CEF:0 lines."""
    if fmt not in ("jsonl", "cef"):
        raise InvalidInput(f"--format must be jsonl or cef, not {fmt!r}")
    with service() as svc:
        lines = svc.audit_export(fmt, since)
    for line in lines:
        sys.stdout.write(line + "\n")


def _checkpoint_row(cp: Any) -> tuple[str, ...]:
    return (str(cp.seq), cp.created_at, cp.key_id, cp.digest, cp.created_by)


@audit_app.command("checkpoint")
def audit_checkpoint(as_json: JsonOpt = False) -> None:
    """Sign a checkpoint of the audit chain now (refused, exit 1, if the chain does not
    verify). --json prints the whole signed record, for `audit verify-copy --checkpoint`."""
    with service() as svc:
        cp = svc.make_checkpoint()
    if as_json:
        emit_json(cp.to_json())
        return
    out.print(
        f"checkpoint {cp.seq}: digest {cp.digest} signed by key {cp.key_id} at {cp.created_at}"
    )


@audit_app.command("checkpoints")
def audit_checkpoints(as_json: JsonOpt = False) -> None:
    """List the signed checkpoints, oldest first."""
    with service() as svc:
        cps = svc.list_checkpoints()
    if as_json:
        emit_json([cp.to_json() for cp in cps])
        return
    from rich.table import Table

    table = Table("SEQ", "TIME", "KEY", "DIGEST", "BY")
    for cp in cps:
        table.add_row(*_checkpoint_row(cp))
    out.print(table)


@audit_app.command("public-key")
def audit_public_key() -> None:
    """Print the PEM of every checkpoint signing key, each after a `# key id` line."""
    with service() as svc:
        keys = svc.audit_public_keys()
    for k in keys:
        sys.stdout.write(f"# rotator audit signing key id {k.id}\n{k.pem}")


@audit_app.command("verify-copy")
def audit_verify_copy(
    copy: Annotated[Path, typer.Argument(help="A copy of the log (`rotator audit export`).")],
    checkpoint: Annotated[
        list[Path],
        typer.Option(
            "--checkpoint",
            help="`rotator audit checkpoint --json` output; repeat it for several (they must "
            "chain).",
        ),
    ],
    public_key: Annotated[
        Path, typer.Option("--public-key", help="`rotator audit public-key` output.")
    ],
    full: Annotated[
        bool,
        typer.Option("--full", help="The copy must be whole: refuse any redacted line."),
    ] = False,
) -> None:
    """Verify a copy of the log against signed checkpoints with only the public key, and say
    how many lines were redacted. Opens no store: works anywhere, without ROTATOR_HOME or the
    master key."""
    result = verify_copy(copy, checkpoint, public_key, full=full)
    if not result.ok:
        fail(result.message, code=1)
    sys.stdout.write(result.message + "\n")
