"""Reading the audit log forward from a seq: the source of the watch feed.

Seqs are given out under the head row's lock, which is held until the appending transaction
commits (see :mod:`rotator.audit.log`), so entries become visible in seq order: a reader that
has seen seq N and later asks for ``seq > N`` never skips an entry committed in between.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import Connection, func, select

from rotator.audit.chain import AuditEntry
from rotator.audit.log import row_to_entry
from rotator.store.schema import audit_log


def last_seq(conn: Connection) -> int:
    """The newest entry's seq (0 for an empty log). Reads the primary key's index only."""
    return int(conn.execute(select(func.max(audit_log.c.seq))).scalar() or 0)


def last_seq_of(conn: Connection, tenant: str) -> int:
    """The seq of ``tenant``'s newest entry among those committed now (0: none): a feed of
    that tenant may start after it as after :func:`last_seq` (no entry of the tenant lies
    between, and none can commit there later: seqs become visible in order), without
    telling the tenant how long the whole log is."""
    newest = last_seq(conn)
    return int(
        conn.execute(
            select(func.max(audit_log.c.seq)).where(
                audit_log.c.tenant == tenant, audit_log.c.seq <= newest
            )
        ).scalar()
        or 0
    )


def entries_after(
    conn: Connection, after: int, *, tenant: str | None, actions: Collection[str], limit: int
) -> tuple[list[AuditEntry], int]:
    """Up to ``limit`` entries of ``tenant`` (None: of every tenant) with an action in
    ``actions`` and seq > ``after``, in seq order, and the seq to continue after (the last one
    returned, or ``after``). A range scan of the primary key from ``after``: cheap however
    long the log is."""
    where = [audit_log.c.seq > after, audit_log.c.action.in_(sorted(actions))]
    if tenant is not None:
        where.append(audit_log.c.tenant == tenant)
    rows = conn.execute(
        select(audit_log).where(*where).order_by(audit_log.c.seq).limit(limit)
    ).all()
    out = [row_to_entry(r) for r in rows]
    return out, (out[-1].seq if out else after)
