"""Who is not a visitor: known bots and crawlers, headless browsers and health probes.

The crawler list is the ``crawler-user-agents`` package (1,500 patterns, maintained
with examples of the user agents each one matches). Tried one after another, those
patterns cost 150-400 us per human user agent, since a human matches none of them;
here each pattern is filed under a three-letter piece of text that every match must
contain, so a user agent is searched only with the few patterns whose piece it holds.
The answer is the list's own (a test compares them); each distinct user agent is
classified once and cached.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["CrawlerIndex", "agent_kind"]

#: Probes of load balancers, orchestrators and uptime monitors, some of them missing from
#: crawler lists (kube-probe, ELB-HealthChecker, GoogleHC). Lower case, matched as text.
PROBE_AGENTS = (
    "kube-probe",
    "elb-healthchecker",
    "googlehc",
    "consul health check",
    "prometheus",
    "blackbox exporter",
    "uptimerobot",
    "pingdom",
    "statuscake",
    "site24x7",
    "newrelicpinger",
    "datadog",
    "amazon-route53-health-check",
    "azure traffic manager",
    "nagios",
    "zabbix",
    "checkly",
    "envoy/hc",
    "health check",
    "healthcheck",
)
#: Headless and automated browsers. Lower case, matched as text.
HEADLESS_AGENTS = ("headlesschrome", "phantomjs", "puppeteer", "playwright", "slimerjs")
# Each list as one search of the user agent, rather than a search per entry.
_PROBES = re.compile("|".join(map(re.escape, PROBE_AGENTS)))
_HEADLESS = re.compile("|".join(map(re.escape, HEADLESS_AGENTS)))

# Text common in browsers' user agents: an index piece taken from it would send every
# human user agent to that pattern, so pieces are chosen elsewhere where a pattern allows.
_BROWSER_TEXT = (
    "mozilla/5.0 (windows nt 10.0; win64; x64) applewebkit/537.36 (khtml, like gecko) "
    "chrome/131.0.0.0 safari/537.36 edg/131.0.0.0 (macintosh; intel mac os x 10_15_7) "
    "gecko/20100101 firefox/133.0 (iphone; cpu iphone os 17_6 like mac os x) version/17.6 "
    "mobile/15e148 (linux; android 14; sm-s918b) mobile safari (x11; ubuntu; linux x86_64)"
)
_COMMON = frozenset(_BROWSER_TEXT[i : i + 3] for i in range(len(_BROWSER_TEXT) - 2))


def _alternatives(pattern: str) -> list[str]:
    """``pattern`` split at its top-level ``|`` (each part searched on its own finds
    what the whole would)."""
    parts, depth, start, i, in_class = [], 0, 0, 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 1
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            if pattern[i + 1 : i + 2] == "]":
                i += 1
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            parts.append(pattern[start:i])
            start = i + 1
        i += 1
    parts.append(pattern[start:])
    return parts


def _required_runs(alternative: str) -> Iterator[str]:
    """Runs of plain text that every match of ``alternative`` (no top-level ``|``) holds."""
    run: list[str] = []
    i = 0
    while i < len(alternative):
        char = alternative[i]
        if char == "\\" and i + 1 < len(alternative):
            escaped = alternative[i + 1]
            i += 2
            if escaped.isalnum():  # a class (\\d), an anchor (\\b) or a code (\\x41)
                yield "".join(run)
                run = []
            else:
                run.append(escaped)
            continue
        if char in "*?{":
            if run:
                run.pop()  # the character before may be absent
            yield "".join(run)
            run = []
            if char == "{":
                i = alternative.find("}", i) % (len(alternative) + 1)
        elif char == "+":
            yield "".join(run)
            run = []
        elif char in "[(":
            yield "".join(run)
            run = []
            i = _skip_group(alternative, i)
            continue
        elif char in "^$.|)]":
            yield "".join(run)
            run = []
        else:
            run.append(char)
        i += 1
    yield "".join(run)


def _skip_group(text: str, i: int) -> int:
    """The index just past the group or character class opening at ``text[i]``."""
    closing = "]" if text[i] == "[" else ")"
    depth, j = 0, i
    while j < len(text):
        char = text[j]
        if char == "\\":
            j += 2
            continue
        if closing == "]":
            if char == "]" and j > i + 1:
                break
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                break
        j += 1
    return j + 1


def _piece(alternative: str) -> str | None:
    """The three letters (lower case) to file ``alternative`` under, or None: one that
    browsers' user agents do not hold if there is one, made of letters and digits if
    there is one (see :meth:`CrawlerIndex.search`)."""
    pieces = [
        run[k : k + 3].lower() for run in _required_runs(alternative) for k in range(len(run) - 2)
    ]
    rare = [piece for piece in pieces if piece not in _COMMON]
    for group in (rare, pieces):
        words = [piece for piece in group if _WORD.fullmatch(piece)]
        if words or group:
            return (words or group)[0]
    return None


#: A run of ASCII letters and digits (of a lower-cased user agent) that can hold a piece.
_WORD = re.compile(r"[a-z0-9]{3,}")
# Distinct words remembered with the pieces they hold; words repeat across user agents
# (browser names, platforms, common versions), so a new user agent is mostly lookups.
_MAX_WORDS = 65_536


class CrawlerIndex:
    """Regular expressions filed by a piece of text their matches must hold.

    >>> index = CrawlerIndex([r"Googlebot\\/", r"^curl"])
    >>> index.search("Mozilla/5.0 (compatible; Googlebot/2.1)"), index.search("Firefox/133.0")
    (True, False)
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        self._filed: dict[str, list[re.Pattern[str]]] = {}
        self._unfiled: list[re.Pattern[str]] = []
        for pattern in patterns:
            for alternative in _alternatives(pattern):
                compiled = re.compile(alternative)
                piece = _piece(alternative)
                if piece is None:
                    self._unfiled.append(compiled)
                else:
                    self._filed.setdefault(piece, []).append(compiled)
        words = [piece for piece in self._filed if _WORD.fullmatch(piece)]
        # Pieces with other characters than letters and digits (a handful) are looked
        # for one by one.
        self._others = tuple(piece for piece in self._filed if not _WORD.fullmatch(piece))
        # The pieces a word holds, found by one scan of the word: the pieces as a trie,
        # so that at each position the regex engine follows one branch.
        self._pieces = re.compile(f"(?=({_trie(words)}))")
        self._words: dict[str, tuple[str, ...]] = {}

    @property
    def unfiled(self) -> int:
        """How many patterns are tried on every user agent (no piece could be found)."""
        return len(self._unfiled)

    def search(self, user_agent: str) -> bool:
        """Whether any pattern matches somewhere in ``user_agent``.

        A pattern is tried only if the user agent holds its piece. A piece of letters and
        digits lies within one run of them, so the pieces of a user agent are those of
        its words, each word scanned once per process and then looked up.
        """
        lower = user_agent.lower()
        found: set[str] = set()
        words, scan = self._words, self._pieces.findall
        for word in _WORD.findall(lower):
            held = words.get(word)
            if held is None:
                held = tuple(set(scan(word)))
                if len(words) < _MAX_WORDS:
                    words[word] = held
            if held:
                found.update(held)
        found.update(piece for piece in self._others if piece in lower)
        filed = self._filed
        for piece in found:
            for compiled in filed[piece]:
                if compiled.search(user_agent):
                    return True
        return any(compiled.search(user_agent) for compiled in self._unfiled)


