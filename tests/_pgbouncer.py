"""A real PgBouncer in front of the test server, one per pooling mode, for the tests.

Started on first use (from Debian's ``pgbouncer`` package, on a free loopback port,
as the ``postgres`` user when the tests run as root, since PgBouncer refuses root) and
stopped when the test run ends. Each pool is smaller than the number of threads and
processes the tests run, so server connections really are handed between clients.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

#: Server connections PgBouncer keeps per pool: fewer than the tests' client threads.
POOL_SIZE = 4
MODES = ("transaction", "statement")


def pgbouncer_binary() -> str | None:
    """Where the ``pgbouncer`` program is, or None."""
    return shutil.which("pgbouncer", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _config(target: sa.URL, mode: str, port: int, folder: Path) -> Path:
    user = target.username or "postgres"
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    ini = folder / f"{mode}.ini"
    ini.write_text(
        "[databases]\n"
        f"{target.database} = host={target.host or '127.0.0.1'} port={target.port or 5432}"
        f" dbname={target.database}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {folder / 'users.txt'}\n"
        f"pool_mode = {mode}\n"
        f"default_pool_size = {POOL_SIZE}\n"
        "max_client_conn = 1000\n"
        "log_connections = 0\nlog_disconnections = 0\n"
        f"logfile = {folder / (mode + '.log')}\n"
    )
    return ini


def _answers(url: sa.URL) -> bool:
    import psycopg

    try:
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


@functools.cache
def pgbouncer_url(target_url: str, mode: str) -> str:
    """The URL of a PgBouncer in ``mode`` in front of ``target_url``; started once.

    Raises RuntimeError saying why when PgBouncer is not installed or does not start.
    """
    binary = pgbouncer_binary()
    if binary is None:
        raise RuntimeError("PgBouncer is not installed (Debian: apt-get install pgbouncer)")
    target = sa.make_url(target_url)
    folder = Path(tempfile.mkdtemp(prefix=f"sauce-pgbouncer-{mode}-"))
    port = _free_port()
    ini = _config(target, mode, port, folder)
    command = [binary, str(ini)]
    if os.geteuid() == 0:
        # PgBouncer will not run as root; its files must be the postgres user's.
        folder.chmod(0o755)
        shutil.chown(folder, "postgres")
        for path in folder.iterdir():
            shutil.chown(path, "postgres")
        command = [binary, "-u", "postgres", str(ini)]
    # Its log goes to the logfile; stderr, which nobody reads, would fill its pipe and
    # freeze it mid-run.
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    atexit.register(_stop, process, folder)
    url = target.set(port=port, host="127.0.0.1")
    deadline = time.monotonic() + 15
    while not _answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            logfile = folder / f"{mode}.log"
            log = logfile.read_text() if logfile.exists() else "(no log)"
            _stop(process, folder)
            raise RuntimeError(f"PgBouncer ({mode}) did not start: {log[-500:]}")
        time.sleep(0.1)
    return url.render_as_string(hide_password=False)


def _stop(process: subprocess.Popen[bytes], folder: Path) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    shutil.rmtree(folder, ignore_errors=True)
