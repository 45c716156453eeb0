"""Inspect and apply the store's migrations before a deploy (the app and workers also migrate on start).

    python -m storage current              # the database's revision, and the newest one
    python -m storage history              # every revision, oldest first, applied ones marked
    python -m storage migrate              # upgrade to the newest revision
    python -m storage migrate 0003         # up or down to a revision ("base": an empty schema)

The database is DARL_DATABASE_URL, else the SQLite file under DARL_DATA_DIR (as for the app), or --url.
"""

from __future__ import annotations

import argparse
import sys

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from .db import StoreUnavailable, _alembic_config, database_url, make_engine, migrate


def _summary(doc: str, width: int = 110) -> str:
    """A migration's first paragraph on one line, shortened to ``width``."""
    text = " ".join(doc.strip().split("\n\n")[0].split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _revisions(engine: Engine) -> tuple[str | None, list[tuple[str, str]]]:
    """The database's current revision and (revision, first docstring line) of every script, oldest first."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(_alembic_config(engine))
    history = [(s.revision, _summary(s.doc or "")) for s in reversed(list(scripts.walk_revisions()))]
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except DBAPIError as e:
        raise StoreUnavailable(f"database {engine.url.render_as_string(hide_password=True)} is unreachable: {e}") from e
    return current, history


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m storage", description="Inspect and apply the DARL store's migrations.")
    ap.add_argument("--url", default=None, help="database URL (default: DARL_DATABASE_URL, else the SQLite file)")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("current", help="the database's revision and the newest one")
    sub.add_parser("history", help="every revision, applied ones marked")
    m = sub.add_parser("migrate", help="upgrade to the newest revision, or go up or down to REVISION")
    m.add_argument("revision", nargs="?", default="head", help="a revision id, head, base, or -N (N steps down)")
    args = ap.parse_args(argv)
    engine = make_engine(args.url or database_url())
    where = engine.url.render_as_string(hide_password=True)
    try:
        current, history = _revisions(engine)
        head = history[-1][0]
        if args.command == "current":
            print(f"{where}: at {current or 'base (empty)'}; newest {head}"
                  + ("" if current == head else " (run `python -m storage migrate`)"))
        elif args.command == "history":
            applied = {r for r, _ in history[: [r for r, _ in history].index(current) + 1]} if current else set()
            for rev, doc in history:
                print(f"{'*' if rev in applied else ' '} {rev}  {doc}")
            print("(* applied)")
        else:
            migrate(engine, args.revision)
            after, _ = _revisions(engine)
            print(f"{where}: {current or 'base'} -> {after or 'base'}")
    except StoreUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
