"""The ``sauce-sql`` command (and ``python -m sauce_sql``), run as a user runs it."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from _support import table_names
from conftest import Backend

import sauce_sql
from sauce_sql import Store

SAUCE_SQL = Path(sys.executable).with_name("sauce-sql")
ENTRY_POINTS = {
    "python -m sauce_sql": [sys.executable, "-m", "sauce_sql"],
    "sauce-sql": [str(SAUCE_SQL)],
}

Run = Callable[..., subprocess.CompletedProcess[str]]


def run_command(
    command: list[str], *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the command in ``cwd`` with SAUCE_SQL_* unset unless ``env`` sets them."""
    environment = {
        k: v for k, v in os.environ.items() if k not in ("SAUCE_SQL_URL", "SAUCE_SQL_TABLE")
    }
    # The demo's temporary database goes under the test's folder.
    environment["TMPDIR"] = str(cwd)
    environment.update(env or {})
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(params=list(ENTRY_POINTS))
def entry_point(request: pytest.FixtureRequest) -> list[str]:
    """Each way to start the command: ``python -m sauce_sql`` and the console script."""
    return ENTRY_POINTS[request.param]


@pytest.fixture
def cli(tmp_path: Path) -> Run:
    """Run ``python -m sauce_sql`` with arguments, in the test's folder."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run_command(ENTRY_POINTS["python -m sauce_sql"], *args, cwd=tmp_path, env=env)

    return run


def ok(completed: subprocess.CompletedProcess[str]) -> str:
    """The output of a command that must have succeeded."""
    assert completed.returncode == 0, completed.stderr
    assert "Traceback" not in completed.stderr
    return completed.stdout


def one_line_error(completed: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a command that must have failed cleanly."""
    assert completed.returncode != 0
    assert "Traceback" not in completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    return lines[0]


def target(backend: Backend) -> list[str]:
    """The --url and --table-name arguments that name the backend's table."""
    return ["--url", backend.url, "--table-name", backend.table_name]


def fill(backend: Backend, live: int, expired: int) -> None:
    """Create ``live`` live sessions and ``expired`` expired ones through a Store."""
    now = datetime.now(timezone.utc)
    # A clock a day behind: sessions written through it have long expired.
    with Store(
        backend.url,
        table_name=backend.table_name,
        clean_interval=None,
        clock=lambda: now - timedelta(days=1),
    ) as store:
        for i in range(expired):
            store.new_session(f"old-{i}", user_agent="old agent")
    with Store(backend.url, table_name=backend.table_name, clean_interval=None) as store:
        for i in range(live):
            session = store.new_session(f"live-{i}", user_agent="Mozilla/5.0")
            for _ in range(i % 3 + 1):
                store.inc_sequence(session.session_id, "view")
            if i % 2:
                store.assign_user(session.session_id, f"user-{i}")


def report_json(run: Run, backend: Backend) -> dict[str, object]:
    """The JSON report of the backend's table."""
    data = json.loads(ok(run("report", "--json", *target(backend))))
    assert isinstance(data, dict)
    return data


def test_help(entry_point: list[str], tmp_path: Path) -> None:
    """--help lists the subcommands and exits 0."""
    out = ok(run_command(entry_point, "--help", cwd=tmp_path))
    for name in ("migrate", "cleanup", "report", "demo"):
        assert name in out


@pytest.mark.parametrize("command", ["migrate", "cleanup", "report", "demo"])
def test_subcommand_help(cli: Run, command: str) -> None:
    """Each subcommand's --help names --url and --table-name and exits 0."""
    out = ok(cli(command, "--help"))
    assert "--url" in out
    assert "--table-name" in out


def test_no_subcommand_is_a_usage_error(cli: Run) -> None:
    """Without a subcommand the command prints its usage and exits 2."""
    completed = cli()
    assert completed.returncode == 2
    assert "usage:" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_migrate_through_each_entry_point(
    entry_point: list[str], persistent_backend: Backend, tmp_path: Path
) -> None:
    """`migrate` creates the table and its own version table, and says so."""
    out = ok(run_command(entry_point, "migrate", *target(persistent_backend), cwd=tmp_path))
    assert persistent_backend.table_name in out
    names = table_names(persistent_backend.url)
    assert persistent_backend.table_name in names
    assert f"alembic_version_{persistent_backend.table_name}" in names


def test_migrate_twice_is_harmless(cli: Run, persistent_backend: Backend) -> None:
    """Running `migrate` on a table already at head succeeds again."""
    ok(cli("migrate", *target(persistent_backend)))
    ok(cli("migrate", *target(persistent_backend)))


