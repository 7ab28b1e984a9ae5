"""Rotation jobs of the REST API: the ``rotation_jobs`` table.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

from rotator.store.schema import UTCDateTime

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rotation_jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.Integer, sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("requested_by", sa.String(200), nullable=False),
        sa.Column("selector", sa.JSON, nullable=False),
        sa.Column("credentials", sa.JSON, nullable=False),
        sa.Column("emergency", sa.Boolean, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("lease_until", UTCDateTime, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime, nullable=True),
    )
    op.create_index("ix_rotation_jobs_tenant_id", "rotation_jobs", ["tenant_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_rotation_jobs_tenant_id", table_name="rotation_jobs")
    op.drop_table("rotation_jobs")
