"""A real PgBouncer in front of the test server, one per pooling mode, for the tests.

Started on first use (by :func:`sauce_sql.bench.pgbouncer.start_pgbouncer`, the bench's
own: Debian's ``pgbouncer`` package on a free loopback port, as the ``postgres`` user
when the tests run as root) and stopped when the test run ends. Each pool is smaller
than the number of threads and processes the tests run, so server connections really
are handed between clients.
"""

from __future__ import annotations

import atexit
import functools

from sauce_sql.bench.pgbouncer import pgbouncer_binary, start_pgbouncer

__all__ = ["MODES", "POOL_SIZE", "pgbouncer_binary", "pgbouncer_url"]

#: Server connections PgBouncer keeps per pool: fewer than the tests' client threads.
POOL_SIZE = 4
MODES = ("transaction", "statement")


@functools.cache
def pgbouncer_url(target_url: str, mode: str) -> str:
    """The URL of a PgBouncer in ``mode`` in front of ``target_url``; started once.

    Raises PgBouncerMissing (a RuntimeError) saying why when PgBouncer is not installed
    or does not start.
    """
    bouncer = start_pgbouncer(target_url, mode=mode, pool_size=POOL_SIZE)
    atexit.register(bouncer.stop)
    return bouncer.url
