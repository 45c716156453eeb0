"""A finished job's before and after: each of its samples (and its held-out crops) restored by the base
model and by the new one, with the numbers, so the Fine-tune tab can show whether the job paid off.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "comparisons",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("subset", sa.String(16), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("sample_id", sa.Integer, sa.ForeignKey("samples.id", ondelete="SET NULL"), nullable=True),
        sa.Column("lq_path", sa.String(512), nullable=False),
        sa.Column("base_path", sa.String(512), nullable=False),
        sa.Column("new_path", sa.String(512), nullable=False),
        sa.Column("gt_path", sa.String(512), nullable=True),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_comparisons_job", "comparisons", ["job_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_comparisons_job", table_name="comparisons")
    op.drop_table("comparisons")
