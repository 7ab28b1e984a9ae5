"""Scheduler claims: which worker holds a due credential, and until when.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28

Adds the ``credential_claims`` table (see store/schema.py and store/claims.py).
"""

import sqlalchemy as sa
from alembic import op

from rotator.store.schema import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "credential_claims",
        sa.Column(
            "credential_id",
            sa.Integer,
            sa.ForeignKey("credentials.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("worker", sa.String(200), nullable=False),
        sa.Column("claimed_at", UTCDateTime, nullable=False),
        sa.Column("lease_until", UTCDateTime, nullable=False),
    )
    op.create_index("ix_credential_claims_worker", "credential_claims", ["worker"])


def downgrade() -> None:
    op.drop_index("ix_credential_claims_worker", table_name="credential_claims")
    op.drop_table("credential_claims")
