"""Signed audit checkpoints: the ``audit_signing_keys`` and ``audit_checkpoints`` tables.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-28

Also indexes ``audit_log.rotation_id`` (an evidence record reads a rotation's entries),
``audit_log(tenant, action, ts)`` and ``rotations(tenant_id, created_at)`` (the compliance
report's queries).
Nothing existing is changed: a store gets its first checkpoint when one is made.
"""

import sqlalchemy as sa
from alembic import op

from rotator.store.schema import UTCDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_signing_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("public_key", sa.LargeBinary, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
    )
    op.create_index("ix_audit_log_rotation_id", "audit_log", ["rotation_id"])
    op.create_index("ix_audit_log_tenant_action_ts", "audit_log", ["tenant", "action", "ts"])
    op.create_index("ix_rotations_tenant_created", "rotations", ["tenant_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_rotations_tenant_created", table_name="rotations")
    op.drop_index("ix_audit_log_tenant_action_ts", table_name="audit_log")
    op.drop_index("ix_audit_log_rotation_id", table_name="audit_log")
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_signing_keys")
