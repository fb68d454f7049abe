"""Which requests are page views, and why the others are skipped. No I/O.

A *page view* is a GET navigation (not a prefetch or prerender) answered 2xx with an
HTML content type. Before the app runs, requests of bots, crawlers, headless browsers
and probes, static files, HEAD and OPTIONS, and prefetches are skipped whole: nothing
is tracked on them. After the response, a request that was not skipped but is no page
view (a POST, a fetch() call, a redirect, JSON) is simply not counted as one.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from sauce_sql.web.bots import agent_kind

__all__ = [
    "DEFAULT_PROBE_PATHS",
    "DEFAULT_STATIC_EXTENSIONS",
    "DEFAULT_STATIC_PATHS",
    "Skip",
    "Rules",
]


class Skip(str, enum.Enum):
    """Why a request is not counted as a page view (``tracker.skipped``)."""

    # Before the app: nothing is tracked on the request.
    METHOD = "method"  # HEAD, OPTIONS (and CONNECT, TRACE)
    STATIC = "static"
    PROBE = "probe"  # health checks, load balancers, uptime monitors
    BOT = "bot"
    HEADLESS = "headless"
    PREFETCH = "prefetch"  # Sec-Purpose / Purpose: prefetch or prerender
    GPC = "gpc"  # Sec-GPC: 1, when honoured
    # After the response: the request was tracked only if the app tracked something.
    NOT_GET = "not_get"
    NOT_NAVIGATION = "not_navigation"  # Sec-Fetch-Mode other than navigate
    STATUS = "status"  # not 2xx
    NOT_HTML = "not_html"
    WEBSOCKET = "websocket"
    NOT_AUTOMATIC = "not_automatic"  # count_views=False and no track_visit()

    def __str__(self) -> str:
        return self.value


DEFAULT_PROBE_PATHS = ("/health", "/livez", "/readyz", "/ping", "/metrics", "/status")
DEFAULT_STATIC_PATHS = ("/static/", "/assets/", "/media/", "/_next/", "/favicon", "/robots.txt")
DEFAULT_STATIC_EXTENSIONS = (
    ".css", ".js", ".mjs", ".map", ".json", ".xml", ".txt", ".webmanifest",
    ".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp", ".avif", ".ico", ".bmp",
    ".woff", ".woff2", ".ttf", ".otf", ".eot",
    ".mp4", ".webm", ".mp3", ".ogg", ".wav", ".pdf", ".zip", ".gz", ".wasm",
)  # fmt: skip
_AGENT_SKIPS = {"bot": Skip.BOT, "probe": Skip.PROBE, "headless": Skip.HEADLESS}
_SKIPPED_METHODS = frozenset({"HEAD", "OPTIONS", "CONNECT", "TRACE"})
_PREFETCH = ("prefetch", "prerender")


def _lower_tuple(values: Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise TypeError(f"{what} must be a sequence of strings, not one string")
    return tuple(value.lower() for value in values)


class Rules:
    """The skipping rules, validated once; ``skip_request`` and ``not_a_view`` apply them."""

    __slots__ = ("honor_gpc", "probe_paths", "skip_headless", "static_extensions", "static_paths")

    def __init__(
        self,
        probe_paths: Sequence[str] = DEFAULT_PROBE_PATHS,
        static_paths: Sequence[str] = DEFAULT_STATIC_PATHS,
        static_extensions: Sequence[str] = DEFAULT_STATIC_EXTENSIONS,
        skip_headless: bool = True,
        honor_gpc: bool = False,
    ) -> None:
        self.probe_paths = _lower_tuple(probe_paths, "probe_paths")
        self.static_paths = _lower_tuple(static_paths, "static_paths")
        self.static_extensions = _lower_tuple(static_extensions, "static_extensions")
        self.skip_headless = bool(skip_headless)
        self.honor_gpc = bool(honor_gpc)

    def skip_request(self, method: str, path: str, headers: dict[str, str]) -> Skip | None:
        """Why the request is skipped before the app runs, or None. ``headers`` has
        lower-case names."""
        if method in _SKIPPED_METHODS:
            return Skip.METHOD
        lower = path.lower()
        if lower.startswith(self.static_paths) or lower.endswith(self.static_extensions):
            return Skip.STATIC
        if lower.startswith(self.probe_paths):
            return Skip.PROBE
        kind = agent_kind(headers.get("user-agent", "")[:512])
        if kind is not None and (kind != "headless" or self.skip_headless):
            return _AGENT_SKIPS[kind]
        purpose = headers.get("sec-purpose") or headers.get("purpose") or headers.get("x-moz")
        if purpose is not None and purpose.lower().startswith(_PREFETCH):
            return Skip.PREFETCH
        if self.honor_gpc and headers.get("sec-gpc", "").strip() == "1":
            return Skip.GPC
        return None

    @staticmethod
    def not_a_view(
        method: str, headers: dict[str, str], status: int, content_type: str
    ) -> Skip | None:
        """Why a tracked request's response is no page view, or None if it is one."""
        if method != "GET":
            return Skip.NOT_GET
        mode = headers.get("sec-fetch-mode")
        if mode is not None and mode != "navigate":
            return Skip.NOT_NAVIGATION
        if not 200 <= status < 300:
            return Skip.STATUS
        media = content_type.partition(";")[0].strip().lower()
        if media not in ("text/html", "application/xhtml+xml"):
            return Skip.NOT_HTML
        return None
