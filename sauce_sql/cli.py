"""The ``sauce-sql`` command: a thin shell over the store, the migrations and the report.

Every subcommand takes ``--url`` (else SAUCE_SQL_URL, else the default SQLite file;
``demo`` and ``bench`` make their own databases) and ``--table-name`` (else
SAUCE_SQL_TABLE, else ``sessions``). Errors print one line on stderr and exit with
status 1; a bad command line (usage error) exits with 2; Ctrl-C with 130. Output cut
short by a closed pipe (``| head``) ends quietly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import Engine, inspect
from sqlalchemy.exc import SQLAlchemyError

from sauce_sql import __version__, migrate
from sauce_sql.backends.sqlite.dialect import file_path
from sauce_sql.engine import DEFAULT_URL, URL_SHOWN
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
    path = file_path(url)
    if path is not None and not path.exists():
        raise StoreUnavailable(f"{missing}: there is no database file {str(path)!r}; {hint}")
    try:
        with engine.connect() as connection:
            present = inspect(connection).has_table(table_name)
    except SQLAlchemyError as exc:
        where = f"database {safe_url(url, limit=URL_SHOWN)} is unavailable"
        raise unavailable(where, exc) from exc
    if not present:
        raise StoreUnavailable(f"{missing}: {hint}")


def _sqlite_file(engine: Engine) -> Path | None:
    """The file behind a SQLite file URL (None for memory, URI forms and servers)."""
    return file_path(engine.url)


@contextlib.contextmanager
def _no_new_file_on_failure(path: Path | None) -> Iterator[None]:
    """Remove the SQLite file (and its log files) a failing command created."""
    existed = path is None or path.exists()
    try:
        yield
    except BaseException:
        if not existed and path is not None:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(OSError):
                    Path(f"{path}{suffix}").unlink()
        raise


def cmd_migrate(args: argparse.Namespace) -> int:
    store = _store(args)
    table = store.get_state().table_name  # as validated: in lower case
    path = _sqlite_file(store.engine)
    where = "migration failed"
    if path is not None:
        where = f"migration failed on database file {str(path)!r} ({path.resolve()})"
    with _no_new_file_on_failure(path):
        try:
            migrate.is_current(store.engine, table)  # refuses a table that is not ours
            migrate.upgrade(store.engine, table, args.revision)
            revision = migrate.current(store.engine, table)
        except SauceSQLError:
            raise
        except Exception as exc:
            raise unavailable(where, exc) from exc
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


def cmd_forget(args: argparse.Namespace) -> int:
    store = _store(args)
    table = store.get_state().table_name
    try:
        _require_table(store.engine, table)
        store.start()
        if args.user is not None:
            gone, what = store.forget_user(args.user), f"user {args.user!r}"
        else:
            gone, what = store.forget_session(args.session), f"session {args.session!r}"
    finally:
        store.close()
    print(f"deleted {gone} sessions of {what} from {table!r} and its history")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sauce_sql.report import build_report, format_report, zone

    zone(args.tz)  # an unknown zone is the caller's mistake, said before any work
    store = _store(args)
    table = store.get_state().table_name
    try:
        _require_table(store.engine, table)
        report = build_report(
            store.engine, table, datetime.now(timezone.utc), days=args.days, tz=args.tz
        )
    finally:
        store.close()
    if args.html:
        from sauce_sql.report_html import render_html

        target = Path(args.html)
        try:
            target.write_text(render_html(report), encoding="utf-8")
        except OSError as exc:
            raise SauceSQLError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from exc
        print(f"wrote the report for {table!r} to {target}", file=sys.stderr)
        if not args.json:
            return 0
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_report(report, shutil.get_terminal_size().columns))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    # The demo never writes into SAUCE_SQL_URL's database: only --url sends it there.
    from sauce_sql.demo import run_demo

    run_demo(args.url, table_name=args.table_name, visitors=args.visitors, seed=args.seed)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.history:
        from sauce_sql.bench.history import format_history, run_history

        rows = args.cleanup_rows or (20_000 if args.quick else 100_000)
        results = run_history(
            args.pg_url or None,
            rows=rows,
            runs=args.cleanup_runs or 3,
            history_rows=100_000 if args.quick else 1_000_000,
            floor_history=20_000 if args.quick else 100_000,
            directory=args.dir,
        )
        print(json.dumps(results, indent=2) if args.json else format_history(results))
        return 0
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
        prog="sauce-sql",
        description="Durable analytics sessions in a SQL table.",
        epilog="Exit status: 0 done, 1 error (one line on stderr), 2 usage error, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, *, url_default: str | None) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if url_default is None:
            sub.add_argument(
                "--url", help="database URL (default: a temporary file, removed at the end)"
            )
        else:
            sub.add_argument(
                "--url",
                default=os.environ.get("SAUCE_SQL_URL") or url_default,
                help=f"database URL (default: $SAUCE_SQL_URL, else {url_default})",
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
    sub = command(
        "cleanup", "archive expired sessions (history retention too)", url_default=DEFAULT_URL
    )
    sub.set_defaults(run=cmd_cleanup)
    sub = command("report", "what the sessions say", url_default=DEFAULT_URL)
    sub.add_argument(
        "--days", type=_positive_int, default=30, help="calendar days shown (default: 30)"
    )
    sub.add_argument(
        "--tz", default="UTC", help="IANA time zone whose days are counted (default: UTC)"
    )
    sub.add_argument("--json", action="store_true", help="print one JSON object")
    sub.add_argument("--html", metavar="FILE", help="write a self-contained HTML page to FILE")
    sub.set_defaults(run=cmd_report)
    sub = command(
        "forget", "delete a user's or a session's rows, live and history", url_default=DEFAULT_URL
    )
    whom = sub.add_mutually_exclusive_group(required=True)
    whom.add_argument("--user", metavar="ID", help="every session of this user id")
    whom.add_argument("--session", metavar="ID", help="every row of this session id")
    sub.set_defaults(run=cmd_forget)
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
    sub.add_argument(
        "--history",
        action="store_true",
        help="only what history costs: archiving vs deleting, the report, forget_user",
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


def _quiet_broken_pipe() -> int:
    """The reader went away (``| head``): stop quietly, as ``cat`` does."""
    # Python would report the failed flush of stdout at exit: point it at /dev/null.
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, what a shell reports for a command killed by it


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        status: int = args.run(args)
        sys.stdout.flush()
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except SauceSQLError as exc:
        print(f"sauce-sql: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line, never a traceback, whatever went wrong
        print(f"sauce-sql: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1
    return status
