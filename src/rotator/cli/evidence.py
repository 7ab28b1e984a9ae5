"""``rotator report evidence ROTATION_ID``: one rotation's evidence record."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from rotator.cli.app import (
    JsonOpt,
    emit_json,
    fail,
    out,
    remote_service,
    remote_url,
    report_app,
    service,
)


@report_app.command("evidence")
def report_evidence(
    rotation_id: Annotated[str, typer.Argument(metavar="ROTATION_ID")],
    as_json: JsonOpt = False,
) -> None:
    """Who/what/when, the test result, the revoke and the audit entries of one rotation, with
    the proof that they verify against the keyed chain and a signed checkpoint. Exit 1 when
    the chain or the checkpoint does not verify, or the rotations row disagrees with the signed
    entries (not yet covered is not a failure)."""
    url = remote_url()
    if url is not None:
        with remote_service(url) as remote:
            data = remote.evidence_json(rotation_id)
    else:
        with service() as svc:
            data = svc.rotation_evidence(rotation_id).to_json()
    if as_json:
        emit_json(data)
    else:
        _print(data)
    proof = data["proof"]
    if proof is not None and (
        not proof["chain_ok"] or not proof["row_ok"] or (proof["covered"] and not proof["ok"])
    ):
        fail(proof["message"], code=1)


def _print(data: dict[str, Any]) -> None:
    lines = [
        f"rotation {data['rotation_id']} of {data['credential']} (tenant {data['tenant']})",
        f"trigger: {data['trigger']}; requested by {data['requested_by'] or '-'}; started by "
        f"{data['started_by'] or '-'} at {data['started_at'] or '-'}; finished at "
        f"{data['finished_at'] or '-'}",
        f"result: {data['result']}" + (f" ({data['error']})" if data["error"] else ""),
        f"test: {data['test']}",
        f"versions: {data['previous_version'] or '-'} -> {data['version'] or '-'}",
    ]
    if data["revoked_at"]:
        lines.append(f"previous value revoked at {data['revoked_at']}")
    elif data["revoke_due_at"]:
        lines.append(f"previous value to be revoked at {data['revoke_due_at']}")
    elif data["previous_version"] is not None:
        lines.append("previous value: no revoke recorded")
    lines.append("audit entries:")
    lines += [f"  {e['seq']} {e['ts']} {e['action']} {e['hash']}" for e in data["entries"]]
    if data["proof"] is not None:
        lines.append(f"proof: {data['proof']['message']}")
    for line in lines:
        out.print(line, markup=False)