def test_report_json_counts_live_sessions(
    entry_point: list[str], persistent_backend: Backend, tmp_path: Path
) -> None:
    """`report --json` prints one JSON object whose live_sessions counts the live sessions."""
    fill(persistent_backend, live=5, expired=3)
    completed = run_command(
        entry_point, "report", "--json", *target(persistent_backend), cwd=tmp_path
    )
    data = json.loads(ok(completed))
    assert data["live_sessions"] == 5
    assert data["total_sessions"] == 8
    assert data["identified_share"] == pytest.approx(2 / 8)
    assert data["top_user_agents"][0] == {"user_agent": "Mozilla/5.0", "sessions": 5}
    assert sum(data["sessions_per_day"].values()) == 8  # all started within the week


def test_report_days_are_utc_days(cli: Run, persistent_backend: Backend) -> None:
    """Sessions started per day are counted by UTC day, whatever the connection's zone."""
    midnight = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    moments = {
        "late": midnight - timedelta(microseconds=1),
        "early": midnight + timedelta(microseconds=1),
        "earlier": midnight - timedelta(days=2, hours=-1),
    }
    for session_id, moment in moments.items():
        with Store(
            persistent_backend.url,
            table_name=persistent_backend.table_name,
            clean_interval=None,
            clock=itertools.repeat(moment).__next__,
        ) as store:
            store.new_session(session_id)
    # PGTZ sets the PostgreSQL session's time zone far from UTC; SQLite ignores it.
    out = ok(cli("report", "--json", *target(persistent_backend), env={"PGTZ": "Asia/Tokyo"}))
    per_day = json.loads(out)["sessions_per_day"]
    assert len(per_day) == 30  # --days defaults to 30
    assert per_day[str(midnight.date())] == 1
    assert per_day[str((midnight - timedelta(days=1)).date())] == 1
    assert per_day[str((midnight - timedelta(days=2)).date())] == 1
    assert sum(per_day.values()) == 3


def test_report_for_people(cli: Run, persistent_backend: Backend) -> None:
    """`report` prints the figures as text, live sessions among them."""
    fill(persistent_backend, live=4, expired=0)
    out = ok(cli("report", *target(persistent_backend)))
    live_line = next(line for line in out.splitlines() if "live sessions" in line)
    assert live_line.split()[-1] == "4"
    assert "Browsers" in out
    assert "Other" in out  # "Mozilla/5.0" alone names no known browser


def test_report_on_an_empty_table(cli: Run, persistent_backend: Backend) -> None:
    """`report --json` on a migrated, empty table reports zeros."""
    ok(cli("migrate", *target(persistent_backend)))
    data = report_json(cli, persistent_backend)
    assert data["live_sessions"] == 0
    assert data["total_sessions"] == 0


def test_cleanup_deletes_expired_sessions(
    entry_point: list[str], persistent_backend: Backend, tmp_path: Path
) -> None:
    """`cleanup` archives the expired sessions, keeps the live ones and says how many;
    the report still counts every session."""
    fill(persistent_backend, live=2, expired=3)
    out = ok(run_command(entry_point, "cleanup", *target(persistent_backend), cwd=tmp_path))
    assert "3" in out
    report = run_command(entry_point, "report", "--json", *target(persistent_backend), cwd=tmp_path)
    data = json.loads(ok(report))
    assert data["total_sessions"] == 5
    assert data["live_sessions"] == 2


def test_demo(entry_point: list[str], tmp_path: Path) -> None:
    """`demo` runs on a temporary SQLite file it names and removes, ignores SAUCE_SQL_URL,
    and reports on every session of the week it simulated, archived ones included."""
    elsewhere = tmp_path / "yours.db"
    out = ok(
        run_command(
            entry_point, "demo", cwd=tmp_path, env={"SAUCE_SQL_URL": f"sqlite:///{elsewhere}"}
        )
    )
    assert "live sessions" in out
    assert "Browsers" in out
    assert "survived the restart intact: True" in out
    assert not (tmp_path / "sauce_sql.db").exists()  # the default file is left alone
    assert not elsewhere.exists()  # and so is SAUCE_SQL_URL's
    assert list(tmp_path.iterdir()) == []  # no temporary folder left behind
    assert "removed at the end" in out
    archived = int(out.split("cleanup archived ")[1].split()[0])
    ever = next(line for line in out.splitlines() if "sessions ever recorded" in line)
    # 200 visitors, then 20 more: every one of them is counted, archived or live.
    assert int(ever.split()[-1]) == 220
    assert archived > 0
    per_day = [line for line in out.splitlines() if line.startswith("    20")]
    assert len(per_day) == 7
    assert sum(int(line.split()[1]) for line in per_day) == 220


