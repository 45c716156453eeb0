"""Samples carry tags (the Hard-samples tab adds and removes them, several samples at a time, and filters
by them), stored as ",tag1,tag2," so one tag matches with LIKE on SQLite and PostgreSQL alike.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("samples") as batch:
        batch.add_column(sa.Column("tags", sa.String(512), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("samples") as batch:
        batch.drop_column("tags")
