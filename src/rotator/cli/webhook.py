"""``rotator webhook ...``: notifications by webhook (events derived from the audit log)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from rotator.cli.app import JsonOpt, app, emit_json, fail, out, service
from rotator.domain.policy import parse_duration

webhook_app = typer.Typer(
    help="Notify receivers of rotations, overdue credentials, emergencies and risk events "
    "(HMAC-signed webhooks, retried, with a dead-letter list).",
    no_args_is_help=True,
)
app.add_typer(webhook_app, name="webhook")


@webhook_app.command("add")
def webhook_add(
    url: Annotated[str, typer.Argument(help="The receiver's http(s) URL (no secret in it).")],
    event: Annotated[
        str,
        typer.Option(
            "--event",
            metavar="TYPE[,TYPE...]",
            help="Event types: rotation.started, rotation.succeeded, rotation.failed, "
            "rotation.rolled_back, credential.overdue, emergency, risk.event, "
            "audit.verification_failed; or all.",
        ),
    ],
    secret_ref: Annotated[
        str | None,
        typer.Option(
            "--secret-ref",
            metavar="CREDENTIAL",
            help="The credential whose CURRENT value signs the requests (default: a new "
            "generated key, printed once).",
        ),
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help='json (default) or slack ({"text": ...}).')
    ] = None,
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Only this tenant's events.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a webhook; it is sent the events of audit entries written from now on."""
    with service() as svc:
        added = svc.add_webhook(url, events=event, secret_ref=secret_ref, fmt=fmt, tenant=tenant)
    view = added.webhook
    secret = None if added.generated_secret is None else added.generated_secret.reveal().decode()
    if as_json:
        emit_json({**view.to_json(), "secret": secret})
        return
    out.print(
        f"added webhook {view.id} ({view.url}) for {', '.join(view.events)}; "
        f"signing key: credential {view.secret_ref}"
    )
    if secret is not None:
        # Plain write, alone on its line: the generated key, shown this once.
        sys.stdout.write(f"secret: {secret}\n")


@webhook_app.command("list")
def webhook_list(
    dead: Annotated[
        bool, typer.Option("--dead", help="List the dead letters instead (see `webhook dead`).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List webhooks with their lag, deliveries, dead letters and last error."""
    if dead:
        webhook_dead(as_json)
        return
    with service() as svc:
        views = svc.list_webhooks()
    if as_json:
        emit_json([v.to_json() for v in views])
        return
    from rich.table import Table

    table = Table("ID", "TENANT", "URL", "EVENTS", "FORMAT", "LAG", "DELIVERED", "DEAD", "ERROR")
    for v in views:
        table.add_row(
            str(v.id),
            v.tenant or "*",
            v.url,
            ",".join(v.events),
            v.format,
            str(v.lag),
            str(v.delivered),
            str(v.dead),
            v.last_error or "-",
        )
    out.print(table)


@webhook_app.command("dead")
def webhook_dead(as_json: JsonOpt = False) -> None:
    """List the dead letters: events a receiver kept refusing, waiting for `webhook retry`."""
    with service() as svc:
        views = svc.webhook_dead_letters()
    if as_json:
        emit_json([v.to_json() for v in views])
        return
    from rich.table import Table

    table = Table("ID", "WEBHOOK", "TENANT", "SEQ", "TYPE", "ATTEMPTS", "ERROR")
    for v in views:
        table.add_row(
            str(v.id),
            str(v.webhook_id),
            v.tenant or "*",
            str(v.seq),
            v.type,
            str(v.attempts),
            v.error,
        )
    out.print(table)


@webhook_app.command("remove")
def webhook_remove(
    webhook_id: Annotated[int, typer.Argument(metavar="ID", help="The webhook to remove.")],
) -> None:
    """Remove a webhook and its dead letters."""
    with service() as svc:
        svc.remove_webhook(webhook_id)
    out.print(f"removed webhook {webhook_id}")


@webhook_app.command("retry")
def webhook_retry(
    dead_id: Annotated[
        int | None, typer.Argument(metavar="ID", help="The dead letter to re-send.")
    ] = None,
    retry_all: Annotated[bool, typer.Option("--all", help="Re-send every dead letter.")] = False,
) -> None:
    """Re-send dead letters (with the webhook's retries); one acknowledged is never sent
    again. Exit 1 when some still failed."""
    if (dead_id is None) == (not retry_all):
        fail("give a dead letter ID or --all")
    with service() as svc:
        result = svc.retry_webhook_dead_letters(dead_id, retry_all=retry_all)
    out.print(f"redelivered {result.delivered}; still failing {result.failed}")
    if result.failed:
        raise typer.Exit(1)


@webhook_app.command("run")
def webhook_run(
    once: Annotated[
        bool, typer.Option("--once", help="Deliver until caught up, then exit 0.")
    ] = False,
    poll: Annotated[
        float, typer.Option("--poll", min=0.05, help="Seconds between looks for new entries.")
    ] = 1.0,
    attempts: Annotated[
        int, typer.Option("--attempts", min=1, help="Attempts per event before a dead letter.")
    ] = 5,
    backoff: Annotated[
        float, typer.Option("--backoff", min=0.0, help="First backoff in seconds (doubles).")
    ] = 0.5,
    overdue_after: Annotated[
        str,
        typer.Option("--overdue-after", help="A credential past due by more than this is overdue."),
    ] = "1h",
) -> None:
    """Deliver webhook events in the foreground (`rotator serve` and `rotator worker` do it
    too, beside the scheduler)."""
    from rotator.service.webhooks import WebhookTiming

    after = parse_duration(overdue_after, "--overdue-after")
    with service() as svc:
        stats = svc.run_webhooks(
            once=once,
            poll_s=poll,
            timing=WebhookTiming(attempts=attempts, initial=backoff),
            overdue_after=after,
        )
    out.print(f"delivered {stats.delivered} events; dead letters {stats.dead}")
