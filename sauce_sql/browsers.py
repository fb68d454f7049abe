"""Browser families from user-agent strings, for the report: people read "Firefox", not
a 120-character token soup that changes with every release."""

from __future__ import annotations

import functools
import re

__all__ = ["FAMILY_RULES", "NO_AGENT", "OTHER", "browser_family", "cached_family"]

#: (family, pattern), matched case-insensitively; the first rule that matches names the
#: family. Order matters: Edge and Opera say "Chrome" too, Chrome says "Safari", bots
#: say "Mozilla". History retention classifies in SQL with the same patterns
#: (:func:`sauce_sql.history_sql.family_of`).
FAMILY_RULES: tuple[tuple[str, str], ...] = (
    (
        "Bot or tool",
        r"bot\b|crawl|spider|slurp|curl/|wget/|python-|httpx|go-http|okhttp|headless",
    ),
    ("Edge", r"\bEdg(e|A|iOS)?/"),
    ("Opera", r"\bOPR/|\bOpera\b"),
    ("Samsung Internet", r"SamsungBrowser/"),
    ("Firefox", r"\b(Firefox|FxiOS)/"),
    ("Chrome", r"\b(Chrome|CriOS|Chromium)/"),
    ("Safari", r"\bVersion/[\d.]+.*Safari|\bSafari/|\bMobile/\w+ Safari"),
)
NO_AGENT = "(none)"
OTHER = "Other"
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (family, re.compile(pattern, re.IGNORECASE)) for family, pattern in FAMILY_RULES
)


def browser_family(user_agent: str) -> str:
    """The browser family of a user agent: "Firefox", "Chrome", "Safari", "Edge",
    "Opera", "Samsung Internet", "Bot or tool", "Other", or "(none)" for an empty one.

    >>> browser_family("Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0")
    'Firefox'
    """
    if not user_agent:
        return NO_AGENT
    for family, pattern in _RULES:
        if pattern.search(user_agent):
            return family
    return OTHER


#: :func:`browser_family` remembered per distinct user agent: a report or a retention
#: batch sees few distinct agents, the same ones again and again, and the patterns
#: cost far more than a lookup.
cached_family = functools.lru_cache(maxsize=4096)(browser_family)
