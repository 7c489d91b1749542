"""The query benchmark runs end to end on a real DynamoDB-API server (no speed asserted)."""

from __future__ import annotations

import pytest

from bench.querybench import run_dashboard_bench, run_query_bench


@pytest.mark.timeout(300)
async def test_query_bench_reports_every_query_with_read_units() -> None:
    rows = await run_query_bench("dynalite", hours=1, repeat=1)
    assert [r["query"] for r in rows] == [
        "raw 1 h",
        "series 1 h, 500 points",
        "raw 1 h (pages of 10,000)",
        "series 1 h, 500 points",
        "series 1 h, 1 h step",
    ]
    assert rows[0]["items"] == 3600  # every reading of the hour, once
    assert rows[1]["items"] <= 500  # at most max_points windows
    assert all(r["read_units"] > 0 for r in rows)


@pytest.mark.timeout(300)
async def test_query_bench_on_a_packed_table_reads_its_rollups() -> None:
    rows = {r["query"]: r for r in await run_query_bench("dynalite", 2, 1, "packed")}
    assert rows["raw 2 h (pages of 10,000)"]["items"] == 7200
    hourly = rows["series 2 h, 1 h step"]
    assert hourly["items"] == 2
    # Two minute items of ≈ 1 KB: the least a Query costs.
    assert 0 < hourly["read_units"] <= 0.5, hourly


@pytest.mark.timeout(300)
async def test_dashboard_refresh_reads_only_the_open_bucket_after_the_first_load() -> None:
    # Allowance 0: every bucket that ended is closed (the current hour's is open).
    rows = await run_dashboard_bench(
        "dynalite", hours=3, refreshes=3, interval_s=0.5, allowance_s=0.0
    )
    assert [r["refresh"] for r in rows] == [1, 2, 3]
    assert all(r["calls_without_cache"] == 4 * 4 for r in rows)  # 4 buckets x 4 shards
    assert rows[0]["calls_with_cache"] == 4 * 4  # the first load reads them all
    for r in rows[1:]:
        # The open bucket only (and the one before, should the hour turn meanwhile).
        assert r["calls_with_cache"] in (4, 8), r
        assert 0 < r["units_with_cache"] < r["units_without_cache"] / 2
