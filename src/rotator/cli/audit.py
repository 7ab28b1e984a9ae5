"""``rotator audit ...``: read, verify and export the audit log."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from rotator.cli.app import (
    MAX_LIMIT,
    JsonOpt,
    audit_app,
    emit_json,
    fail,
    out,
    service,
)
from rotator.domain import names
from rotator.errors import (
    InvalidInput,
)


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
    with service() as svc:
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
    with service() as svc:
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
    with service() as svc:
        seq, mac = svc.audit_head()
    sys.stdout.write(f"{seq}:{mac}\n")


@audit_app.command("export")
def audit_export() -> None:
    """Print every audit entry as JSON lines (with hashes), for archiving."""
    with service() as svc:
        entries = svc.audit_entries()
    for e in entries:
        sys.stdout.write(json.dumps(e.to_json(), sort_keys=True) + "\n")
