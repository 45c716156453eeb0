"""Background restores: a restore expected to take over a minute leaves the interactive queue and is run by
the app's background runner; its request, state, progress, cancel flag and result files are stored here, so
the Restore tab shows them to their owner and an app restart queues a running one again.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-10
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "background_restores",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("progress", sa.Float, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("files", sa.JSON, nullable=False),
        sa.Column("runner", sa.String(128), nullable=True),
        sa.Column("heartbeat", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_background_restores_state", "background_restores", ["state", "id"])
    op.create_index("ix_background_restores_user", "background_restores", ["user", "id"])


def downgrade() -> None:
    op.drop_index("ix_background_restores_user", table_name="background_restores")
    op.drop_index("ix_background_restores_state", table_name="background_restores")
    op.drop_table("background_restores")
