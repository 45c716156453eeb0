"""An audit log: every change a user makes that is not itself a row with their name (tags, job
cancellation, promotion, deletion of a checkpoint) is recorded with the user who made it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user", sa.String(128), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_events_target", "events", ["target", "id"])


def downgrade() -> None:
    op.drop_index("ix_events_target", table_name="events")
    op.drop_table("events")
