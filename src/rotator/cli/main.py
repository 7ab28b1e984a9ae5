"""The ``rotator`` command line. Thin: parses, calls the service layer, prints.

Exit codes: 0 ok, 1 the operation failed, 2 bad input (a one-line message naming the problem,
never a traceback). Only ``credential get`` prints a value.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from rotator.config import Settings
from rotator.domain import names
from rotator.domain.group import Group, parse_order
from rotator.domain.model import Stage
from rotator.domain.policy import format_duration, parse_duration
from rotator.domain.secret import Secret
from rotator.errors import (
    AlreadyExists,
    ConfigError,
    CryptoError,
    IntegrityError,
    InvalidInput,
    NotFound,
    NotInitialized,
    RotatorError,
    StoreUnavailable,
)
from rotator.service import (
    BatchResult,
    BlockingService,
    EngineOptions,
    Outcome,
    PolicyInput,
    RotationResult,
    ValueInput,
    rotation,
)
from rotator.service.rotation import Selection
from rotator.service.views import credential_view

# Imported where used, not here: a command pays at start-up only for what it needs (rich
# tables and progress bars; `credential get` needs neither).
if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(
    name="rotator",
    help="Credential rotation service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
credential_app = typer.Typer(help="Manage credentials.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage the master key.", no_args_is_help=True)
audit_app = typer.Typer(help="Read and verify the audit log.", no_args_is_help=True)
app.add_typer(credential_app, name="credential")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")


class _Out:
    """Standard output through a rich Console made at the first print."""

    _console: Console | None = None

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if self._console is None:
            from rich.console import Console

            # Piped output is not cut to 80 columns (tables stay readable in logs and pipes).
            self._console = Console(
                highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200
            )
        self._console.print(*objects, **kwargs)


out = _Out()
BAD_INPUT = (
    InvalidInput,
    NotFound,
    AlreadyExists,
    NotInitialized,
    ConfigError,
    CryptoError,
    StoreUnavailable,
)


# Listing limits above this are bad input (a database integer holds no more; nobody reads more).
MAX_LIMIT = 1_000_000_000
log = logging.getLogger("rotator.cli")

# typer vendors click in recent releases; reach its UsageError through the public BadParameter.
UsageError: type[Exception] = typer.BadParameter.__mro__[1]


class Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"rotator: error: {message}", file=sys.stderr)
    raise Exit(code)


@contextmanager
def service(options: EngineOptions | None = None) -> Iterator[BlockingService]:
    svc = BlockingService.open(Settings.from_env(), options=options)
    try:
        yield svc
    finally:
        svc.close()


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


# -- shared options ----------------------------------------------------------------------

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Connector setting KEY=VALUE.")]
TagOpt = Annotated[list[str] | None, typer.Option("--tag", help="Tag KEY=VALUE.")]
EveryOpt = Annotated[str | None, typer.Option("--every", help="Rotate every DURATION (30d, 12h).")]
CronOpt = Annotated[str | None, typer.Option("--cron", help="Rotate on a cron schedule.")]
WindowOpt = Annotated[
    str | None, typer.Option("--window", help="With --cron: start within DURATION.")
]
GraceOpt = Annotated[str | None, typer.Option("--grace", help="Keep PREVIOUS valid this long.")]
MaxUsesOpt = Annotated[int | None, typer.Option("--max-uses", help="Rotate after N uses.")]
StdinOpt = Annotated[
    bool, typer.Option("--value-stdin", help="Read the value from standard input.")
]
SinkOpt = Annotated[
    list[str] | None,
    typer.Option("--sink", help="After each rotation write the value: file:path=/p,format=dotenv"),
]
GenOpt = Annotated[bool, typer.Option("--generate", help="Let the connector generate the value.")]


def _value(value_stdin: bool, generate: bool) -> ValueInput:
    if value_stdin and generate:
        raise InvalidInput("--value-stdin and --generate exclude each other")
    if not value_stdin:
        return ValueInput(generate=generate)
    if sys.stdin is None or sys.stdin.isatty():
        raise InvalidInput("--value-stdin needs the value on standard input")
    raw = sys.stdin.buffer.read()
    if raw.endswith(b"\r\n"):
        raw = raw[:-2]
    elif raw.endswith(b"\n"):
        raw = raw[:-1]
    return ValueInput(value=Secret(raw))


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    key_re = names.TAG_KEY if what == "--tag" else names.CONFIG_KEY
    return names.parse_pairs(items or [], what, key_re)


# -- commands ----------------------------------------------------------------------------


@app.command()
def init() -> None:
    """Create the store and the master key (idempotent)."""
    settings = Settings.from_env()
    svc, created = BlockingService.init(settings)
    try:
        where = svc.db.safe_url
        if created:
            how = (
                "passphrase (ROTATOR_PASSPHRASE)"
                if settings.passphrase
                else f"key file {settings.key_file}"
            )
            out.print(f"initialized rotator store at {where}; master key: {how}")
        else:
            out.print(f"rotator store at {where} is initialized already")
    finally:
        svc.close()


@credential_app.command("add")
def credential_add(
    name: Annotated[str, typer.Argument(help="Credential name, e.g. prod/payments/db.")],
    connector: Annotated[str, typer.Option("--connector", "-c", help="Connector kind.")],
    set_: SetOpt = None,
    tag: TagOpt = None,
    every: EveryOpt = None,
    cron: CronOpt = None,
    window: WindowOpt = None,
    grace: GraceOpt = None,
    max_uses: MaxUsesOpt = None,
    value_stdin: StdinOpt = False,
    generate: GenOpt = False,
    verify: Annotated[
        bool, typer.Option("--verify", help="Check the target before storing anything.")
    ] = False,
    sink: SinkOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a credential. The value comes only from --value-stdin or --generate."""
    names.check_credential_name(name)
    settings, tags = _pairs(set_, "--set"), _pairs(tag, "--tag")
    policy = PolicyInput(every=every, cron=cron, window=window, grace=grace, max_uses=max_uses)
    policy.apply(None)  # validate before reading stdin
    value = _value(value_stdin, generate)
    with service() as svc:
        cred = svc.add_credential(
            name,
            connector,
            settings=settings,
            tags=tags,
            policy=policy,
            value=value,
            verify=verify,
            sinks=sink or (),
        )
    if as_json:
        emit_json(credential_view(cred))
    else:
        v = credential_view(cred)["current_version"]
        out.print(
            f"added {cred.name} ({cred.connector})"
            + (f", version {v} CURRENT" if v else ", no value yet")
        )