@pytest.mark.parametrize("hour", [0, 3, 5, 6, 10, 12, 18, 23])
def test_demo_reports_its_whole_week_at_any_time_of_day(hour: int) -> None:
    """Whatever the UTC time the demo runs at, the report's seven days hold every one
    of its 220 sessions, and its simulated clock ends before the real one (run at
    10:05 UTC, the first visitors used to fall on an eighth day)."""
    from sauce_sql.demo import run_demo

    now = datetime(2026, 12, 3, hour, 5, 30, tzinfo=timezone.utc)
    out: list[str] = []
    run_demo(echo=out.append, now=now)
    lines = "\n".join(out).splitlines()
    per_day = [line for line in lines if line.startswith("    20")]
    assert len(per_day) == 7
    assert sum(int(line.split()[1]) for line in per_day) == 220
    (earlier,) = (line for line in lines if line.startswith("    earlier"))
    assert earlier.split() == ["earlier", "0"]
    (heading,) = (line for line in lines if line.startswith("Sessions in table"))
    assert datetime.fromisoformat(heading.split(" at ")[1]) <= now


def test_demo_refuses_a_naive_now() -> None:
    """The demo's ``now`` is an aware datetime, or InvalidInput."""
    from sauce_sql.demo import run_demo
    from sauce_sql.errors import InvalidInput

    with pytest.raises(InvalidInput, match="aware"):
        run_demo(echo=lambda _: None, now=datetime(2026, 12, 3, 10, 5))


def test_demo_on_a_given_database(cli: Run, persistent_backend: Backend) -> None:
    """`demo --url ... --table-name ...` runs on that table and leaves its sessions there."""
    out = ok(cli("demo", *target(persistent_backend)))
    assert "live sessions" in out
    data = report_json(cli, persistent_backend)
    total = data["total_sessions"]
    assert isinstance(total, int)
    assert total > 0


def test_url_defaults_to_the_sqlite_file_in_the_working_directory(cli: Run, tmp_path: Path) -> None:
    """Without --url or SAUCE_SQL_URL the commands use ./sauce_sql.db and table sessions."""
    ok(cli("migrate"))
    assert {"sessions", "alembic_version_sessions"} <= table_names(
        f"sqlite:///{tmp_path / 'sauce_sql.db'}"
    )
    assert json.loads(ok(cli("report", "--json")))["table_name"] == "sessions"


def test_environment_url_beats_the_default(cli: Run, tmp_path: Path) -> None:
    """SAUCE_SQL_URL replaces the default file."""
    env_url = f"sqlite:///{tmp_path / 'env.db'}"
    ok(cli("migrate", env={"SAUCE_SQL_URL": env_url}))
    assert "sessions" in table_names(env_url)
    assert not (tmp_path / "sauce_sql.db").exists()


def test_url_option_beats_the_environment(cli: Run, tmp_path: Path) -> None:
    """--url wins over SAUCE_SQL_URL."""
    env_url = f"sqlite:///{tmp_path / 'env.db'}"
    flag_url = f"sqlite:///{tmp_path / 'flag.db'}"
    ok(cli("migrate", "--url", flag_url, env={"SAUCE_SQL_URL": env_url}))
    assert "sessions" in table_names(flag_url)
    assert not (tmp_path / "env.db").exists()
    assert not (tmp_path / "sauce_sql.db").exists()


def test_environment_table_beats_the_default(cli: Run, tmp_path: Path) -> None:
    """SAUCE_SQL_TABLE names the table when --table-name is not given."""
    ok(cli("migrate", env={"SAUCE_SQL_TABLE": "env_sessions"}))
    names = table_names(f"sqlite:///{tmp_path / 'sauce_sql.db'}")
    assert {"env_sessions", "alembic_version_env_sessions"} <= names
    assert "sessions" not in names


def test_table_name_option_beats_the_environment(cli: Run, tmp_path: Path) -> None:
    """--table-name wins over SAUCE_SQL_TABLE."""
    ok(cli("migrate", "--table-name", "flag_sessions", env={"SAUCE_SQL_TABLE": "env_sessions"}))
    names = table_names(f"sqlite:///{tmp_path / 'sauce_sql.db'}")
    assert "flag_sessions" in names
    assert "env_sessions" not in names


