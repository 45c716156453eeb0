"""Flags record what their difficulty measures: "gt" (1 - SSIM against the ground truth, 0 .. 2) or
"proxy" (1 - normalised NIQE, no reference, 0 .. 1). The two scales are not comparable, so the
Hard-samples table shows them apart and filters each against its own kind. Older flags stay NULL
(unknown): whether a ground truth was used when they were flagged was not recorded.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("flags") as batch:
        batch.add_column(sa.Column("difficulty_kind", sa.String(16)))


def downgrade() -> None:
    with op.batch_alter_table("flags") as batch:
        batch.drop_column("difficulty_kind")
