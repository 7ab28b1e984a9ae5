"""Chained audit checkpoints: ``audit_checkpoints.prev_seq`` and ``prev_digest``.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-28

The signed body (v2) names the previous checkpoint's seq and digest. Rows written before
(v1, never released) keep NULLs there: they do not verify, and rotator refuses to extend them.
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_checkpoints") as batch:
        batch.add_column(sa.Column("prev_seq", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("prev_digest", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_checkpoints") as batch:
        batch.drop_column("prev_digest")
        batch.drop_column("prev_seq")