def test_environment_reaches_every_subcommand(cli: Run, persistent_backend: Backend) -> None:
    """SAUCE_SQL_URL and SAUCE_SQL_TABLE are read by report and cleanup as by migrate."""
    fill(persistent_backend, live=1, expired=2)
    env = {
        "SAUCE_SQL_URL": persistent_backend.url,
        "SAUCE_SQL_TABLE": persistent_backend.table_name,
    }
    ok(cli("cleanup", env=env))
    data = json.loads(ok(cli("report", "--json", env=env)))
    assert data["table_name"] == persistent_backend.table_name
    assert data["live_sessions"] == 1
    assert data["total_sessions"] == 3
    assert "deleted 1 sessions" in ok(cli("forget", "--session", "old-0", env=env))


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["migrate", "--url", "postgresql://postgres@127.0.0.1:1/x"], id="pg-down"),
        pytest.param(["report", "--url", "postgresql://postgres@127.0.0.1:1/x"], id="pg-report"),
        pytest.param(["cleanup", "--url", "postgresql://postgres@127.0.0.1:1/x"], id="pg-clean"),
        pytest.param(["migrate", "--url", "mysql://user@localhost/db"], id="mysql"),
        pytest.param(["report", "--url", "not a url"], id="unparseable"),
        pytest.param(["migrate", "--table-name", "1sessions"], id="digit-first"),
        pytest.param(["migrate", "--table-name", "sessions; DROP TABLE x"], id="injection"),
        pytest.param(["report", "--table-name", "x" * 41], id="too-long"),
        pytest.param(["migrate", "--url", "sqlite:////nonexistent/dir/x.db"], id="no-dir"),
        pytest.param(["migrate", "--revision", "9999"], id="no-revision"),
    ],
)
def test_errors_print_one_line_and_fail(cli: Run, args: list[str]) -> None:
    """A command that cannot do its job prints one error line, no traceback, and exits 1."""
    completed = cli(*args)
    line = one_line_error(completed)
    assert line.startswith("sauce-sql: error:")
    assert completed.returncode == 1
    assert completed.stdout == ""


def test_unsupported_url_says_what_is_supported(cli: Run) -> None:
    """An unsupported database names the ones sauce_sql runs on."""
    line = one_line_error(cli("migrate", "--url", "mysql://user@localhost/db"))
    assert "mysql" in line
    assert "sqlite" in line
    assert "postgresql" in line


@pytest.mark.parametrize("command", ["migrate", "cleanup", "report"])
def test_errors_hide_the_password(cli: Run, command: str) -> None:
    """An error about a database never prints the password from its URL."""
    line = one_line_error(cli(command, "--url", "postgresql://postgres:s3cret@127.0.0.1:1/x"))
    assert "s3cret" not in line


def test_bad_table_name_from_the_environment(cli: Run, tmp_path: Path) -> None:
    """A bad SAUCE_SQL_TABLE is refused like a bad --table-name, touching no database."""
    line = one_line_error(cli("migrate", env={"SAUCE_SQL_TABLE": "bad-name"}))
    assert "bad-name" in line
    assert not (tmp_path / "sauce_sql.db").exists()


@pytest.mark.parametrize("command", [["report"], ["report", "--json"], ["cleanup"]])
def test_commands_on_a_database_without_the_table(
    cli: Run, persistent_backend: Backend, command: list[str]
) -> None:
    """report and cleanup on a table never migrated fail with one line and create nothing."""
    line = one_line_error(cli(*command, *target(persistent_backend)))
    assert persistent_backend.table_name in line
    assert "migrate" in line
    if persistent_backend.name == "sqlite_file":
        assert not Path(sa.make_url(persistent_backend.url).database or "").exists()
    else:
        assert persistent_backend.table_name not in table_names(persistent_backend.url)


def test_table_names_are_case_insensitive(cli: Run, persistent_backend: Backend) -> None:
    """migrate, cleanup and report given one table name in different cases work on one
    table, named in lower case."""
    lower = persistent_backend.table_name
    out = ok(cli("migrate", "--url", persistent_backend.url, "--table-name", lower.upper()))
    assert repr(lower) in out
    fill(persistent_backend, live=2, expired=1)
    cleaned = ok(cli("cleanup", "--url", persistent_backend.url, "--table-name", lower.title()))
    assert f"deleted 1 expired sessions from {lower!r}" in cleaned
    args = ["--url", persistent_backend.url, "--table-name", lower.capitalize()]
    data = json.loads(ok(cli("report", "--json", *args)))
    assert (data["table_name"], data["live_sessions"]) == (lower, 2)


