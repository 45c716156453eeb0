"""Engines and migrations: SQLite under the data directory by default, PostgreSQL for teams.

* ``DARL_DATABASE_URL`` (e.g. ``postgresql+psycopg://user:pw@host/darl``) selects
  the database; without it, ``sqlite:///{data_dir}/darl.db``.
* ``DARL_DATA_DIR`` (default ``./data``) holds the SQLite file and the
  content-addressed image blobs.
* SQLite connections get WAL, a 60 s busy timeout and foreign keys, and
  every transaction starts with ``BEGIN IMMEDIATE`` (a writer takes the lock
  up front instead of failing with "database is locked" on upgrade).
* ``migrate(engine)`` applies the Alembic migrations up to head; the run
  command and the store do it on start.
"""

from __future__ import annotations

import os
from typing import Any
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError

__all__ = ["StoreUnavailable", "data_dir", "database_url", "make_engine", "migrate"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class StoreUnavailable(RuntimeError):
    """The database cannot be reached; the message says which one and why."""


def data_dir() -> Path:
    return Path(os.environ.get("DARL_DATA_DIR", "data")).resolve()


def database_url(directory: Path | None = None) -> str:
    url = os.environ.get("DARL_DATABASE_URL")
    if url:
        return url
    directory = directory or data_dir()
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / 'darl.db'}"


def make_engine(url: str | None = None) -> Engine:
    url = url or database_url()
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: object, _rec: object) -> None:
            dbapi_conn.isolation_level = None  # type: ignore[attr-defined]  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
            cur.execute("PRAGMA busy_timeout=60000")  # first: the WAL switch below may have to wait too
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: object) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # type: ignore[attr-defined]

        return engine
    return create_engine(url, pool_pre_ping=True)


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade (or, with a revision like "-1" / "base", downgrade) the schema."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = _alembic_config(engine)
    try:
        if revision == "head":
            # Already at head (every start but the first): a short read, no migration lock held
            # while Alembic loads its scripts. Many processes start at once; they must not queue here.
            head = ScriptDirectory.from_config(cfg).get_current_head()
            with engine.connect() as conn:
                if MigrationContext.configure(conn).get_current_revision() == head:
                    return
        sqlite = engine.dialect.name == "sqlite"
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            if sqlite:
                # Rebuilding a table (Alembic batch mode: copy, drop, rename) with foreign keys on would
                # fire the ON DELETE actions of the rows referring to it; the pragma only takes effect
                # outside a transaction, so it is switched here, and every key is checked before commit.
                raw.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
            try:
                with conn.begin():
                    if engine.dialect.name == "postgresql":
                        # Workers and apps starting together must not migrate at the same time.
                        conn.execute(text("SELECT pg_advisory_xact_lock(7245190001)"))
                    cfg.attributes["connection"] = conn
                    if revision in ("base",) or revision.startswith("-"):
                        command.downgrade(cfg, revision)
                    else:
                        command.upgrade(cfg, revision)
                    if sqlite:
                        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                        if broken:
                            raise RuntimeError(f"migration to {revision} broke foreign keys: {broken[:5]}")
            finally:
                if sqlite:
                    raw.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]
    except OperationalError as e:
        raise StoreUnavailable(f"database {engine.url.render_as_string(hide_password=True)} is unreachable: "
                               f"{e.orig}") from e
