"""The compliance report use case and its formats (json, csv, html).

``compliance`` checks the principal may read reports (REPORT_READ, tenant-wide), reads the
tenant's facts with a few aggregate queries (``rotator.store.reports``) and builds the report
with the pure figures of ``rotator.policy.compliance``. It writes nothing (a denial is
audited, as every denial) and never creates a tenant. No format holds a value: the report
is built from metadata, rotation rows and audit entries, none of which holds one.
"""

from __future__ import annotations

import asyncio
import csv
import html
import io
import json
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection

from rotator.domain import names
from rotator.domain.policy import parse_duration
from rotator.domain.principal import LOCAL_PRINCIPAL, Action, Principal
from rotator.errors import InvalidInput, NotFound
from rotator.policy import compliance
from rotator.policy.compliance import CredentialRow, Report, iso, seconds
from rotator.service.credentials import RotatorService
from rotator.store import reports as store_reports

FORMATS = ("json", "csv", "html")
DEFAULT_SINCE = "90d"

CSV_COLUMNS = (
    "name",
    "connector",
    "tags",
    "password_kind",
    "age_s",
    "max_age_s",
    "max_source",
    "last_rotation_at",
    "last_rotation_trigger",
    "last_rotation_result",
    "last_rotation_error",
    "next_rotation_at",
    "previous_revoked_at",
    "previous_revoke_due",
    "rotations_finished",
    "rotations_failed",
    "rotations_rolled_back",
    "reads",
    "readers",
    "last_read_at",
    "overdue",
    "never_rotated",
    "older_than_policy",
    "revoke_overdue",
)
"""The CSV's columns, in order (a stable contract: add at the end)."""


def parse_since(text: str) -> timedelta:
    """``--since DURATION`` (``90d``, ``12h``): InvalidInput naming --since unless a
    duration longer than zero."""
    period = parse_duration(text, "--since")
    if period <= timedelta(0):
        raise InvalidInput("--since must be longer than zero")
    return period


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown --format {fmt[:40]!r}: expected json, csv or html")
    return fmt


async def compliance_report(
    svc: RotatorService,
    *,
    tenant: str | None = None,
    since: timedelta = timedelta(days=90),
    principal: Principal = LOCAL_PRINCIPAL,
) -> Report:
    """The compliance report of ``tenant`` (default: the principal's) at the service clock's
    now, counting rotations and reads of the last ``since``.

    Raises PermissionDenied (audited) unless the principal holds REPORT_READ tenant-wide in
    its tenant, and for another tenant unless it may act there (the store's owner);
    InvalidInput for a malformed tenant name or a period not longer than zero; NotFound when
    the tenant does not exist (nothing is created). Reads only."""
    if since <= timedelta(0):
        raise InvalidInput("--since must be longer than zero")
    await svc.authorize(principal, Action.REPORT_READ)
    name = principal.tenant if tenant is None else tenant
    names.check_tenant_name(name)
    await svc.authorize_tenant(principal, name, Action.REPORT_READ)
    try:
        t = await asyncio.to_thread(svc.kernel.find_tenant, name)
    except NotFound:
        raise NotFound(f"no tenant {name!r}") from None
    now = svc.clock()
    start = now - since

    def read(conn: Connection) -> tuple[list[compliance.CredentialFacts], int]:
        facts = store_reports.credential_facts(conn, t.id, t.name, start)
        return facts, store_reports.denials(conn, t.name, start)

    facts, denied = await svc.engine.runtime.read(read)
    return compliance.build(facts, tenant=t.name, now=now, since=start, denied=denied)


# -- formats -------------------------------------------------------------------------------


def to_json(report: Report) -> str:
    return json.dumps(report.to_json(), indent=2) + "\n"


def _csv_row(r: CredentialRow) -> list[Any]:
    last = r.last
    return [
        r.name,
        r.connector,
        ";".join(f"{k}={v}" for k, v in r.tags.items()),
        _bool(r.password_kind),
        _num(seconds(r.age)),
        _num(seconds(r.maximum.value)),
        r.maximum.source or "",
        iso(last.at) if last else "",
        last.trigger if last else "",
        last.result if last else "",
        (last.error or "") if last else "",
        iso(r.next_rotation_at) or "",
        iso(r.previous_revoked_at) or "",
        iso(r.previous_revoke_due) or "",
        r.period_results["finished"],
        r.period_results["failed"],
        r.period_results["rolled_back"],
        r.reads,
        ";".join(f"{x.actor}:{x.count}" for x in r.readers),
        iso(r.last_read_at) or "",
        _bool(r.overdue),
        _bool(r.never_rotated),
        _bool(r.older_than_policy),
        _bool(r.revoke_overdue),
    ]


