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
from pathlib import Path

from sqlalchemy import Engine, inspect
from sqlalchemy.exc import SQLAlchemyError

from sauce_sql import migrate
from sauce_sql.engine import DEFAULT_URL, URL_SHOWN, is_memory
from sauce_sql.errors import SauceSQLError, StoreUnavailable, unavailable
from sauce_sql.redact import safe_url, scrub
from sauce_sql.store import Store

__all__ = ["main"]


def _store(args: argparse.Namespace) -> Store:
    return Store(args.url, table_name=args.table_name, clean_interval=None)


def _require_table(engine: Engine, table_name: str) -> None:
    """Refuse to work on a table that was never migrated, creating nothing.

    ``report`` and ``cleanup`` only read and delete: connecting to a SQLite file that
    is not there would create it, and starting a store would create the table, so a
    mistyped URL or table name would pass silently.
    """
    missing = f"table {table_name!r} does not exist"
    hint = "run `sauce-sql migrate` first (or check --url and --table-name)"
    url = engine.url
    if url.get_backend_name() == "sqlite" and not is_memory(url) and "uri" not in url.query:
        path = Path(url.database or "")
        if not path.exists():
            raise StoreUnavailable(f"{missing}: there is no database file {str(path)!r}; {hint}")
    try:
        with engine.connect() as connection:
            present = inspect(connection).has_table(table_name)
    except SQLAlchemyError as exc:
        where = f"database {safe_url(url, limit=URL_SHOWN)} is unavailable"
        raise unavailable(where, exc) from exc
    if not present:
        raise StoreUnavailable(f"{missing}: {hint}")


def cmd_migrate(args: argparse.Namespace) -> int:
    store = _store(args)
    table = store.get_state().table_name  # as validated: in lower case
    try:
        migrate.is_current(store.engine, table)  # refuses a table that is not ours
        migrate.upgrade(store.engine, table, args.revision)
        revision = migrate.current(store.engine, table)
    except SauceSQLError:
        raise
    except Exception as exc:
        raise unavailable("migration failed", exc) from exc
    finally:
        store.close()
    print(f"table {table!r} is at revision {revision} in {store.get_state().url}")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    store = _store(args)
    table = store.get_state().table_name
    try:
        _require_table(store.engine, table)
        deleted = store.start().cleanup()
    finally:
        store.close()
    print(f"deleted {deleted} expired sessions from {table!r}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sauce_sql.report import build_report, format_report

    store = _store(args)
    table = store.get_state().table_name
    try:
        _require_table(store.engine, table)
        report = build_report(store.engine, table, datetime.now(timezone.utc))
    finally:
        store.close()
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from sauce_sql.demo import run_demo

    run_demo(args.url, table_name=args.table_name, visitors=args.visitors, seed=args.seed)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from sauce_sql.bench import main as run_bench

    return run_bench(args)


BENCH_SIZES = (
    "sessions",
    "rounds",
    "per-round",
    "cleanup-rows",
    "cleanup-runs",
    "hot-sessions",
    "hot-increments",
    "load-processes",
    "load-threads",
    "pool-size",
    "load-rounds",
)


def _bench_parts(text: str) -> str:
    from sauce_sql.bench import PARTS

    unknown = [part for part in text.split(",") if part.strip() not in PARTS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"no part {unknown[0]!r}; the parts are {', '.join(PARTS)}"
        )
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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
    sub.add_argument("--visitors", type=_positive_int, default=200, help="how many (default: 200)")
    sub.add_argument("--seed", type=int, default=7, help="random seed (default: 7)")
    sub.set_defaults(run=cmd_demo)
    # The benchmark makes its own tables (in --dir and --pg-url), so it takes neither
    # --url nor --table-name.
    text = "the store against raw sqlite3, psycopg and Redis"
    sub = commands.add_parser("bench", help=text, description=text)
    sub.add_argument(
        "--pg-url",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="PostgreSQL to measure on ('' to skip; default: the local test db)",
    )
    sub.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/0",
        help="Redis to compare with ('' to skip; default: the local server)",
    )
    sub.add_argument("--json", action="store_true", help="print one JSON object")
    sub.add_argument("--quick", action="store_true", help="small sizes: a minute or two")
    sub.add_argument(
        "--web",
        action="store_true",
        help="only what the web middleware adds to a request (needs sauce-sql[web])",
    )
    sub.add_argument("--dir", help="where its SQLite files go (default: a temporary dir)")
    for size in BENCH_SIZES:
        sub.add_argument(f"--{size}", type=_positive_int, help=f"override the {size}")
    sub.add_argument("--seconds", type=float, help="seconds per concurrent run")
    sub.add_argument("--load-seconds", type=float, help="seconds per round of the pooler load")
    sub.add_argument("--memory-sessions", help="session counts for the memory probe: 10000,1000000")
    sub.add_argument(
        "--only",
        type=_bench_parts,
        help="run only these parts, comma-separated: sqlite, postgresql, lean-expiry,"
        " pgbouncer, asyncio, memory",
    )
    sub.set_defaults(run=cmd_bench)
    return parser


def _one_line(exc: BaseException) -> str:
    # Whatever raised it, a password it quotes is not printed.
    return scrub(" ".join(str(exc).split()))


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
