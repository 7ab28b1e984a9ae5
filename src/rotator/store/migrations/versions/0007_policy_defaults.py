"""Policy defaults by tag and tenant.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28

Adds the ``policy_defaults`` table (a partial policy per tenant and tag pair, or per tenant)
and ``credentials.policy_own`` (the fields a credential sets itself; NULL on existing rows,
meaning every field of ``credentials.policy``) and ``credentials.next_rotation_rule``.
"""

import sqlalchemy as sa
from alembic import op

from rotator.store.schema import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("credentials") as batch:
        batch.add_column(sa.Column("policy_own", sa.JSON, nullable=True))
        batch.add_column(sa.Column("next_rotation_rule", sa.String(300), nullable=True))
    op.create_table(
        "policy_defaults",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.Integer, sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("tag_key", sa.String(64), nullable=False),
        sa.Column("tag_value", sa.String(1024), nullable=False),
        sa.Column("policy", sa.JSON, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("tenant_id", "tag_key", "tag_value", name="uq_policy_defaults_scope"),
    )


def downgrade() -> None:
    op.drop_table("policy_defaults")
    # "never": on SQLite, recreating a table drops the old one, and with foreign keys on that
    # cascades into versions; SQLite >= 3.35 drops a column in place.
    with op.batch_alter_table("credentials", recreate="never") as batch:
        batch.drop_column("next_rotation_rule")
        batch.drop_column("policy_own")
