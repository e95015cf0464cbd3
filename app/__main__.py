"""Command line: `python -m app serve | hide ID | prune --older-than DAYS [--yes]`."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from datetime import timedelta

from app.config import ConfigError, Settings
from app.models import ACTIVITY_ID_MAX

# Only ASCII digits: int() and float() also read other scripts' digits (Arabic-Indic 5), so an
# operator's stray keystroke could hide or prune something they never typed.
_ITEM_ID = re.compile(r"[0-9]+")
_DAYS = re.compile(r"[0-9]+(\.[0-9]+)?")
MIN_PRUNE_DAYS = 1  # younger items are pruned only with --yes


def _item_id(raw: str) -> int:
    if not _ITEM_ID.fullmatch(raw):
        raise argparse.ArgumentTypeError(f"{raw!r} is not a feed item id (digits 0-9 only)")
    value = int(raw)
    if not 0 < value <= ACTIVITY_ID_MAX:
        raise argparse.ArgumentTypeError(f"{raw} is not a feed item id (a positive number)")
    return value


def _days(raw: str) -> float:
    if not _DAYS.fullmatch(raw):
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not a number of days (digits 0-9, optionally with a decimal point)"
        )
    value = float(raw)
    # A negative age would reach into the future and delete every item.
    if value > 100 * 365:
        raise argparse.ArgumentTypeError(f"{raw} days: give a number from 0 to 36500")
    return value


def _config_problem() -> str | None:
    """Check the environment before anything starts (even the embedded development database).

    DATABASE_URL may be unset here (the launcher starts an embedded PostgreSQL then).
    """
    env = dict(os.environ)
    if not env.get("DATABASE_URL", "").strip():
        env["DATABASE_URL"] = "postgresql://embedded/ripple"
    try:
        Settings.from_env(env)
    except ConfigError as error:
        return str(error)
    return None


def _moderation(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from app.db import open_database
    from app.services import feed

    try:
        settings = Settings.from_env()
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2

    async def run() -> int:
        db = open_database(settings)
        try:
            if args.command == "hide":
                found = await feed.hide(db, args.item_id)
                print(f"item {args.item_id} hidden" if found else f"no item {args.item_id}")
                return 0 if found else 1
            count = await feed.prune(db, timedelta(days=args.older_than))
            print(f"removed {count} items older than {args.older_than:g} days")
            return 0
        finally:
            await db.dispose()

    try:
        return asyncio.run(run())
    except (OSError, SQLAlchemyError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(f"database error, nothing changed: {type(error).__name__}: {detail}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description="Ripple")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the web server (Procfile: web)")
    hide = sub.add_parser("hide", help="hide a feed item from everyone (moderation)")
    hide.add_argument("item_id", type=_item_id, metavar="ID")
    prune = sub.add_parser("prune", help="delete feed items older than a retention age")
    prune.add_argument("--older-than", type=_days, required=True, metavar="DAYS")
    prune.add_argument(
        "--yes",
        action="store_true",
        help=f"confirm pruning items younger than {MIN_PRUNE_DAYS} day (0 deletes everything)",
    )
    args = parser.parse_args(argv)
    if args.command == "prune" and args.older_than < MIN_PRUNE_DAYS and not args.yes:
        print(
            f"refusing --older-than {args.older_than:g}: below {MIN_PRUNE_DAYS} day it deletes "
            "recent items (0: the whole feed). Nothing deleted; add --yes to confirm.",
            file=sys.stderr,
        )
        return 2
    if args.command == "serve":
        problem = _config_problem()
        if problem is not None:
            print(f"configuration error: {problem}", file=sys.stderr)
            return 2
        from app.serve import main as serve

        serve()
        return 0
    return _moderation(args)


if __name__ == "__main__":
    sys.exit(main())