@credential_app.command("list")
def credential_list(
    tag: TagOpt = None,
    due: Annotated[bool, typer.Option("--due", help="Only those due now.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List credentials (metadata only)."""
    tags = _pairs(tag, "--tag")
    with service() as svc:
        creds = svc.list_credentials(tags=tags, due=due)
    views = [credential_view(c) for c in creds]
    if as_json:
        emit_json(views)
        return
    from rich.table import Table

    table = Table("NAME", "CONNECTOR", "VERSION", "POLICY", "NEXT ROTATION", "TAGS")
    for c, v in zip(creds, views, strict=True):
        table.add_row(
            c.name,
            c.connector,
            str(v["current_version"] or "-"),
            c.policy.describe(),
            v["next_rotation_at"] or "-",
            ",".join(f"{k}={x}" for k, x in c.tags.items()),
        )
    out.print(table)
    out.print(f"{len(creds)} credential(s)")


@credential_app.command("show")
def credential_show(name: str, as_json: JsonOpt = False) -> None:
    """Show a credential's metadata and versions with stages, never values."""
    with service() as svc:
        cred = svc.show(name)
    v = credential_view(cred)
    if as_json:
        emit_json(v)
        return
    for key in (
        "name",
        "tenant",
        "connector",
        "created_at",
        "updated_at",
        "last_rotated_at",
        "next_rotation_at",
        "use_count",
    ):
        out.print(f"{key:17} {v[key] if v[key] is not None else '-'}")
    out.print(f"{'policy':17} {cred.policy.describe()}")
    out.print(f"{'settings':17} {json.dumps(v['settings'])}")
    out.print(f"{'tags':17} {json.dumps(v['tags'])}")
    from rich.table import Table

    table = Table("VERSION", "STAGE", "CREATED", "EXPIRES")
    for ver in v["versions"]:
        table.add_row(
            str(ver["version"]), ver["stage"], ver["created_at"], ver["expires_at"] or "-"
        )
    out.print(table)


@credential_app.command("get")
def credential_get(
    name: str,
    stage: Annotated[
        str, typer.Option("--stage", help="CURRENT, PREVIOUS or PENDING.")
    ] = "CURRENT",
) -> None:
    """Print a credential's value (audited)."""
    try:
        st = Stage(stage.upper())
    except ValueError:
        raise InvalidInput(f"--stage must be CURRENT, PREVIOUS or PENDING, not {stage!r}") from None
    with service() as svc:
        value = svc.get_value(name, st)
    sys.stdout.buffer.write(value.reveal() + b"\n")
    sys.stdout.flush()


@credential_app.command("update")
def credential_update(
    name: str,
    connector: Annotated[
        str | None, typer.Option("--connector", "-c", help="Connector kind.")
    ] = None,
    set_: SetOpt = None,
    tag: TagOpt = None,
    every: EveryOpt = None,
    cron: CronOpt = None,
    window: WindowOpt = None,
    grace: GraceOpt = None,
    max_uses: MaxUsesOpt = None,
    value_stdin: StdinOpt = False,
    generate: GenOpt = False,
    sink: SinkOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a credential; --set and --tag replace all settings / tags when given."""
    names.check_credential_name(name)
    settings = _pairs(set_, "--set") if set_ else None
    tags = _pairs(tag, "--tag") if tag else None
    policy = PolicyInput(every=every, cron=cron, window=window, grace=grace, max_uses=max_uses)
    value = _value(value_stdin, generate)
    with service() as svc:
        cred = svc.update_credential(
            name,
            connector=connector,
            settings=settings,
            tags=tags,
            policy=policy,
            value=value,
            sinks=sink,
        )
    if as_json:
        emit_json(credential_view(cred))
    else:
        out.print(f"updated {cred.name}")


@credential_app.command("remove")
def credential_remove(name: str) -> None:
    """Remove a credential and all its versions."""
    with service() as svc:
        svc.remove_credential(name)
    out.print(f"removed {name}")


@app.command()
def rotate(
    names_: Annotated[
        list[str] | None, typer.Argument(metavar="[NAME]...", help="Credentials.")
    ] = None,
    tag: TagOpt = None,
    group: Annotated[str | None, typer.Option("--group", help="A coordinated group.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every credential.")] = False,
    emergency: Annotated[
        bool, typer.Option("--emergency", help="Highest priority; revoke the old value at once.")
    ] = False,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", help="Rotations at once (default 16).")
    ] = None,
    per_target: Annotated[
        int | None, typer.Option("--per-target", help="Rotations at once per target.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; change nothing.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Rotate credentials now: create -> set -> test -> finish, rolling back on failure."""

    sel = Selection(names=names_ or (), tags=_pairs(tag, "--tag") or None, all=all_)
    if group is not None:
        if names_ or tag or all_:
            raise InvalidInput("--group excludes NAMEs, --tag and --all")
        names.check_credential_name(group)
    else:
        sel.check()
    options = rotation.options_from_env(concurrency, per_target)
    with service(options) as svc:
        if dry_run:
            steps = (
                svc.plan_group(group, emergency=emergency)
                if group is not None
                else svc.plan(sel, emergency=emergency)
            )
            if as_json:
                emit_json({"dry_run": True, "plan": steps})
                return
            from rich.table import Table

            table = Table(
                "ORDER", "LEVEL", "NAME", "CONNECTOR", "TARGET", "STRATEGY", "TRIGGER", "GRACE",
                "AFTER",
            )  # fmt: skip
            for p in steps:
                table.add_row(
                    str(p["order"]),
                    str(p["level"]) if p.get("level") is not None else "refused",
                    p["name"],
                    p["connector"],
                    p["target"],
                    p["strategy"],
                    p["trigger"],
                    f"{p['grace_s']}s",
                    ", ".join(p.get("after") or []) or "-",
                )
            out.print(table)
            refused = [p for p in steps if p.get("refused")]
            for p in refused:
                out.print(f"[red]refused[/red] {p['name']}: {p['refused']}")
            out.print(
                f"dry run: {len(steps) - len(refused)} credential(s) would rotate; nothing changed"
            )
            return
        if group is not None:
            result = svc.rotate_group(group, emergency=emergency)
        else:
            result = _rotate_with_progress(svc, sel, emergency, show=not as_json)
    if as_json:
        emit_json(result.to_json())
    else:
        data = result.to_json()
        for f in data["failed"]:
            out.print(f"[red]failed[/red] {f['name']}: {f['error']}")
        for w in data["warnings"]:
            out.print(f"[yellow]warning[/yellow] {w['name']}: {w['warning']}")
        out.print(
            f"rotated {len(data['rotated'])}, failed {len(data['failed'])} "
            f"({len(data['rolled_back'])} rolled back) in {data['duration_s']:.2f}s"
        )
    if not result.ok:
        raise Exit(1)


def _rotate_with_progress(
    svc: BlockingService, sel: Selection, emergency: bool, *, show: bool
) -> BatchResult:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    err = Console(stderr=True)
    if not (show and err.is_terminal):
        return svc.rotate(sel, emergency=emergency)
    columns = (
        TextColumn("rotating"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f}/s  failed {task.fields[failed]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("rotate", total=None, rate=0.0, failed=0)
        started = time.monotonic()
        failed = 0

        def on_selected(n: int) -> None:
            bar.update(task, total=n)

        def on_result(r: RotationResult) -> None:
            nonlocal failed
            failed += r.outcome is not Outcome.ROTATED
            done = bar.tasks[0].completed + 1
            bar.update(
                task, advance=1, failed=failed, rate=done / max(time.monotonic() - started, 1e-6)
            )

        return svc.rotate(
            sel,
            emergency=emergency,
            progress=on_result,
            on_selected=on_selected,
        )


group_app = typer.Typer(
    help="Coordinated groups: rotate members together, in order.", no_args_is_help=True
)
app.add_typer(group_app, name="group")


def group_view(g: Group) -> dict[str, Any]:
    return {
        "name": g.name,
        "all_or_nothing": g.all_or_nothing,
        "min_offset": format_duration(g.min_offset),
        "members": [{"name": m.name, "after": list(m.after)} for m in g.members],
        "levels": g.levels(),
    }


@group_app.command("add")
def group_add(
    name: str,
    member: Annotated[list[str], typer.Option("--member", help="A credential (repeat).")],
    order: Annotated[
        list[str] | None,
        typer.Option("--order", help="FIRST:THEN (repeat); default: members chained as given."),
    ] = None,
    offset: Annotated[
        str | None, typer.Option("--offset", help="Minimum time between members (5s).")
    ] = None,
    all_or_nothing: Annotated[
        bool, typer.Option("--all-or-nothing", help="A failure rolls back every member.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Define a group of credentials rotated together, in dependency order."""
    names.check_credential_name(name)
    for m in member:
        names.check_credential_name(m)
    g = Group(
        name=name,
        members=parse_order(list(member), list(order or [])),
        all_or_nothing=all_or_nothing,
        min_offset=parse_duration(offset, "--offset") if offset else timedelta(0),
    )
    with service() as svc:
        svc.add_group(g)
    if as_json:
        emit_json(group_view(g))
    else:
        out.print(f"added group {name}: " + " -> ".join("+".join(lv) for lv in g.levels()))


@group_app.command("list")
def group_list(as_json: JsonOpt = False) -> None:
    """List groups."""
    with service() as svc:
        found = svc.list_groups()
    if as_json:
        emit_json([group_view(g) for g in found])
        return
    from rich.table import Table

    table = Table("NAME", "ORDER", "ALL-OR-NOTHING", "OFFSET")
    for g in found:
        table.add_row(
            g.name,
            " -> ".join("+".join(lv) for lv in g.levels()),
            "yes" if g.all_or_nothing else "no",
            format_duration(g.min_offset),
        )
    out.print(table)


@group_app.command("show")
def group_show(name: str, as_json: JsonOpt = False) -> None:
    """Show a group's members and order."""
    with service() as svc:
        g = svc.get_group(name)
    if as_json:
        emit_json(group_view(g))
    else:
        out.print(json.dumps(group_view(g), indent=2))


@group_app.command("remove")
def group_remove(name: str) -> None:
    """Remove a group (its credentials stay)."""
    with service() as svc:
        svc.remove_group(name)
    out.print(f"removed group {name}")


@app.command()
def worker(
    poll: Annotated[float, typer.Option("--poll", min=0.1, help="Longest sleep, seconds.")] = 5.0,
) -> None:
    """Run the engine and scheduler until interrupted: rotate what is due, revoke expired
    values, resume rotations whose process died. Run several on one PostgreSQL to scale."""
    with service(rotation.options_from_env()) as svc:
        svc.serve(poll_s=poll, on_batch=lambda r: out.print(json.dumps(r.to_json())))


@app.command()
def recover() -> None:
    """Resume or roll back rotations whose process died; revoke values whose grace ended."""
    with service(rotation.options_from_env()) as svc:
        results = svc.recover()
    for r in results:
        out.print(f"{r.outcome.value} {r.name}" + (f": {r.error}" if r.error else ""))
    out.print(f"recovered {len(results)} rotation(s)")


@keys_app.command("rotate-master")
def keys_rotate_master() -> None:
    """Re-wrap every data key under a new master key (safe to interrupt and run again)."""
    with service() as svc:
        old, new, n = svc.rotate_master_key()
    out.print(f"master key rotated: {old} -> {new}; {n} data key(s) re-wrapped")


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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="rotator", standalone_mode=False)
    except Exit as exc:
        return exc.code
    except UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # help was printed already
            return 0
        print(f"rotator: error: {getattr(exc, 'format_message', exc.__str__)()}", file=sys.stderr)
        return 2
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        print("rotator: aborted", file=sys.stderr)
        return 1
    except IntegrityError as exc:  # tampered data: the operation failed, the input was fine
        print(f"rotator: error: {exc}", file=sys.stderr)
        return 1
    except BAD_INPUT as exc:
        print(f"rotator: error: {exc}", file=sys.stderr)
        return 2
    except RotatorError as exc:
        print(f"rotator: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rotator: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # The last resort: a defect must not show a user a traceback (whose messages may quote
        # a value). One line here; the stack, without any exception's message, goes to the
        # debug log, which exists only with ROTATOR_DEBUG set.
        print(
            f"rotator: error: internal error ({type(exc).__name__}); details in the debug log "
            "(set ROTATOR_DEBUG=1)",
            file=sys.stderr,
            flush=True,
        )
        _log_internal_error(exc)
        return 1
    return 0


def _log_internal_error(exc: BaseException) -> None:
    """Log ``exc``'s stack at debug level: frames and exception types only, never a message
    (an exception's text may hold a value: a UnicodeDecodeError quotes the bytes it met)."""
    if not os.environ.get("ROTATOR_DEBUG"):
        return
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("rotator: debug: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.DEBUG)
        log.propagate = False
    lines: list[str] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        lines.append(f"{type(cur).__module__}.{type(cur).__qualname__} (message withheld)")
        lines.extend(traceback.format_tb(cur.__traceback__))
        cur = cur.__cause__ or cur.__context__
    log.debug(
        "internal error, most recent call last per exception:\n%s",
        "".join(line if line.endswith("\n") else line + "\n" for line in lines),
    )


def run() -> None:
    sys.exit(main())
