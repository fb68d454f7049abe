"""A PgBouncer of one's own in front of a PostgreSQL: the bench's, and the tests'.

Started from the installed ``pgbouncer`` program (Debian: ``apt-get install
pgbouncer``) on a free loopback port, with its files in a temporary folder that goes
when it is stopped. PgBouncer refuses to run as root, so when root starts it, it runs
as the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import URL, make_url

__all__ = [
    "PgBouncer",
    "PgBouncerMissing",
    "pgbouncer_binary",
    "running_pgbouncer",
    "start_pgbouncer",
]

#: How long PgBouncer may take to answer after it is started.
START_TIMEOUT = 15.0


class PgBouncerMissing(RuntimeError):
    """PgBouncer is not installed, or did not start; the message says which."""


def pgbouncer_binary() -> str | None:
    """Where the ``pgbouncer`` program is (Debian puts it in /usr/sbin), or None."""
    return shutil.which("pgbouncer", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _ini(target: URL, *, mode: str, pool_size: int, port: int, folder: Path) -> Path:
    user = target.username or "postgres"
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    server = (
        f"host={target.host or '127.0.0.1'} port={target.port or 5432} dbname={target.database}"
    )
    if target.password:
        server += f" user={user} password={target.password}"
    ini = folder / "pgbouncer.ini"
    ini.write_text(
        f"[databases]\n{target.database} = {server}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        f"pool_mode = {mode}\ndefault_pool_size = {pool_size}\nmax_client_conn = 2000\n"
        "log_connections = 0\nlog_disconnections = 0\n"
        f"logfile = {folder / 'pgbouncer.log'}\n"
    )
    ini.chmod(0o600)
    return ini


def _answers(url: URL) -> bool:
    import psycopg

    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


class PgBouncer:
    """A PgBouncer started by :func:`start_pgbouncer`: its URL, and how to stop it."""

    def __init__(self, process: subprocess.Popen[bytes], folder: Path, url: str) -> None:
        self._process, self._folder = process, folder
        #: ``target_url`` with PgBouncer's host and port.
        self.url = url

    def stop(self) -> None:
        """End the PgBouncer and remove its files. Idempotent."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self._folder, ignore_errors=True)


def start_pgbouncer(target_url: str, *, mode: str, pool_size: int) -> PgBouncer:
    """A PgBouncer in ``mode`` pooling at most ``pool_size`` server connections to
    ``target_url``'s database, answering by the time this returns.

    Raises :class:`PgBouncerMissing` when the program is not installed or does not
    start in time.
    """
    binary = pgbouncer_binary()
    if binary is None:
        raise PgBouncerMissing("PgBouncer is not installed (Debian: apt-get install pgbouncer)")
    target = make_url(target_url)
    folder = Path(tempfile.mkdtemp(prefix=f"sauce-sql-pgbouncer-{mode}-"))
    port = _free_port()
    ini = _ini(target, mode=mode, pool_size=pool_size, port=port, folder=folder)
    command = [binary, str(ini)]
    if os.geteuid() == 0:
        folder.chmod(0o700)
        for path in (folder, *folder.iterdir()):
            shutil.chown(path, "postgres")
        command = [binary, "-u", "postgres", str(ini)]
    # Its log goes to its logfile; an unread stderr pipe could fill and freeze it.
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = target.set(host="127.0.0.1", port=port)
    bouncer = PgBouncer(process, folder, url.render_as_string(hide_password=False))
    deadline = time.monotonic() + START_TIMEOUT
    while not _answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            log = folder / "pgbouncer.log"
            tail = log.read_text()[-300:] if log.exists() else "no log"
            bouncer.stop()
            raise PgBouncerMissing(f"PgBouncer ({mode}) did not start: {' '.join(tail.split())}")
        time.sleep(0.1)
    return bouncer


@contextlib.contextmanager
def running_pgbouncer(target_url: str, *, mode: str, pool_size: int) -> Iterator[str]:
    """:func:`start_pgbouncer` for a ``with`` block: yields its URL, stops it after."""
    bouncer = start_pgbouncer(target_url, mode=mode, pool_size=pool_size)
    try:
        yield bouncer.url
    finally:
        bouncer.stop()
