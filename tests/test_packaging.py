"""The built wheel: it carries the migrations and works when installed away from the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# What pip prints when it cannot reach a package index (no network, no proxy).
OFFLINE_SIGNS = (
    "Could not find a version that satisfies",
    "No matching distribution found",
    "NewConnectionError",
    "Network is unreachable",
    "Temporary failure in name resolution",
    "Failed to establish a new connection",
    "ProxyError",
)

NOT_SOURCE = (
    ".git",
    ".venv",
    "*cache*",
    "build",
    "dist",
    "*.egg-info",
    "*.db",
    "*.db-*",
    ".hypothesis",
)

pytestmark = pytest.mark.slow


def pip(*args: str, python: Path | str = sys.executable) -> subprocess.CompletedProcess[str]:
    """Run pip quietly under ``python``."""
    return subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel pip builds from the checkout."""
    # Build from a copy, so that setuptools' build/ and egg-info stay out of the checkout.
    source = tmp_path_factory.mktemp("source") / "sauce-sql"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    out = tmp_path_factory.mktemp("wheel")
    built = pip("wheel", "--no-deps", "--wheel-dir", str(out), str(source))
    if built.returncode != 0 and any(sign in built.stderr for sign in OFFLINE_SIGNS):
        pytest.skip(f"pip cannot fetch the build backend: {built.stderr.strip()[-300:]}")
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("sauce_sql-*.whl")
    return path


def test_wheel_carries_the_migrations_and_type_marker(wheel: Path) -> None:
    """The wheel holds env.py, the revisions, the script template and py.typed."""
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "sauce_sql/__main__.py",
        "sauce_sql/py.typed",
        "sauce_sql/_migrations/env.py",
        "sauce_sql/_migrations/script.py.mako",
        "sauce_sql/_migrations/versions/0001_create_sessions.py",
        "sauce_sql/_migrations/versions/0002_history.py",
    } <= names
    assert not any(name.startswith(("tests/", "migrations/")) for name in names)


def test_wheel_declares_the_console_script_and_dependencies(wheel: Path) -> None:
    """The wheel installs `sauce-sql` and requires only SQLAlchemy and Alembic."""
    archive = zipfile.ZipFile(wheel)
    info = next(n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt"))
    assert "sauce-sql = sauce_sql.cli:main" in archive.read(info).decode()
    metadata_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
    metadata = archive.read(metadata_name).decode()
    required = [
        line.split(":", 1)[1].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert sorted(r.split(">")[0].split("<")[0].split("=")[0].lower() for r in required) == [
        "alembic",
        "sqlalchemy",
    ]


def test_installed_wheel_migrates_and_runs_the_demo_away_from_the_checkout(
    wheel: Path, tmp_path: Path
) -> None:
    """In a fresh venv the installed command migrates a SQLite file and runs the demo."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    installed = pip("install", str(wheel), python=bindir / "python")
    if installed.returncode != 0 and any(sign in installed.stderr for sign in OFFLINE_SIGNS):
        pytest.skip(f"pip cannot reach a package index: {installed.stderr.strip()[-300:]}")
    assert installed.returncode == 0, installed.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SAUCE_SQL_URL", "SAUCE_SQL_TABLE", "PYTHONPATH", "VIRTUAL_ENV")
    }
    environment["TMPDIR"] = str(tmp_path)

    def run(*args: str) -> str:
        completed = subprocess.run(
            [str(bindir / "sauce-sql"), *args],
            cwd=elsewhere,
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert completed.returncode == 0, completed.stderr
        assert "Traceback" not in completed.stderr
        return completed.stdout

    where = subprocess.run(
        [str(bindir / "python"), "-c", "import sauce_sql.migrate as m; print(m.script_location())"],
        cwd=elsewhere,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(env_dir.resolve())  # the shipped copy, not the checkout's

    assert "0004" in run("migrate", "--url", "sqlite:///x.db")
    assert (elsewhere / "x.db").exists()
    assert '"live_sessions": 0' in run("report", "--json", "--url", "sqlite:///x.db")
    demo = run("demo")
    assert "live sessions" in demo
    assert "Browsers" in demo
