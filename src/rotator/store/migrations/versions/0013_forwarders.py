"""SIEM forwarding: the ``audit_forwarders`` table.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

from rotator.store.schema import UTCDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_forwarders",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        # The name's namespace: the tenant's name, or "*" for the owner's every-tenant
        # forwarders (tenant_id NULL). Names are unique per namespace, so one tenant
        # cannot learn another's forwarder names from a name clash.
        sa.Column("scope_key", sa.String(200), nullable=False),
        sa.Column("tenant_id", sa.Integer, sa.ForeignKey("tenants.id"), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("options", sa.JSON, nullable=False),
        sa.Column("cursor", sa.BigInteger, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("claimed_by", sa.String(200), nullable=True),
        sa.Column("lease_until", UTCDateTime, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("last_attempt_at", UTCDateTime, nullable=True),
        sa.Column("delivered", sa.BigInteger, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("scope_key", "name", name="uq_audit_forwarders_scope_name"),
    )


def downgrade() -> None:
    op.drop_table("audit_forwarders")
