"""What every command module shares: the typer apps, output, the service context, common
options and input helpers. Commands live in one module per group; ``main`` runs them."""

from __future__ import annotations

import enum
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from rotator.cli.session import BAD_INPUT as BAD_INPUT
from rotator.cli.session import CA_ENV as CA_ENV
from rotator.cli.session import TENANT_ENV as TENANT_ENV
from rotator.cli.session import TOKEN_ENV as TOKEN_ENV
from rotator.cli.session import URL_ENV as URL_ENV
from rotator.cli.session import acting_principal as acting_principal
from rotator.cli.session import log as log
from rotator.cli.session import remote_url as remote_url
from rotator.cli.session import service as service
from rotator.domain import names
from rotator.domain.secret import Secret
from rotator.errors import (
    InvalidInput,
)
from rotator.service import (
    EngineOptions,
    PolicyInput,
    ValueInput,
)

# Imported where used, not here: a command pays at start-up only for what it needs (rich
# tables and progress bars; `credential get` needs neither).
if TYPE_CHECKING:
    from rich.console import Console

    from rotator.cli.port import UseCases
    from rotator.client.remote import RemoteService

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
group_app = typer.Typer(
    help="Coordinated groups: rotate members together, in order.", no_args_is_help=True
)
app.add_typer(group_app, name="group")
policy_app = typer.Typer(help="Policy defaults by tag and tenant.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
principal_app = typer.Typer(help="People and services, with roles.", no_args_is_help=True)
app.add_typer(principal_app, name="principal")
token_app = typer.Typer(help="API tokens of principals.", no_args_is_help=True)
app.add_typer(token_app, name="token")
tenant_app = typer.Typer(help="Tenants (the store's owner only).", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
report_app = typer.Typer(help="Compliance reports and evidence records.", no_args_is_help=True)
app.add_typer(report_app, name="report")
connector_app = typer.Typer(help="Installed connectors and their settings.", no_args_is_help=True)
app.add_typer(connector_app, name="connector")


class LogLevel(enum.StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class LogFormat(enum.StrEnum):
    json = "json"
    console = "console"


@app.callback()
def _global_options(
    log_level: Annotated[
        LogLevel, typer.Option("--log-level", help="Log records of this level and above.")
    ] = LogLevel.warning,
    log_format: Annotated[
        LogFormat | None,
        typer.Option(
            "--log-format",
            help="Log lines as JSON or for a person (default: console on a terminal, else json).",
        ),
    ] = None,
) -> None:
    # Logs go to stderr as structured lines, apart from the one-line error messages, which
    # stay as they are (see rotator.telemetry.logs). Tracing only when an endpoint is set:
    # importing OpenTelemetry would cost every call start-up time for nothing.
    from rotator.telemetry import logs

    logs.configure(log_level.value, None if log_format is None else log_format.value)
    if os.environ.get("ROTATOR_OTLP_ENDPOINT"):
        from rotator.telemetry import tracing

        tracing.configure_from_env()


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


# Listing limits above this are bad input (a database integer holds no more; nobody reads more).
MAX_LIMIT = 1_000_000_000

# typer vendors click in recent releases; reach its UsageError through the public BadParameter.
UsageError: type[Exception] = typer.BadParameter.__mro__[1]


class Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"rotator: error: {message}", file=sys.stderr)
    raise Exit(code)


@contextmanager
def use_cases(options: EngineOptions | None = None) -> Iterator[UseCases]:
    """The use cases of the commands that also run against a server: with ``ROTATOR_URL``,
    a :class:`~rotator.client.remote.RemoteService` acting as ``ROTATOR_TOKEN``'s principal
    (no token: InvalidInput); without, :func:`service`."""
    url = remote_url()
    if url is None:
        with service(options) as svc:
            yield svc
        return
    with remote_service(url) as remote:
        yield remote


@contextmanager
def remote_service(url: str) -> Iterator[RemoteService]:
    """The server at ``url`` as ``ROTATOR_TOKEN``'s principal (no token: InvalidInput);
    ``https://`` verifies its certificate (``ROTATOR_CA_FILE``: only against that CA)."""
    token = (os.environ.get(TOKEN_ENV) or "").strip()
    if not token:
        raise InvalidInput(f"{URL_ENV} is set but {TOKEN_ENV} is not: the server needs a token")
    from rotator.client.remote import RemoteService

    with RemoteService(url, token, ca_file=os.environ.get(CA_ENV) or None) as remote:
        yield remote


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
OnRiskOpt = Annotated[
    str | None,
    typer.Option(
        "--on-risk",
        help="Risk rules SEVERITY=ACTION,... (rotate|emergency|notify); "
        "default low,medium=notify high=rotate critical=emergency.",
    ),
]
RiskCooldownOpt = Annotated[
    str | None,
    typer.Option("--risk-cooldown", help="After a risk rotation, only notify this long (1h)."),
]
JitterOpt = Annotated[
    str | None,
    typer.Option("--jitter", help="Move each due time by a stable offset in [0, DURATION)."),
]
BlackoutOpt = Annotated[
    list[str] | None,
    typer.Option("--blackout", help="No rotation in this weekly span: 'Fri 18:00-Mon 06:00'."),
]
TzOpt = Annotated[
    str | None, typer.Option("--tz", help="Zone of --cron and --blackout (default UTC).")
]
MaxAgeOpt = Annotated[
    str | None, typer.Option("--max-age", help="Never let CURRENT get older than DURATION.")
]
StdinOpt = Annotated[
    bool, typer.Option("--value-stdin", help="Read the value from standard input.")
]
SinkOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--sink",
        help="After each rotation write the value: file:path=/p,format=dotenv, "
        "openbao:addr=https://h:8200,path=app/db,key=password,token=CREDENTIAL or "
        "exec:command=/abs/hook",
    ),
]
GenOpt = Annotated[bool, typer.Option("--generate", help="Let the connector generate the value.")]


def value_input(value_stdin: bool, generate: bool) -> ValueInput:
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


def pairs(items: list[str] | None, what: str) -> dict[str, str]:
    key_re = names.TAG_KEY if what == "--tag" else names.CONFIG_KEY
    return names.parse_pairs(items or [], what, key_re)


def policy_input(
    *,
    every: str | None = None,
    cron: str | None = None,
    window: str | None = None,
    grace: str | None = None,
    max_uses: int | None = None,
    jitter: str | None = None,
    blackout: list[str] | None = None,
    tz: str | None = None,
    max_age: str | None = None,
    on_risk: str | None = None,
    risk_cooldown: str | None = None,
) -> PolicyInput:
    """The policy options of a command, checked (PolicyError names the first bad one)."""
    policy = PolicyInput(
        every=every,
        cron=cron,
        window=window,
        grace=grace,
        max_uses=max_uses,
        jitter=jitter,
        blackout=None if not blackout else tuple(blackout),
        tz=tz,
        max_age=max_age,
        on_risk=on_risk,
        risk_cooldown=risk_cooldown,
    )
    policy.partial()
    return policy
