"""The MCP tools over one RotatorService (fastmcp).

Callers rely on:
- :func:`build_server` takes two providers, so one server definition serves stdio (one
  principal for the process) and HTTP (one principal per request, from its bearer token).
- Each tool calls ONE service use case with the provider's principal; the service checks the
  permission and writes the audit entry (a refusal is ``access.denied``), never this module.
- A service error becomes a fastmcp ToolError carrying the service's one-line message (an
  internal failure only its type name); never a traceback, never a value.
- Results are JSON objects in the shapes of the CLI's ``--json`` output and the REST API
  (``service.views.credential_view``, ``BatchResult.to_json``, ...). Only ``reveal_value``
  returns a value.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

import mcp.types as mt
from fastmcp import FastMCP
from fastmcp.exceptions import ToolError
from fastmcp.exceptions import ValidationError as ArgumentsInvalid
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from fastmcp.tools import ToolResult
from pydantic import Field
from pydantic import ValidationError as PydanticValidationError

from rotator import errors
from rotator.domain import names as name_rules
from rotator.domain.model import Stage
from rotator.domain.principal import Principal
from rotator.domain.secret import Secret
from rotator.service import EventInput, PolicyInput, RotatorService, ValueInput
from rotator.service import events as svc_events
from rotator.service import policies as svc_policies
from rotator.service import reports as svc_reports
from rotator.service import rotation as svc_rotation
from rotator.service.views import credential_view, partial_policy_view

ServiceProvider = Callable[[], RotatorService]
"""Returns the running service every tool call uses."""
PrincipalProvider = Callable[[], Awaitable[Principal]]
"""Returns who the current tool call acts as (raises AuthenticationFailed when nobody)."""

P = ParamSpec("P")
T = TypeVar("T")

INSTRUCTIONS = """\
rotator manages credentials (named secrets such as `prod/payments/db`): it stores them
encrypted, rotates them on policy or on demand (create -> set -> test -> finish, rolling back
on failure) and audits every action. Every tool acts as the caller's principal and is refused
(with a one-line reason) when its role does not allow the action. Names look like
`prod/payments/db` (lower case, digits and `._/-`). Tags select groups of credentials
(`{"env": "prod"}`). No tool returns a secret value except `reveal_value`, which needs the
value.read permission and is audited; do not call it unless the user asked for the value.
Use `rotate` with `dry_run=true` to see what a rotation would do before doing it."""

# Errors whose message is the service's one line, safe to show; the others (a broken store
# or ciphertext) show only their kind, as the REST API's 500 problems do.
_INTERNAL = (errors.IntegrityError, errors.DecryptionError)

NameArg = Annotated[
    str,
    Field(
        description="Credential name, e.g. `prod/payments/db` "
        "(lower case letters, digits and `._/-`, starting with a letter or digit).",
        examples=["prod/payments/db"],
    ),
]
TagsArg = Annotated[
    dict[str, str] | None,
    Field(
        description="Tags as KEY: VALUE pairs; a credential matches when it has all of them.",
        examples=[{"env": "prod", "team": "payments"}],
    ),
]

SinksArg = Annotated[
    list[str] | None,
    Field(
        description="After each rotation write the new value here (needs value.read): "
        "`file:path=/etc/app/db.env,format=dotenv`.",
        examples=[["file:path=/etc/app/db.env,format=dotenv"]],
    ),
]


def _tool_errors(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Run ``fn``; turn any failure into a ToolError with a one-line, value-free message."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except ToolError:
            raise
        except _INTERNAL as exc:
            raise ToolError(f"internal error ({type(exc).__name__})") from None
        except errors.RotatorError as exc:
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            # A refusal or bad input is the caller's answer, not the server's failure: not
            # logged as an error (the service audited it).
            raise ToolError(text, log_level=logging.INFO) from None
        except Exception as exc:
            # A defect: its message may quote anything (a UnicodeDecodeError quotes bytes).
            raise ToolError(f"internal error ({type(exc).__name__})") from None

    return wrapper


class _ArgumentErrorsWithoutInput(Middleware):
    """Arguments that do not match a tool's schema are refused naming the argument and the
    rule, never quoting what was given (pydantic's own message shows the input: a value
    passed as a number would be echoed)."""

    async def on_call_tool(
        self,
        context: MiddlewareContext[mt.CallToolRequestParams],
        call_next: CallNext[mt.CallToolRequestParams, ToolResult],
    ) -> ToolResult:
        try:
            return await call_next(context)
        except ArgumentsInvalid as exc:
            cause = exc.__cause__
            if not isinstance(cause, PydanticValidationError) or not cause.errors():
                raise ToolError("invalid arguments", log_level=logging.INFO) from None
            first = cause.errors(include_url=False, include_context=False, include_input=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "arguments"
            raise ToolError(f"{where}: {first['msg']}", log_level=logging.INFO) from None


def _pairs(mapping: dict[str, str] | None, what: str) -> dict[str, str]:
    """``mapping`` checked like the CLI's ``--tag``/``--set`` pairs (InvalidInput naming the
    first bad key)."""
    if not mapping:
        return {}
    key_re = name_rules.TAG_KEY if what == "tags" else name_rules.CONFIG_KEY
    return name_rules.parse_pairs([f"{k}={v}" for k, v in mapping.items()], what, key_re)


def _tag_pair(tag: dict[str, str] | None) -> tuple[str, str] | None:
    if not tag:
        return None
    pairs = _pairs(tag, "tags")
    if len(pairs) != 1:
        raise errors.InvalidInput("tag must be exactly one KEY: VALUE pair")
    ((key, value),) = pairs.items()
    return key, value


class _PolicyArgs:
    """The policy fields every tool that sets a policy takes (same text as the CLI flags)."""

    Every = Annotated[
        str | None,
        Field(description="Rotate every DURATION, e.g. `30d`, `12h`.", examples=["30d"]),
    ]
    Cron = Annotated[
        str | None,
        Field(description="Rotate on a cron schedule (UTC unless tz).", examples=["0 3 * * 0"]),
    ]
    Window = Annotated[
        str | None, Field(description="With cron: start within DURATION.", examples=["2h"])
    ]
    Grace = Annotated[
        str | None,
        Field(description="How long PREVIOUS stays valid after a rotation.", examples=["5m"]),
    ]
    MaxUses = Annotated[int | None, Field(description="Rotate after N uses.", ge=1)]
    Jitter = Annotated[
        str | None, Field(description="Move each due time by a stable offset in [0, DURATION).")
    ]
    Blackout = Annotated[
        list[str] | None,
        Field(
            description="Weekly spans with no rotation (replaces all).",
            examples=[["Fri 18:00-Mon 06:00"]],
        ),
    ]
    Tz = Annotated[
        str | None, Field(description="Time zone of cron and blackout.", examples=["UTC"])
    ]
    MaxAge = Annotated[str | None, Field(description="Never let CURRENT get older than DURATION.")]
    OnRisk = Annotated[
        str | None,
        Field(
            description="Risk rules SEVERITY=ACTION,... with actions rotate|emergency|notify.",
            examples=["high=rotate,critical=emergency"],
        ),
    ]
    RiskCooldown = Annotated[
        str | None,
        Field(description="After a risk rotation, only notify for DURATION.", examples=["1h"]),
    ]


def _policy(**fields: Any) -> PolicyInput:
    blackout = fields.pop("blackout", None)
    policy = PolicyInput(**fields, blackout=None if blackout is None else tuple(blackout))
    policy.partial()  # PolicyError naming the first bad field, before any use case runs
    return policy


def build_server(svc_provider: ServiceProvider, principal_provider: PrincipalProvider) -> FastMCP:
    """The MCP server whose tools act on ``svc_provider()`` as ``await principal_provider()``
    (asked anew on every call). The caller owns the service (opens and closes it)."""
    mcp: FastMCP = FastMCP(
        name="rotator",
        instructions=INSTRUCTIONS,
        mask_error_details=True,
        on_duplicate="error",
        middleware=[_ArgumentErrorsWithoutInput()],
    )

    async def ctx() -> tuple[RotatorService, Principal]:
        return svc_provider(), await principal_provider()

    read_only = {"readOnlyHint": True, "destructiveHint": False}

    @mcp.tool(annotations=read_only)
    @_tool_errors
    async def list_credentials(
        tags: TagsArg = None,
        due: Annotated[
            bool, Field(description="Only credentials whose next rotation is now or past.")
        ] = False,
        limit: Annotated[
            int, Field(description="At most this many credentials per call.", ge=1, le=1000)
        ] = 100,
        after: Annotated[
            str | None,
            Field(
                description="Continue a listing: the `next_after` of the previous call "
                "(names sort after it)."
            ),
        ] = None,
    ) -> dict[str, Any]:
        """List the credentials the caller may read (metadata only: connector, tags, policy,
        current version, next rotation; never a value), sorted by name. Returns
        `{"credentials": [...], "next_after": name | null}`: when `next_after` is not null
        there are more; call again with `after` set to it."""
        svc, principal = await ctx()
        creds = await svc.list_credentials(
            tags=_pairs(tags, "tags") or None, due=due, principal=principal
        )
        rest = sorted((c for c in creds if after is None or c.name > after), key=lambda c: c.name)
        page = rest[:limit]
        more = len(rest) > limit
        return {
            "credentials": [credential_view(c) for c in page],
            "next_after": page[-1].name if more else None,
        }

    @mcp.tool(annotations=read_only)
    @_tool_errors
    async def describe_credential(name: NameArg) -> dict[str, Any]:
        """Describe one credential: connector, settings, tags, effective policy, versions with
        their stages (CURRENT, PREVIOUS, PENDING, RETIRED, FAILED) and dates, use count and
        next rotation. Never a value."""
        svc, principal = await ctx()
        return credential_view(await svc.show(name, principal=principal))

    @mcp.tool(annotations={"destructiveHint": False})
    @_tool_errors
    async def add_credential(
        name: NameArg,
        connector: Annotated[
            str,
            Field(
                description="Connector kind that makes values valid on the target: `local` "
                "(only stored), `postgres`, `redis`, `http`, `jwks`, `file`, ...",
                examples=["local", "postgres"],
            ),
        ],
        settings: Annotated[
            dict[str, str] | None,
            Field(
                description="Connector settings (never a secret: an admin secret is another "
                "credential, referenced by name).",
                examples=[{"host": "db.internal", "role": "app", "admin": "prod/db/admin"}],
            ),
        ] = None,
        tags: TagsArg = None,
        generate: Annotated[
            bool,
            Field(description="Let the connector generate the first value (recommended)."),
        ] = False,
        value: Annotated[
            str | None,
            Field(
                description="The first value, when it must be a given one (excludes "
                "generate). It is stored encrypted and never returned by this tool."
            ),
        ] = None,
        verify: Annotated[
            bool, Field(description="Check the target first (reachable, role exists).")
        ] = False,
        every: _PolicyArgs.Every = None,
        cron: _PolicyArgs.Cron = None,
        window: _PolicyArgs.Window = None,
        grace: _PolicyArgs.Grace = None,
        max_uses: _PolicyArgs.MaxUses = None,
        jitter: _PolicyArgs.Jitter = None,
        blackout: _PolicyArgs.Blackout = None,
        tz: _PolicyArgs.Tz = None,
        max_age: _PolicyArgs.MaxAge = None,
        on_risk: _PolicyArgs.OnRisk = None,
        risk_cooldown: _PolicyArgs.RiskCooldown = None,
        sinks: SinksArg = None,
    ) -> dict[str, Any]:
        """Register a new credential (in the caller's tenant), optionally with a first value
        (generated, or given). Returns the credential's metadata (never the value). Fails if
        the name exists already."""
        svc, principal = await ctx()
        cred = await svc.add_credential(
            name,
            connector,
            settings=_pairs(settings, "settings"),
            tags=_pairs(tags, "tags"),
            policy=_policy(
                every=every,
                cron=cron,
                window=window,
                grace=grace,
                max_uses=max_uses,
                jitter=jitter,
                blackout=blackout,
                tz=tz,
                max_age=max_age,
                on_risk=on_risk,
                risk_cooldown=risk_cooldown,
            ),
            value=ValueInput(
                value=None if value is None else Secret(value.encode()), generate=generate
            ),
            verify=verify,
            sinks=tuple(sinks or ()),
            principal=principal,
        )
        return credential_view(cred)

    @mcp.tool(annotations={"destructiveHint": True, "idempotentHint": False})
    @_tool_errors
    async def update_credential(
        name: NameArg,
        connector: Annotated[str | None, Field(description="New connector kind.")] = None,
        settings: Annotated[
            dict[str, str] | None,
            Field(description="New connector settings, replacing all of them."),
        ] = None,
        tags: Annotated[
            dict[str, str] | None,
            Field(description="New tags, replacing all of them.", examples=[{"env": "prod"}]),
        ] = None,
        generate: Annotated[
            bool,
            Field(description="Store a new generated value now (becomes CURRENT)."),
        ] = False,
        value: Annotated[
            str | None,
            Field(description="Store this new value now (becomes CURRENT; never returned)."),
        ] = None,
        every: _PolicyArgs.Every = None,
        cron: _PolicyArgs.Cron = None,
        window: _PolicyArgs.Window = None,
        grace: _PolicyArgs.Grace = None,
        max_uses: _PolicyArgs.MaxUses = None,
        jitter: _PolicyArgs.Jitter = None,
        blackout: _PolicyArgs.Blackout = None,
        tz: _PolicyArgs.Tz = None,
        max_age: _PolicyArgs.MaxAge = None,
        on_risk: _PolicyArgs.OnRisk = None,
        risk_cooldown: _PolicyArgs.RiskCooldown = None,
        sinks: Annotated[
            list[str] | None,
            Field(
                description="Replace the sinks (an empty list removes them all); see "
                "add_credential. Needs value.read.",
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Change a credential: connector, settings or tags (each replaced as a whole), policy
        fields (merged: only those given change), or store a new value (the old CURRENT
        becomes PREVIOUS for the grace). Fields left out stay as they are. Returns the
        updated metadata. To rotate through the target, use `rotate` instead."""
        svc, principal = await ctx()
        cred = await svc.update_credential(
            name,
            connector=connector,
            settings=None if settings is None else _pairs(settings, "settings"),
            tags=None if tags is None else _pairs(tags, "tags"),
            policy=_policy(
                every=every,
                cron=cron,
                window=window,
                grace=grace,
                max_uses=max_uses,
                jitter=jitter,
                blackout=blackout,
                tz=tz,
                max_age=max_age,
                on_risk=on_risk,
                risk_cooldown=risk_cooldown,
            ),
            value=ValueInput(
                value=None if value is None else Secret(value.encode()), generate=generate
            ),
            sinks=sinks,
            principal=principal,
        )
        return credential_view(cred)

    @mcp.tool(annotations={"destructiveHint": True})
    @_tool_errors
    async def rotate(
        names: Annotated[
            list[str] | None,
            Field(
                description="Credentials to rotate, e.g. [`prod/payments/db`].",
                examples=[["prod/payments/db"]],
            ),
        ] = None,
        tags: Annotated[
            dict[str, str] | None,
            Field(
                description="Rotate every credential with all these tags (with names: only "
                "those of the names that have them).",
                examples=[{"env": "prod"}],
            ),
        ] = None,
        all: Annotated[
            bool, Field(description="Rotate every credential (excludes names, tags).")
        ] = False,
        emergency: Annotated[
            bool,
            Field(
                description="Highest priority, grace 0: the old value is revoked at once "
                "(applications still using it fail). Prefer emergency_rotate."
            ),
        ] = False,
        dry_run: Annotated[
            bool,
            Field(description="Only return the plan (order, connector, grace); change nothing."),
        ] = False,
    ) -> dict[str, Any]:
        """Rotate credentials now (create -> set -> test -> finish; a failed test rolls back
        and the old value stays CURRENT). Select with names, tags or all. Returns
        `{"rotated": [names], "failed": [{"name", "error"}], "rolled_back": [names],
        "skipped": [...], "duration_s": seconds}`; with dry_run `{"dry_run": true, "plan":
        [...]}`. Never returns a value."""
        svc, principal = await ctx()
        sel = svc_rotation.Selection(
            names=tuple(names or ()), tags=_pairs(tags, "tags") or None, all=all
        )
        if dry_run:
            steps = await svc_rotation.plan(svc, sel, emergency=emergency, principal=principal)
            return {"dry_run": True, "plan": steps}
        result = await svc_rotation.rotate(svc, sel, emergency=emergency, principal=principal)
        return result.to_json()

    @mcp.tool(annotations={"destructiveHint": True})
    @_tool_errors
    async def emergency_rotate(
        confirm: Annotated[
            bool,
            Field(
                description="Must be true: the old values are revoked at once and every "
                "application still using them fails until it reads the new one."
            ),
        ],
        names: Annotated[
            list[str] | None,
            Field(description="Compromised credentials, e.g. [`prod/payments/db`]."),
        ] = None,
        tags: Annotated[
            dict[str, str] | None,
            Field(
                description="Rotate every credential with all these tags.",
                examples=[{"env": "prod"}],
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Emergency rotation of compromised credentials: highest priority, no grace, old
        values revoked before this returns. Returns the rotation result plus `still_valid`:
        old values whose revocation failed or is still queued (they remain usable)."""
        if not confirm:
            raise errors.InvalidInput(
                "emergency_rotate needs confirm=true (old values are revoked at once)"
            )
        if not (names or tags):
            raise errors.InvalidInput("emergency_rotate needs names or tags")
        svc, principal = await ctx()
        sel = svc_rotation.Selection(names=tuple(names or ()), tags=_pairs(tags, "tags") or None)
        result = await svc_rotation.rotate(svc, sel, emergency=True, principal=principal)
        return result.to_json()

    @mcp.tool(annotations={"destructiveHint": False})
    @_tool_errors
    async def set_policy(
        tag: Annotated[
            dict[str, str] | None,
            Field(
                description="The default applies to credentials with this ONE tag pair "
                "(exclusive with tenant).",
                examples=[{"env": "prod"}],
            ),
        ] = None,
        tenant: Annotated[
            str | None,
            Field(
                description="The default applies to the whole (caller's) tenant.",
                examples=["default"],
            ),
        ] = None,
        every: _PolicyArgs.Every = None,
        cron: _PolicyArgs.Cron = None,
        window: _PolicyArgs.Window = None,
        grace: _PolicyArgs.Grace = None,
        max_uses: _PolicyArgs.MaxUses = None,
        jitter: _PolicyArgs.Jitter = None,
        blackout: _PolicyArgs.Blackout = None,
        tz: _PolicyArgs.Tz = None,
        max_age: _PolicyArgs.MaxAge = None,
        on_risk: _PolicyArgs.OnRisk = None,
        risk_cooldown: _PolicyArgs.RiskCooldown = None,
    ) -> dict[str, Any]:
        """Set policy DEFAULTS for a tag pair or the tenant (a credential's own policy still
        wins; then a tag default; then the tenant default). Only the fields given change.
        Next rotations of the affected credentials are recomputed. Returns `{"scope",
        "policy", "affected"}`. To change one credential's own policy use update_credential."""
        svc, principal = await ctx()
        pol = _policy(
            every=every, cron=cron, window=window, grace=grace, max_uses=max_uses,
            jitter=jitter, blackout=blackout, tz=tz, max_age=max_age, on_risk=on_risk,
            risk_cooldown=risk_cooldown,
        )  # fmt: skip
        d = await svc_policies.set_default(
            svc, policy=pol, tag=_tag_pair(tag), tenant=tenant, principal=principal
        )
        return {
            "scope": d.scope,
            "policy": partial_policy_view(d.policy),
            "affected": d.affected,
        }

    @mcp.tool(annotations={"destructiveHint": True})
    @_tool_errors
    async def report_risk_event(
        kind: Annotated[
            str,
            Field(
                description="What happened, 1-64 of letters, digits, `._-`.",
                examples=["leaked-in-logs", "repo.secret-scan"],
            ),
        ],
        severity: Annotated[
            Literal["low", "medium", "high", "critical"],
            Field(
                description="By default low/medium only notify, high rotates, critical "
                "emergency-rotates (the policy's on_risk rules decide)."
            ),
        ],
        credential: Annotated[
            str | None,
            Field(
                description="The credential concerned (exclusive with tags).",
                examples=["prod/payments/db"],
            ),
        ] = None,
        tags: Annotated[
            dict[str, str] | None,
            Field(description="Every credential with these tags (exclusive with credential)."),
        ] = None,
        detail: Annotated[
            str | None,
            Field(description="Free text, up to 1000 characters. Never put a secret here."),
        ] = None,
    ) -> dict[str, Any]:
        """Report a risk signal (a leak, a suspicious login) about one credential or a tagged
        group. rotator decides per credential by its risk rules and acts (notify, rotate or
        emergency-rotate). Returns `{"event_id", "kind", "severity", "decisions": [{"name",
        "action", "reason", "outcome", "version", "error"}], "still_valid": [...]}`."""
        svc, principal = await ctx()
        event = EventInput(
            kind=kind,
            severity=severity,
            credential=credential,
            tags=_pairs(tags, "tags") or None,
            detail=detail,
        )
        report = await svc_events.report_event(svc, event, principal=principal)
        return report.to_json()

    @mcp.tool(annotations={"destructiveHint": False, "idempotentHint": False})
    @_tool_errors
    async def report_usage(
        name: NameArg,
        count: Annotated[
            int, Field(description="How many uses to add.", ge=1, le=1_000_000_000)
        ] = 1,
    ) -> dict[str, Any]:
        """Report that an application used a credential `count` times (for max-uses policies:
        reaching the limit makes it due now). Returns `{"name", "use_count"}`."""
        svc, principal = await ctx()
        cred = await svc.report_usage(name, count, principal=principal)
        return {"name": cred.name, "use_count": cred.use_count}

    @mcp.tool(annotations=read_only)
    @_tool_errors
    async def query_audit(
        credential: Annotated[
            str | None,
            Field(description="Only entries about this credential.", examples=["prod/payments/db"]),
        ] = None,
        limit: Annotated[
            int, Field(description="The newest N entries (in order).", ge=1, le=1000)
        ] = 50,
    ) -> dict[str, Any]:
        """Read the tamper-evident audit log of the caller's tenant: who did what to which
        credential, when (rotations, reads, refusals as `access.denied`, ...). Returns
        `{"entries": [{"seq", "ts", "actor", "action", "credential", "rotation_id",
        "details", ...}]}`, oldest first. Entries never hold values."""
        svc, principal = await ctx()
        if credential is not None:
            name_rules.check_credential_name(credential)
        entries = await svc.audit_entries(credential, limit, principal=principal)
        return {"entries": [e.to_json() for e in entries]}

    @mcp.tool(annotations=read_only)
    @_tool_errors
    async def compliance_report(
        format: Annotated[
            Literal["json", "csv", "html"],
            Field(description="json (an object), csv or html (text in `content`)."),
        ] = "json",
    ) -> dict[str, Any]:
        """The compliance report of the caller's tenant over the last 90 days: per credential
        its age, last rotation, overdue state, policy and reads; totals and refused accesses.
        Returns `{"format", "report"}` for json, `{"format", "content"}` for csv/html."""
        svc, principal = await ctx()
        report = await svc_reports.compliance_report(svc, principal=principal)
        if format == "json":
            return {"format": "json", "report": report.to_json()}
        return {"format": format, "content": svc_reports.render(report, format)}

    @mcp.tool(annotations={"readOnlyHint": False, "destructiveHint": False})
    @_tool_errors
    async def reveal_value(
        name: NameArg,
        stage: Annotated[
            Literal["CURRENT", "PREVIOUS", "PENDING"],
            Field(description="Which version: CURRENT (the one to use) unless told otherwise."),
        ] = "CURRENT",
    ) -> dict[str, Any]:
        """Return the SECRET VALUE of a credential. This is the ONLY tool that returns a
        value: call it only when the user explicitly asks for the value, and do not repeat
        the value elsewhere. Needs the value.read permission; every call is audited and counts
        as one use. Returns `{"name", "stage", "value"}`."""
        svc, principal = await ctx()
        secret = await svc.get_value(name, Stage(stage), principal=principal)
        return {"name": name, "stage": stage, "value": secret.reveal_text()}

    return mcp
