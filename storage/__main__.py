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
    from alembic.util import CommandError

    url_help = "database URL (default: DARL_DATABASE_URL, else the SQLite file)"
    common = argparse.ArgumentParser(add_help=False)  # --url also after the command (then it wins)
    common.add_argument("--url", default=argparse.SUPPRESS, help=url_help)
    ap = argparse.ArgumentParser(prog="python -m storage", description="Inspect and apply the DARL store's migrations.")
    ap.add_argument("--url", default=None, help=url_help)
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("current", parents=[common], help="the database's revision and the newest one")
    sub.add_parser("history", parents=[common], help="every revision, applied ones marked")
    m = sub.add_parser("migrate", parents=[common], help="upgrade to the newest revision, or go up or down to REVISION")
    m.add_argument("revision", nargs="?", default="head", help="a revision id, head, base, or -N (N steps down)")
    m.add_argument("--yes", action="store_true", help="confirm a downgrade (it drops columns or tables, with their data)")
    args = ap.parse_args(argv)
    engine = make_engine(args.url or database_url())
    where = engine.url.render_as_string(hide_password=True)
    try:
        current, history = _revisions(engine)
        head = history[-1][0]
        revs = [r for r, _ in history]
        if args.command == "current":
            print(f"{where}: at {current or 'base (empty)'}; newest {head}"
                  + ("" if current == head else " (run `python -m storage migrate`)"))
        elif args.command == "history":
            applied = set(revs[: revs.index(current) + 1]) if current else set()
            for rev, doc in history:
                print(f"{'*' if rev in applied else ' '} {rev}  {doc}")
            print("(* applied)")
        else:
            target = args.revision
            down = target == "base" or target.startswith("-") or (
                target in revs and current in revs and revs.index(target) < revs.index(current))
            if target not in ("head", "base") and target not in revs and not (
                    target.startswith("-") and target[1:].isdigit()):
                print(f"error: unknown revision {target!r}; use head, base, -N or one of {', '.join(revs)}",
                      file=sys.stderr)
                return 2
            if down and not args.yes:
                print(f"error: going down to {target} drops columns or tables with their data; back up {where} "
                      f"and add --yes", file=sys.stderr)
                return 2
            migrate(engine, target)
            after, _ = _revisions(engine)
            print(f"{where}: {current or 'base'} -> {after or 'base'}")
    except StoreUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except CommandError as e:  # e.g. more steps down than there are revisions
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
