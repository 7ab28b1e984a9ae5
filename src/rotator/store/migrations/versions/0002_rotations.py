"""Rotations (intents), per-credential locks, revocation queue.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

from rotator.store.schema import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rotations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "credential_id",
            sa.Integer,
            sa.ForeignKey("credentials.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("tenant_id", sa.Integer, sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("credential", sa.String(200), nullable=False),
        sa.Column("batch_id", sa.String(36), nullable=True),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("step", sa.String(16), nullable=False),
        sa.Column("grace_s", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("owner", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", UTCDateTime, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime, nullable=True),
    )
    op.create_index("ix_rotations_step_lease", "rotations", ["step", "lease_expires_at"])
    op.create_index("ix_rotations_credential", "rotations", ["credential_id"])
    op.create_index("ix_rotations_batch", "rotations", ["batch_id"])
    op.create_table(
        "credential_locks",
        sa.Column(
            "credential_id",
            sa.Integer,
            sa.ForeignKey("credentials.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("rotation_id", sa.String(36), nullable=False),
        sa.Column("acquired_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "revocations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "credential_id",
            sa.Integer,
            sa.ForeignKey("credentials.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("due_at", UTCDateTime, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.UniqueConstraint("credential_id", "version", name="uq_revocations_credential_version"),
    )
    op.create_index("ix_revocations_due_at", "revocations", ["due_at"])


def downgrade() -> None:
    for table in ("revocations", "credential_locks", "rotations"):
        op.drop_table(table)
