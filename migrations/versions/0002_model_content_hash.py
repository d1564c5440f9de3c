"""models.content_hash: a checkpoint model is identified by its file's content

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 08:05:00.000000

Rows written before this revision get NULL: the content their vectors came from is unknown. The
engine records the checkpoint's present digest the next time that model indexes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("content_hash", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("content_hash")
