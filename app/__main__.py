"""Command line: `python -m app serve | hide ID | prune --older-than DAYS`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import timedelta

from app.config import Settings


def _moderation(args: argparse.Namespace) -> int:
    from app.db import Database, create_engine
    from app.services import feed

    async def run() -> int:
        db = Database(create_engine(Settings.from_env()))
        try:
            if args.command == "hide":
                found = await feed.hide(db, args.item_id)
                print(f"item {args.item_id} hidden" if found else f"no item {args.item_id}")
                return 0 if found else 1
            count = await feed.prune(db, timedelta(days=args.older_than))
            print(f"removed {count} items older than {args.older_than} days")
            return 0
        finally:
            await db.dispose()

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description="Ripple")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the web server (Procfile: web)")
    hide = sub.add_parser("hide", help="hide a feed item from everyone (moderation)")
    hide.add_argument("item_id", type=int)
    prune = sub.add_parser("prune", help="delete feed items older than a retention age")
    prune.add_argument("--older-than", type=float, required=True, metavar="DAYS")
    args = parser.parse_args(argv)
    if args.command == "serve":
        from app.serve import main as serve

        serve()
        return 0
    return _moderation(args)


if __name__ == "__main__":
    sys.exit(main())
