"""Each model's scores on a flagged sample (PSNR and SSIM against its ground truth, NIQE without one), so the
Hard-samples table shows a column per model and metric, and sorts by the worst score and by how much the models
disagree. Written when a sample is restored from the Hard-samples tab (its view, or a bulk import that measures);
a job's before and after is read from ``comparisons`` (0008), not copied here.

Flags gain ``undoes``: a flag event appended by an undo names the event it undoes, so the next undo goes one
further back and the history keeps both.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sample_scores",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sample_id", sa.Integer, sa.ForeignKey("samples.id", ondelete="CASCADE"), nullable=False),
        sa.Column("model", sa.String(512), nullable=False),
        sa.Column("psnr", sa.Float, nullable=True),
        sa.Column("ssim", sa.Float, nullable=True),
        sa.Column("niqe", sa.Float, nullable=True),
        sa.Column("steps", sa.Integer, nullable=True),
        sa.Column("user", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_sample_scores_sample", "sample_scores", ["sample_id", "model"])
    with op.batch_alter_table("flags") as batch:
        batch.add_column(sa.Column("undoes", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("flags") as batch:
        batch.drop_column("undoes")
    op.drop_index("ix_sample_scores_sample", table_name="sample_scores")
    op.drop_table("sample_scores")
