"""Real HTTP servers in child processes, for the web tests: start, wait, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """One server process serving an app of ``_web_apps`` on a port of its own."""

    def __init__(
        self, argv: list[str], env: dict[str, str], port: int, log: Path, cwd: Path = TESTS
    ) -> None:
        self.argv, self.port, self.log, self.cwd = argv, port, log, cwd
        self.env = {**os.environ, **env, "PYTHONPATH": str(TESTS)}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> Server:
        """Start the process and wait until it accepts connections."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"the server did not listen in {timeout} s")

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM), killing it if it lingers."""
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def gunicorn(
    env: dict[str, str], log: Path, workers: int = 4, app: str = "_web_apps:flask_from_env()"
) -> Server:
    """gunicorn with ``workers`` sync workers serving ``app`` (the Flask test app)."""
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}"]
    argv += ["--graceful-timeout", "5", app]
    return Server(argv, env, port, log)


def uvicorn(
    env: dict[str, str],
    log: Path,
    factory: str = "_web_apps:starlette_from_env",
    lifespan: str = "on",
) -> Server:
    """uvicorn serving the app ``factory`` makes (the Starlette test app, lifespan on)."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "--factory", factory]
    argv += ["--port", str(port), "--lifespan", lifespan, "--log-level", "warning"]
    return Server(argv, env, port, log)
