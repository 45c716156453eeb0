"""Checkpoint ids are never reused on SQLite (AUTOINCREMENT): deleting the newest checkpoint used to
hand its id to the next one, so "checkpoint #2" could name two different models over time.

SQLite can only add AUTOINCREMENT by rebuilding the table (copy, drop, rename); storage.db.migrate
runs migrations with foreign keys off on SQLite and checks them before committing, so the rebuild
keeps every row, id and parent link. PostgreSQL sequences never reuse ids: nothing to do there.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _rebuild(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("checkpoints", recreate="always",
                              table_kwargs={"sqlite_autoincrement": autoincrement}):
        pass


def upgrade() -> None:
    _rebuild(True)


def downgrade() -> None:
    _rebuild(False)
