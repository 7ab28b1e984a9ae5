"""``rotator audit forward ...``: SIEM forwarding of every audit entry (webhook or syslog)."""

from __future__ import annotations

from typing import Annotated

import typer

from rotator.cli.app import JsonOpt, audit_app, emit_json, out, service
from rotator.service import rotation

forward_app = typer.Typer(
    help="Forward every audit entry to a SIEM (HMAC-signed webhook or RFC 5424 syslog).",
    no_args_is_help=True,
)
audit_app.add_typer(forward_app, name="forward")


@forward_app.command("add")
def forward_add(
    name: Annotated[str, typer.Argument(help="A name for the forwarder.")],
    webhook: Annotated[
        str | None, typer.Option("--webhook", metavar="URL", help="POST batches to this URL.")
    ] = None,
    hmac_credential: Annotated[
        str | None,
        typer.Option(
            "--hmac-credential",
            metavar="NAME",
            help="The credential whose CURRENT value signs each webhook request.",
        ),
    ] = None,
    syslog: Annotated[
        str | None,
        typer.Option(
            "--syslog", metavar="tcp://HOST:PORT|udp://HOST:PORT", help="Send RFC 5424 syslog."
        ),
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="Syslog message body: json (default) or cef.")
    ] = None,
    facility: Annotated[
        int | None, typer.Option("--facility", help="Syslog facility 0-23 (default 13, audit).")
    ] = None,
    batch: Annotated[
        int | None, typer.Option("--batch", help="Entries per delivery (default 100).")
    ] = None,
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Only this tenant's entries.")
    ] = None,
    from_now: Annotated[
        bool, typer.Option("--from-now", help="Start after the newest entry, not at seq 0.")
    ] = False,
) -> None:
    """Add a forwarder; it starts at the first entry (all history) unless --from-now."""
    with service() as svc:
        view = svc.add_forwarder(
            name,
            webhook=webhook,
            hmac_credential=hmac_credential,
            syslog=syslog,
            fmt=fmt,
            facility=facility,
            batch=batch,
            tenant=tenant,
            from_now=from_now,
        )
    out.print(f"added forwarder {view.name} ({view.kind} {view.target}) from seq {view.cursor + 1}")


@forward_app.command("list")
def forward_list(as_json: JsonOpt = False) -> None:
    """List forwarders with their cursor, lag behind the head and last error."""
    with service() as svc:
        views = svc.list_forwarders()
    if as_json:
        emit_json([v.to_json() for v in views])
        return
    from rich.table import Table

    table = Table("NAME", "TENANT", "KIND", "TARGET", "CURSOR", "LAG", "DELIVERED", "LAST ERROR")
    for v in views:
        table.add_row(
            v.name,
            v.tenant or "*",
            v.kind,
            v.target,
            str(v.cursor),
            str(v.lag),
            str(v.delivered),
            v.last_error or "-",
        )
    out.print(table)


@forward_app.command("remove")
def forward_remove(
    name: Annotated[str, typer.Argument(help="The forwarder to remove.")],
    tenant: Annotated[
        str | None,
        typer.Option(
            "--tenant", help="The tenant whose forwarder it is ('*': an every-tenant one)."
        ),
    ] = None,
) -> None:
    """Remove a forwarder (what it delivered stays delivered). Names are unique per tenant."""
    with service() as svc:
        svc.remove_forwarder(name, tenant=tenant)
    out.print(f"removed forwarder {name}")


@forward_app.command("run")
def forward_run(
    once: Annotated[
        bool, typer.Option("--once", help="Deliver until caught up, then exit 0.")
    ] = False,
    give_up_after: Annotated[
        int | None,
        typer.Option(
            "--give-up-after",
            min=1,
            help="Exit 1 when a target has failed this many attempts on one batch.",
        ),
    ] = None,
    poll: Annotated[
        float, typer.Option("--poll", min=0.05, help="Seconds between looks for new entries.")
    ] = 1.0,
) -> None:
    """Deliver audit entries to every forwarder in the foreground (``rotator worker`` does it
    too, beside the scheduler). Retries failed deliveries with backoff, forever unless
    --give-up-after."""
    # The forwarder's lease is the engine's: ROTATOR_LEASE_SECONDS applies, as in `worker`.
    with service(rotation.options_from_env()) as svc:
        stats = svc.run_forwarders(once=once, give_up_after=give_up_after, poll_s=poll)
    held = ""
    if stats.skipped_held:
        held = f"; held by another process: {', '.join(stats.skipped_held)}"
    out.print(f"delivered {stats.delivered} entries in {stats.batches} batches{held}")
