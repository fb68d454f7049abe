"""A headless Chromium driven through its DevTools protocol (websocket-client), enough
for page loads, the page's text and the cookies the browser stored."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import websocket


def chromium_path() -> str | None:
    """Debian's ``chromium`` (or another Chromium build on PATH), if installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """One headless Chromium with one tab."""

    def __init__(self, binary: str, profile: Path, user_agent: str) -> None:
        self._process = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                f"--user-data-dir={profile}",
                f"--user-agent={user_agent}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self._process.poll() is not None:
                self.close()
                raise AssertionError("Chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
            targets = json.load(reply)
        page = next(t for t in targets if t["type"] == "page")
        self._socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30)
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []
        self.call("Page.enable")
        self.call("Network.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result; events seen meanwhile are kept."""
        ident = next(self._ids)
        self._socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result
            self._events.append(message)

    def _wait_for(self, event: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self._events):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {event} within {timeout} s")
            self._events.append(json.loads(self._socket.recv()))

    def load(self, url: str) -> str:
        """Navigate to ``url``, wait for its load event, return the page's text."""
        self._events.clear()
        self.call("Page.navigate", url=url)
        self._wait_for("Page.loadEventFired")
        result = self.call(
            "Runtime.evaluate", expression="document.body.innerText", returnByValue=True
        )
        text: str = result["result"]["value"]
        return text

    def cookies(self, url: str) -> list[dict[str, Any]]:
        """The cookies the browser holds for ``url``, with their attributes."""
        cookies: list[dict[str, Any]] = self.call("Network.getCookies", urls=[url])["cookies"]
        return cookies

    def close(self) -> None:
        """Quit Chromium."""
        sock = getattr(self, "_socket", None)
        if sock is not None:
            sock.close()
        self._process.terminate()
        try:
            self._process.wait(20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