def _bool(b: bool) -> str:
    return "true" if b else "false"


def _num(x: float | None) -> str:
    if x is None:
        return ""
    return str(int(x)) if x == int(x) else repr(x)


# A spreadsheet runs a cell starting with one of these as a formula (OWASP "CSV Injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(v: Any) -> Any:
    """``v``, with a leading ``'`` when it is text a spreadsheet would run as a formula (an
    error message, a name read from the store): shown as text, never evaluated."""
    if isinstance(v, str) and v.startswith(_FORMULA_START):
        return "'" + v
    return v


def to_csv(report: Report) -> str:
    """One row per credential after a header of :data:`CSV_COLUMNS` (RFC 4180: CRLF line
    ends, fields quoted when they need it). Empty fields for what does not apply. A text
    field starting with ``=``, ``+``, ``-``, ``@``, tab or CR gets a leading ``'``."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for r in report.credentials:
        w.writerow([_cell(v) for v in _csv_row(r)])
    return buf.getvalue()


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #bbb;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#eee}.attention{color:#a40000;font-weight:bold}.pass{color:#216e00}
.flag{color:#a40000}
"""


def to_html(report: Report) -> str:
    """One self-contained page (inline style, no script, no external asset): summary,
    controls, then a table of credentials. Every value from the store is HTML-escaped."""
    e = html.escape
    data = report.to_json()
    s = data["summary"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>rotator compliance report: {e(report.tenant)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Compliance report: tenant {e(report.tenant)}</h1>",
        f"<p>Generated {e(str(data['generated_at']))}; period from {e(str(data['since']))}.</p>",
        f"<p><em>{e(compliance.DISCLAIMER)}</em></p>",
        '<h2>Summary</h2><table id="summary"><tr><th>figure</th><th>value</th></tr>',
    ]
    for k, v in s.items():
        shown = json.dumps(v) if isinstance(v, dict) else ("" if v is None else str(v))
        parts.append(f"<tr><td>{e(k)}</td><td>{e(shown)}</td></tr>")
    parts.append("</table>")
    parts.append(
        '<h2>Controls</h2><table id="controls"><tr><th>framework</th><th>control</th>'
        "<th>title</th><th>evidence</th><th>figures</th><th>status</th><th>reason</th></tr>"
    )
    for c in data["controls"]:
        parts.append(
            "<tr>"
            f"<td>{e(c['framework'])}</td><td>{e(c['id'])}</td><td>{e(c['title'])}</td>"
            f"<td>{e(c['evidence'])}</td><td>{e(json.dumps(c['figures']))}</td>"
            f'<td class="{e(c["status"])}">{e(c["status"])}</td><td>{e(c["reason"])}</td>'
            "</tr>"
        )
    parts.append("</table>")
    parts.append('<h2>Credentials</h2><table id="credentials"><tr>')
    parts.extend(f"<th>{e(col)}</th>" for col in CSV_COLUMNS)
    parts.append("</tr>")
    for r in report.credentials:
        parts.append("<tr>")
        for col, v in zip(CSV_COLUMNS, _csv_row(r), strict=True):
            cls = ' class="flag"' if v == "true" and col in _FLAGS else ""
            parts.append(f"<td{cls}>{e(str(v))}</td>")
        parts.append("</tr>")
    parts.append("</table></body></html>\n")
    return "\n".join(parts)


_FLAGS = frozenset({"overdue", "never_rotated", "older_than_policy", "revoke_overdue"})


def render(report: Report, fmt: str) -> str:
    """The report in ``fmt`` (json, csv or html); InvalidInput for another format."""
    return {"json": to_json, "csv": to_csv, "html": to_html}[check_format(fmt)](report)


__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_SINCE",
    "FORMATS",
    "check_format",
    "compliance_report",
    "parse_since",
    "render",
]
