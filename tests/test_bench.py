"""``sauce-sql bench`` runs end to end at tiny sizes and measures what it says.

Its figures are not checked here (timings belong to the benchmark, not to tests): only
that every part runs against the real databases and that its bookkeeping holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import PG_URL, postgres_unavailable

from sauce_sql.bench import BenchOptions, run
from sauce_sql.bench.clients import OPERATIONS
from sauce_sql.bench.report import format_report


@pytest.mark.slow
def test_bench_runs_every_part_at_tiny_sizes(tmp_path: Path) -> None:
    """Every part runs; acknowledged increments are all stored; cleanups delete every
    expired row they were given; the report and the JSON come out."""
    pg = None if postgres_unavailable() else PG_URL
    options = BenchOptions(
        directory=str(tmp_path),
        pg_url=pg,
        redis_url=None,
        sessions=200,
        rounds=1,
        per_round=20,
        seconds=0.3,
        cleanup_rows=300,
        cleanup_runs=2,
        memory_sessions=(1000, 3000),
    )
    results = run(options)
    lite = results["sqlite"]
    assert set(lite["single"]) == set(OPERATIONS)
    for kind in ("store", "raw"):
        procs = lite["processes"][kind]
        assert procs["acked"] > 0
        assert procs["acked"] == procs["stored"]
        assert procs["errors"] == 0
    for backend in ("sqlite", "postgresql") if pg else ("sqlite",):
        cleanup = results[backend]["cleanup"]
        for contender in ("store", "raw_one_delete"):
            assert cleanup[contender]["deleted"] == 300
            assert len(cleanup[contender]["totals_ms"]) == 2
    if pg:
        assert set(results["postgresql"]["single"]) == set(OPERATIONS)
    assert [m["sessions"] for m in results["memory"]] == [1000, 3000]
    assert results["skipped"]["redis"] == "no --redis-url"
    assert results["targets"]
    report = format_report(results)
    assert "Targets (issue 3)" in report
    json.dumps(results)
