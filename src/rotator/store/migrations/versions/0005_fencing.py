"""Fencing of rotation ownership: each rotation row carries its owner's token.

The token changes on every takeover; every write of the rotation's state is conditioned on it.
Rows written before this migration have no token: only a takeover gives them one.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rotations") as batch:
        batch.add_column(sa.Column("fence", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rotations") as batch:
        batch.drop_column("fence")
