"""The targets of issues 3, 9 and 10 checked against ``sauce-sql bench``'s figures, and
its table."""

from __future__ import annotations

import os
import platform
import sqlite3
from dataclasses import asdict, dataclass
from typing import Any

from sauce_sql.bench.aio import async_lines, async_targets

__all__ = ["Target", "evaluate", "format_report"]

SINGLE_LIMITS = {
    "inc_sequence": 1.3,
    "lookup_session": 1.5,
    "new_session": 2.0,
    "revive_session": 2.0,
    "maybe_revive_session": 2.0,
    "assign_user": 2.0,
}
# Memory is "flat" when a hundred times the sessions costs less than this much RSS.
FLAT_RSS_MB = 16.0


@dataclass(frozen=True)
class Target:
    """One target: what was measured, the limit, and whether it holds."""

    name: str
    measured: float
    limit: float
    unit: str
    holds: bool
    #: Whether the limit is a floor rather than a ceiling.
    at_least: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The target as a JSON-ready dict."""
        return asdict(self)

    def line(self) -> str:
        """One line of the report."""
        mark = " ok " if self.holds else "MISS"
        relation = ">=" if self.at_least or self.unit == "ops/s" else "<="
        return (
            f"[{mark}] {self.name:<56} {self.measured:>10.2f} {self.unit:<5} "
            f"(target {relation} {self.limit:g})"
        )


def _ratio(figures: dict[str, Any], a: str, b: str) -> float:
    return float(figures[a]["median_us"] / figures[b]["median_us"])


def evaluate(results: dict[str, Any]) -> list[Target]:
    """Every target the run has figures for."""
    targets: list[Target] = []

    def at_most(name: str, measured: float, limit: float, unit: str = "x") -> None:
        targets.append(Target(name, measured, limit, unit, measured <= limit))

    lite = results.get("sqlite")
    if lite:
        single = lite["single"]
        for op, limit in SINGLE_LIMITS.items():
            at_most(
                f"sqlite {op} / raw sqlite3 (median)", _ratio(single[op], "store", "raw"), limit
            )
        if "redis" in single["inc_sequence"]:
            ratio = _ratio(single["inc_sequence"], "store", "redis")
            at_most("sqlite inc_sequence / redis-py pipeline (median)", ratio, 0.35)
        threads = lite["threads"]
        store_4, raw_1 = threads["store_4"]["ops_per_s"], threads["raw_1"]["ops_per_s"]
        targets.append(
            Target(
                "sqlite 4 threads ops/s, at least one raw client's",
                store_4,
                raw_1,
                "ops/s",
                store_4 >= raw_1,
            )
        )
        at_most("sqlite 4 threads worst call", threads["store_4"]["worst_us"] / 1000, 50, "ms")
        procs = lite["processes"]["store"]
        at_most("sqlite 4 processes: increments lost", procs["acked"] - procs["stored"], 0, "")
        at_most("sqlite 4 processes: errors (SQLITE_BUSY)", procs["errors"], 0, "")
        paced = lite.get("processes_paced", {}).get("store")
        if paced is not None:
            lost = paced["acked"] - paced["stored"]
            at_most("sqlite 4 processes, paced: increments lost", lost, 0, "")
        clean = lite["cleanup"]
        worst = clean["store"]["worst_wait_ms"]
        at_most("sqlite cleanup: writer's worst wait, all runs", worst, 50, "ms")
        ratio = clean["store"]["total_ms"] / clean["raw_one_delete"]["total_ms"]
        at_most("sqlite cleanup total / one DELETE (median runs)", ratio, 1.5)
    pg = results.get("postgresql")
    if pg:
        for op in SINGLE_LIMITS:
            at_most(
                f"postgresql {op} / raw psycopg (median)",
                _ratio(pg["single"][op], "store", "raw"),
                1.3,
            )
        worst = pg["cleanup"]["store"]["worst_wait_ms"]
        at_most("postgresql cleanup: writer's worst wait, all runs", worst, 10, "ms")
    targets += _server_targets(results)
    for name, measured, limit, unit in async_targets(results.get("asyncio") or {}):
        if unit == "ops/s":
            targets.append(Target(name, measured, limit, unit, measured >= limit))
        else:
            at_most(name, measured, limit, unit)
    memory = results.get("memory") or []
    if len(memory) >= 2:
        growth = memory[-1]["rss_mb_after_ops"] - memory[0]["rss_mb_after_ops"]
        label = f"RSS growth from {memory[0]['sessions']} to {memory[-1]['sessions']} sessions"
        at_most(label, growth, FLAT_RSS_MB, "MB")
    return targets


def _growth_kib(figures: dict[str, Any]) -> float:
    before, after = figures["before"], figures["after"]
    grown = sum(after[k] - before[k] for k in ("table_bytes", "index_bytes"))
    return float(grown / 1024)


def _server_targets(results: dict[str, Any]) -> list[Target]:
    """The targets of issue 9: HOT updates, no growth, throughput through PgBouncer."""
    targets: list[Target] = []
    lean = results.get("lean_expiry")
    if lean:
        share = lean["store"]["hot_updates"] / lean["store"]["updates"]
        name = "postgresql increments that are HOT updates"
        targets.append(Target(name, share, 0.9, "share", share >= 0.9, at_least=True))
        # Relative: a few updates find no room on their page, more so while other
        # transactions on the server keep dead row versions from being pruned.
        every = _growth_kib(lean["every_write"])
        share = _growth_kib(lean["store"]) / every if every else 0.0
        name = "postgresql growth under increments / moving expires_at"
        targets.append(Target(name, share, 0.05, "x", share <= 0.05))
    pooled = results.get("pgbouncer")
    if pooled:
        ratio = pooled["ratio"]
        name = f"{pooled['processes']}x{pooled['threads']} through PgBouncer / direct (median)"
        targets.append(Target(name, ratio, 0.8, "x", ratio >= 0.8, at_least=True))
        runs = [run for done in pooled["rounds"].values() for run in done]
        lost = sum(run["acked"] - run["stored"] for run in runs)
        errors = sum(run["errors"] for run in runs)
        targets.append(Target("pgbouncer and direct: increments lost", lost, 0, "", lost == 0))
        targets.append(Target("pgbouncer and direct: errors", errors, 0, "", errors == 0))
    return targets


def _server_parts(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    lean = results.get("lean_expiry")
    if lean:
        lines.append(
            f"PostgreSQL: {lean['increments']} increments over {lean['sessions']} sessions"
            " (autovacuum off on these tables)"
        )
        labels = {"every_write": "expires_at moved every time", "store": "store (lean expiry)"}
        for name, label in labels.items():
            f = lean[name]
            b, a = f["before"], f["after"]
            lines.append(
                f"  {label:<30} HOT {f['hot_updates']:>6} of {f['updates']:>6}"
                f" ({f['hot_updates'] / f['updates']:>6.1%});"
                f" table {b['table_bytes'] // 1024} -> {a['table_bytes'] // 1024} KiB,"
                f" indexes {b['index_bytes'] // 1024} -> {a['index_bytes'] // 1024} KiB"
            )
        lines.append("")
    pooled = results.get("pgbouncer")
    if pooled:
        lines.append(
            f"PostgreSQL: {pooled['processes']} processes x {pooled['threads']} threads"
            f" incrementing, {pooled['seconds']:g} s slices in alternating order"
            " (ops/s; every acknowledged increment stored?)"
        )
        for name, done in pooled["rounds"].items():
            runs = ", ".join(
                f"{r['ops_per_s']:.0f} ({'ok' if r['acked'] == r['stored'] else 'LOST'},"
                f" {r['errors']} errors)"
                for r in done
            )
            lines.append(f"  {name:<10} {runs}")
        ratios = ", ".join(f"{x:.2f}" for x in pooled["round_ratios"])
        lines.append(
            f"  through PgBouncer / direct: {pooled['ratio']:.2f}x of median ops/s;"
            f" pair by pair {ratios}"
        )
        first = next(
            (r["first_error"] for d in pooled["rounds"].values() for r in d if r["first_error"]),
            None,
        )
        if first:
            lines.append(f"  first error: {first}")
        lines.append("")
    return lines


def _row(figures: dict[str, Any]) -> str:
    return f"{figures['median_us']:>9.1f} {figures['p99_us']:>9.1f} {figures['worst_us']:>10.1f}"


def _single_table(title: str, single: dict[str, Any], base: str) -> list[str]:
    lines = [
        title,
        f"  {'operation':<22} {'store med':>9} {'p99':>9} {'worst':>10} |"
        f" {base + ' med':>9} {'p99':>9} {'worst':>10} | {'ratio':>6}",
    ]
    for op, figures in single.items():
        ratio = _ratio(figures, "store", "raw")
        lines.append(
            f"  {op:<22} {_row(figures['store'])} | {_row(figures['raw'])} | {ratio:>5.2f}x"
        )
        if "redis" in figures:
            redis = figures["redis"]
            lines.append(
                f"  {'  redis-py pipeline':<22} {'':>9} {'':>9} {'':>10} | {_row(redis)} |"
                f" {_ratio(figures, 'store', 'redis'):>5.2f}x"
            )
    return lines


def _concurrency(lite: dict[str, Any]) -> list[str]:
    threads, full = lite["threads"], lite["full"]
    lines = ["SQLite inc_sequence at once (ops/s, latency us)"]
    rows = [
        ("store, 4 threads", threads["store_4"]),
        ("raw sqlite3, 1 client", threads["raw_1"]),
        ("raw sqlite3, 4 threads", threads["raw_4"]),
        ("store full, 4 threads", full["threads"]["store_4"]),
        ("raw sqlite3 full, 1 client", full["threads"]["raw_1"]),
        ("raw sqlite3 full, 4 threads", full["threads"]["raw_4"]),
    ]
    for label, f in rows:
        lines.append(f"  {label:<30} {f['ops_per_s']:>9.0f} ops/s  med {_row(f)}")
    lines.append(
        f"  normal: {threads['writes_per_turn']:.0f} writes per turn on the floor;"
        f" full: {full['threads']['mean_group']:.1f} writes per shared commit (groups of 2+)"
    )
    lines.append(
        f"  durability=full, 1 client: store med {full['store']['median_us']:.1f} us,"
        f" raw {full['raw']['median_us']:.1f} us ({_ratio(full, 'store', 'raw'):.2f}x)"
    )
    for kind, p in lite["processes"].items():
        lat = p["latency"]
        lines.append(
            f"  {kind}, 4 processes: {p['acked'] / p['wall_s']:>9.0f} ops/s (incl. start-up),"
            f" acked {p['acked']}, stored {p['stored']}, errors {p['errors']},"
            f" med {lat['median_us']:.1f} us, worst {lat['worst_us'] / 1000:.1f} ms"
        )
    for kind, p in lite.get("processes_paced", {}).items():
        lat = p["latency"]
        lines.append(
            f"  {kind}, 4 processes, a write every 1 ms each: {p['acked']} calls,"
            f" med {lat['median_us']:.1f} us, p99 {lat['p99_us']:.1f} us,"
            f" worst {lat['worst_us'] / 1000:.1f} ms, lost {p['acked'] - p['stored']}"
        )
    return lines


def _cleanup(title: str, clean: dict[str, Any]) -> list[str]:
    lines = [title + " (median run; every run's total and writer's worst wait)"]
    for label, c in (("store, batched", clean["store"]), ("one DELETE", clean["raw_one_delete"])):
        w, a = c["writer"], c["writer_alone"]
        totals = ", ".join(f"{t:.0f}" for t in c["totals_ms"])
        worsts = ", ".join(f"{t:.1f}" for t in c["worst_waits_ms"])
        lines.append(
            f"  {label:<16} deleted {c['deleted']:>8} in {c['total_ms']:>8.1f} ms;"
            f" writer: {w['calls']:>6} calls, p99 {w['p99_us'] / 1000:>7.2f} ms,"
            f" worst {w['worst_us'] / 1000:>8.2f} ms"
            f" (alone before: worst {a['worst_us'] / 1000:.2f} ms)"
        )
        lines.append(f"  {'':<16} totals ms: {totals}; writer's worst waits ms: {worsts}")
    return lines


def format_report(results: dict[str, Any]) -> str:
    """The figures and targets as an aligned table for people."""
    lines = [
        f"sauce-sql bench on this machine: Python {platform.python_version()},"
        f" SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs."
        " Latencies in microseconds; ratios of medians from the same interleaved run.",
        "",
    ]
    for part, why in results["skipped"].items():
        lines.append(f"skipped {part}: {why}")
    lite = results.get("sqlite")
    if lite:
        lines += _single_table("SQLite WAL file, one client", lite["single"], "raw")
        lines.append("")
        lines += _concurrency(lite)
        lines.append("")
        lines += _cleanup("SQLite cleanup while a writer increments", lite["cleanup"])
        lines.append("")
    pg = results.get("postgresql")
    if pg:
        lines += _single_table("PostgreSQL, one client", pg["single"], "psycopg")
        lines.append("")
        lines += _cleanup("PostgreSQL cleanup while a writer increments", pg["cleanup"])
        lines.append(
            f"  bytes on disk per session (table + indexes): {pg['bytes_per_session']:.0f}"
        )
        lines.append("")
    lines += _server_parts(results)
    lines += async_lines(results.get("asyncio") or {})
    lines.append("")
    for m in results.get("memory") or []:
        lines.append(
            f"memory: {m['sessions']:>8} sessions: RSS {m['rss_mb_started']:.1f} MB started,"
            f" {m['rss_mb_after_ops']:.1f} MB after 20000 increments and lookups;"
            f" {m['bytes_per_session']:.0f} bytes on disk per session (SQLite);"
            f" populated in {m['populate_s']:.1f} s"
        )
    lines += ["", "Targets (issues 3, 9 and 10)"]
    lines += [Target(**t).line() for t in results["targets"]]
    return "\n".join(lines)