def _trie(words: Iterable[str]) -> str:
    """A regex matching exactly ``words`` (all of one length), factored by prefix."""
    root: dict[str, Any] = {}
    for word in words:
        node = root
        for char in word:
            node = node.setdefault(char, {})

    def emit(node: dict[str, Any]) -> str:
        branches = [re.escape(char) + emit(child) for char, child in sorted(node.items())]
        if len(branches) <= 1:
            return "".join(branches)
        return "(?:" + "|".join(branches) + ")"

    return emit(root) or "(?!)"


@functools.cache
def crawler_index() -> CrawlerIndex:
    """The index of the ``crawler-user-agents`` list, built once per process."""
    from crawleruseragents import CRAWLER_USER_AGENTS_DATA

    return CrawlerIndex(entry["pattern"] for entry in CRAWLER_USER_AGENTS_DATA)


@functools.lru_cache(maxsize=16_384)
def agent_kind(user_agent: str) -> str | None:
    """``"probe"``, ``"headless"`` or ``"bot"`` for a user agent that is not a visitor's,
    else None. An empty user agent is a bot's: every browser sends one."""
    if not user_agent.strip():
        return "bot"
    lower = user_agent.lower()
    if _PROBES.search(lower):
        return "probe"
    if _HEADLESS.search(lower):
        return "headless"
    return "bot" if crawler_index().search(user_agent) else None
