"""Staggered rollouts: the ``rollouts`` and ``rollout_items`` tables.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

from rotator.store.schema import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.Integer, sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("selector", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stagger_s", sa.Integer, nullable=False),
        sa.Column("max_per_minute", sa.Float, nullable=False),
        sa.Column("halt_pct", sa.Integer, nullable=False),
        sa.Column("halt_window", sa.Integer, nullable=False),
        sa.Column("halt_reason", sa.Text, nullable=True),
        sa.Column("finished_count", sa.Integer, nullable=False),
        sa.Column("window_floor", sa.Integer, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime, nullable=True),
    )
    op.create_index("ix_rollouts_status", "rollouts", ["status"])
    op.create_table(
        "rollout_items",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "rollout_id",
            sa.String(36),
            sa.ForeignKey("rollouts.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("credential", sa.String(200), nullable=False),
        sa.Column("planned_at", UTCDateTime, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("claimed_by", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", UTCDateTime, nullable=True),
        sa.Column("started_at", UTCDateTime, nullable=True),
        sa.Column("finished_at", UTCDateTime, nullable=True),
        sa.Column("finish_no", sa.Integer, nullable=True),
        sa.Column("rotation_id", sa.String(36), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.UniqueConstraint("rollout_id", "credential", name="uq_rollout_items_rollout_credential"),
    )
    op.create_index("ix_rollout_items_status_planned", "rollout_items", ["status", "planned_at"])
    op.create_index("ix_rollout_items_rollout_status", "rollout_items", ["rollout_id", "status"])


def downgrade() -> None:
    op.drop_table("rollout_items")
    op.drop_table("rollouts")
