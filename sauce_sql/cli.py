"""The ``sauce-sql`` command: a thin shell over the store, the migrations and the report.

Every subcommand takes ``--url`` (else SAUCE_SQL_URL, else the default SQLite file) and
``--table-name`` (else SAUCE_SQL_TABLE, else ``sessions``). Errors print one line on
stderr and exit with status 1; a bad command line exits with 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone

from sauce_sql import migrate
from sauce_sql.engine import DEFAULT_URL
from sauce_sql.errors import SauceSQLError, unavailable
from sauce_sql.store import Store

__all__ = ["main"]


def _store(args: argparse.Namespace) -> Store:
    return Store(args.url, table_name=args.table_name, clean_interval=None)


def cmd_migrate(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        migrate.upgrade(store.engine, args.table_name, args.revision)
        revision = migrate.current(store.engine, args.table_name)
    except Exception as exc:
        raise unavailable("migration failed", exc) from exc
    finally:
        store.close()
    print(f"table {args.table_name!r} is at revision {revision} in {store.get_state().url}")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    with _store(args) as store:
        deleted = store.cleanup()
    print(f"deleted {deleted} expired sessions from {args.table_name!r}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sauce_sql.report import build_report, format_report

    store = _store(args)
    try:
        report = build_report(store.engine, args.table_name, datetime.now(timezone.utc))
    finally:
        store.close()
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from sauce_sql.demo import run_demo

    run_demo(args.url, table_name=args.table_name, visitors=args.visitors, seed=args.seed)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sauce-sql", description="Durable analytics sessions in a SQL table."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, *, url_default: str | None) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--url",
            default=os.environ.get("SAUCE_SQL_URL") or url_default,
            help="database URL (default: $SAUCE_SQL_URL, else "
            + (url_default or "a new temporary file")
            + ")",
        )
        sub.add_argument(
            "--table-name",
            default=os.environ.get("SAUCE_SQL_TABLE") or "sessions",
            help="sessions table (default: $SAUCE_SQL_TABLE, else sessions)",
        )
        return sub

    sub = command("migrate", "bring the table to the current schema", url_default=DEFAULT_URL)
    sub.add_argument("--revision", default="head", help="target revision (default: head)")
    sub.set_defaults(run=cmd_migrate)
    sub = command("cleanup", "delete expired sessions", url_default=DEFAULT_URL)
    sub.set_defaults(run=cmd_cleanup)
    sub = command("report", "what the sessions say", url_default=DEFAULT_URL)
    sub.add_argument("--json", action="store_true", help="print one JSON object")
    sub.set_defaults(run=cmd_report)
    sub = command("demo", "simulated visitors across a restart, then a report", url_default=None)
    sub.add_argument("--visitors", type=int, default=200, help="how many (default: 200)")
    sub.add_argument("--seed", type=int, default=7, help="random seed (default: 7)")
    sub.set_defaults(run=cmd_demo)
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        status: int = args.run(args)
    except SauceSQLError as exc:
        print(f"sauce-sql: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line, never a traceback, whatever went wrong
        print(f"sauce-sql: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1
    return status
