"""Integrity: stage-map MACs on credentials, a keyed audit chain, an append-only audit table.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28

Adds ``credentials.stage_mac``, ``audit_log.key_id``, ``audit_head.key_id`` / ``audit_head.mac``
and the ``audit_keys`` table. Sealing existing data needs the master key, which Alembic never
has: when the store already holds audit entries this migration only records the meta row
``integrity_upgrade`` and the service runs the keyed upgrade the next time it opens the store
(see ``rotator.kernel.integrity``). On PostgreSQL a trigger makes ``audit_log`` append-only:
UPDATE and DELETE are refused (an UPDATE that seals a not-yet-keyed row once, as the keyed
upgrade does, is the one exception), and so is TRUNCATE.
"""

import sqlalchemy as sa
from alembic import op

from rotator.store.schema import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION rotator_audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Nested: OLD is NULL in the statement-level TRUNCATE trigger.
    IF TG_OP = 'UPDATE' THEN
        IF OLD.key_id IS NULL AND NEW.key_id IS NOT NULL
           AND NEW.seq = OLD.seq AND NEW.ts = OLD.ts AND NEW.tenant = OLD.tenant
           AND NEW.actor = OLD.actor AND NEW.action = OLD.action
           AND NEW.credential IS NOT DISTINCT FROM OLD.credential
           AND NEW.rotation_id IS NOT DISTINCT FROM OLD.rotation_id
           AND NEW.details = OLD.details THEN
            RETURN NEW;  -- the keyed upgrade sealing a legacy entry, once
        END IF;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
"""


def upgrade() -> None:
    with op.batch_alter_table("credentials") as batch:
        batch.add_column(sa.Column("stage_mac", sa.String(96), nullable=True))
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("key_id", sa.String(32), nullable=True))
    with op.batch_alter_table("audit_head") as batch:
        batch.add_column(sa.Column("key_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("mac", sa.String(64), nullable=True))
    op.create_table(
        "audit_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("wrapped", sa.LargeBinary, nullable=False),
        sa.Column("master_key_id", sa.String(32), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    bind = op.get_bind()
    has_entries = bind.execute(sa.text("SELECT 1 FROM audit_log LIMIT 1")).first() is not None
    if has_entries:
        meta = sa.table("meta", sa.column("key", sa.String), sa.column("value", sa.JSON))
        op.bulk_insert(meta, [{"key": "integrity_upgrade", "value": {"from": "unkeyed"}}])
    if bind.dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION rotator_audit_log_append_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
            "FOR EACH STATEMENT EXECUTE FUNCTION rotator_audit_log_append_only()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log")
        op.execute("DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS rotator_audit_log_append_only()")
    op.drop_table("audit_keys")
    # "never": on SQLite, recreating a table drops the old one, and with foreign keys on that
    # cascades into versions; SQLite >= 3.35 drops a column in place.
    with op.batch_alter_table("audit_head", recreate="never") as batch:
        batch.drop_column("mac")
        batch.drop_column("key_id")
    with op.batch_alter_table("audit_log", recreate="never") as batch:
        batch.drop_column("key_id")
    with op.batch_alter_table("credentials", recreate="never") as batch:
        batch.drop_column("stage_mac")
