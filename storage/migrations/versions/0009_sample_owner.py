"""Ownership follows the flag, not the bytes: a sample belongs to the user who flagged it, and a second
user's flag of the same image is that user's own sample (their own tags and ground truth), so one user's
ground truth never replaces another's. The unique content hash becomes unique (content hash, owner).

Existing samples get the user of their first flag as owner; one that several users flagged stays shared
as it was (each standing flag's user remains an owner). The downgrade merges each image's per-user
samples into its oldest one (their flags and comparisons move there), since the old schema holds one.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# names SQLite's unnamed UNIQUE (content_hash) of 0001 when a batch operation reflects the table
NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def upgrade() -> None:
    with op.batch_alter_table("samples") as batch:
        batch.add_column(sa.Column("owner", sa.String(128), nullable=False, server_default="anonymous"))
    op.execute('UPDATE samples SET owner = COALESCE((SELECT f."user" FROM flags f WHERE f.sample_id = samples.id '
               "ORDER BY f.id LIMIT 1), 'anonymous')")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("samples_content_hash_key", "samples", type_="unique")
        op.create_unique_constraint("uq_samples_content_owner", "samples", ["content_hash", "owner"])
    else:
        with op.batch_alter_table("samples", recreate="always", naming_convention=NAMES) as batch:
            batch.drop_constraint("uq_samples_content_hash", type_="unique")
            batch.create_unique_constraint("uq_samples_content_owner", ["content_hash", "owner"])


def downgrade() -> None:
    keep = "(SELECT MIN(k.id) FROM samples k WHERE k.content_hash = samples.content_hash)"
    for table, column in (("flags", "sample_id"), ("comparisons", "sample_id")):
        op.execute(f"UPDATE {table} SET {column} = (SELECT MIN(k.id) FROM samples k, samples s WHERE s.id = "
                   f"{table}.{column} AND k.content_hash = s.content_hash) WHERE {column} IS NOT NULL")
    op.execute(f"DELETE FROM samples WHERE id <> {keep}")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("uq_samples_content_owner", "samples", type_="unique")
        op.create_unique_constraint("samples_content_hash_key", "samples", ["content_hash"])
        op.drop_column("samples", "owner")
    else:
        with op.batch_alter_table("samples", recreate="always") as batch:
            batch.drop_constraint("uq_samples_content_owner", type_="unique")
            batch.create_unique_constraint("uq_samples_content_hash", ["content_hash"])
            batch.drop_column("owner")
