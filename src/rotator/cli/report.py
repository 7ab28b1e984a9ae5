"""``rotator report compliance``: the compliance report as JSON, CSV or HTML."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from rotator.cli.app import remote_service, remote_url, report_app, service
from rotator.errors import InvalidInput
from rotator.service.reports import DEFAULT_SINCE, check_format, parse_since, render

FormatOpt = Annotated[str, typer.Option("--format", help="json, csv or html.")]
TenantOpt = Annotated[
    str | None, typer.Option("--tenant", help="Report on this tenant (default: your own).")
]
SinceOpt = Annotated[
    str, typer.Option("--since", help="Count rotations and reads of the last DURATION.")
]
OutputOpt = Annotated[
    Path | None, typer.Option("--output", help="Write the report to FILE, not standard output.")
]


def _write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` whole (a temporary file renamed over it), so a failed
    write leaves no partial report."""
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise InvalidInput(f"--output {str(path)[:200]!r}: no such directory")
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".rotator-report-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise InvalidInput(f"cannot write --output {str(path)[:200]!r}: {exc.strerror}") from None


@report_app.command("compliance")
def compliance(
    fmt: FormatOpt = "json",
    tenant: TenantOpt = None,
    since: SinceOpt = DEFAULT_SINCE,
    output: OutputOpt = None,
) -> None:
    """Per credential its age, policy maximum, last rotation, revocation and reads; overall
    figures; and the controls they are evidence for. Reads only."""
    check_format(fmt)
    period = parse_since(since)
    if output is not None and output.is_dir():
        raise InvalidInput(f"--output {str(output)[:200]!r} is a directory")
    url = remote_url()
    if url is not None:
        if tenant is not None:
            raise InvalidInput(
                "`rotator report compliance --tenant` runs on the server's host; unset "
                "ROTATOR_URL to run it locally (remotely it reports the token's tenant)"
            )
        with remote_service(url) as remote:
            text = remote.compliance_text(fmt, since)  # as the server renders it
    else:
        with service() as svc:
            report = svc.compliance_report(tenant=tenant, since=period)
        text = render(report, fmt)
    if output is None:
        sys.stdout.write(text)
    else:
        _write(output, text)