def test_version(cli: Run) -> None:
    """`--version` prints the package's version, the one sauce_sql.__version__ holds."""
    assert ok(cli("--version")).strip() == f"sauce-sql {sauce_sql.__version__}"


def test_forget_user_and_session(cli: Run, persistent_backend: Backend) -> None:
    """`forget --user` and `forget --session` delete live and archived rows and say how
    many; giving neither is a usage error (exit 2)."""
    fill(persistent_backend, live=4, expired=2)
    ok(cli("cleanup", *target(persistent_backend)))
    assert "deleted 1 sessions of user 'user-1'" in ok(
        cli("forget", "--user", "user-1", *target(persistent_backend))
    )
    assert "deleted 1 sessions of session 'old-1'" in ok(
        cli("forget", "--session", "old-1", *target(persistent_backend))
    )
    assert report_json(cli, persistent_backend)["total_sessions"] == 4
    assert cli("forget", *target(persistent_backend)).returncode == 2
    assert "error" in one_line_error(cli("forget", "--user", "", *target(persistent_backend)))


def test_usage_errors_exit_with_2(cli: Run) -> None:
    """A bad command line (unknown option, bad --days) exits with status 2."""
    assert cli("report", "--days", "0").returncode == 2
    assert cli("report", "--no-such-option").returncode == 2


def test_report_refuses_an_unknown_zone(cli: Run, persistent_backend: Backend) -> None:
    """`report --tz` with a zone that does not exist fails with one line naming it."""
    fill(persistent_backend, live=1, expired=0)
    line = one_line_error(cli("report", "--tz", "Mars/Olympus", *target(persistent_backend)))
    assert "Mars/Olympus" in line


def test_report_json_days_and_html_file(
    cli: Run, persistent_backend: Backend, tmp_path: Path
) -> None:
    """`report --days 3 --json` lists three days oldest first with sessions, views and
    events; `--html FILE` writes a page and prints nothing on stdout."""
    fill(persistent_backend, live=3, expired=0)
    data = json.loads(ok(cli("report", "--days", "3", "--json", *target(persistent_backend))))
    days = data["days"]
    assert [d["day"] for d in days] == sorted(d["day"] for d in days)
    assert len(days) == 3
    assert days[-1]["sessions"] == 3
    assert days[-1]["views"] == 1 + 2 + 3
    assert {"day", "sessions", "views", "events"} <= set(days[0])
    page = tmp_path / "report.html"
    completed = cli("report", "--html", str(page), *target(persistent_backend))
    assert ok(completed) == ""
    assert "<svg" in page.read_text()


def test_migrate_names_the_file_and_leaves_none_on_failure(cli: Run, tmp_path: Path) -> None:
    """A migration that fails names the database file, and a file it created is removed."""
    line = one_line_error(cli("migrate", "--url", "sqlite:///new.db", "--revision", "9999"))
    assert "new.db" in line
    assert not (tmp_path / "new.db").exists()
    line = one_line_error(cli("migrate", "--url", "sqlite:///no/such/dir/x.db"))
    assert "no/such/dir/x.db" in line


def test_a_closed_pipe_ends_quietly(persistent_backend: Backend, tmp_path: Path) -> None:
    """`report | head -1` prints its first line and no error about the broken pipe."""
    fill(persistent_backend, live=2, expired=0)
    command = " ".join(
        [sys.executable, "-m", "sauce_sql", "report", "--days", "3000", *target(persistent_backend)]
    )
    completed = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"{command} | head -1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.stdout.startswith("Sessions in table")
    assert completed.stderr == ""
    assert completed.returncode in (0, 141)


def test_readme_command_table_lists_every_subcommand_with_its_real_options() -> None:
    """The README's command table names every subcommand and exactly the options each
    takes beyond ``--url`` and ``--table-name`` (which the text before it covers)."""
    import re

    from sauce_sql.cli import _parser

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = {
        found.group(1): set(re.findall(r"`(--[a-z-]+)", found.group(2))) - {"--url"}
        for found in re.finditer(r"^\| `sauce-sql (\w+)` \| (.*?) \|", readme, re.M)
    }
    parser = _parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    real = {
        name: {
            option
            for action in sub._actions
            for option in action.option_strings
            if option.startswith("--") and option not in ("--help", "--url", "--table-name")
        }
        for name, sub in commands.choices.items()
    }
    assert table == real
