"""The query benchmark runs end to end on a real DynamoDB-API server (no speed asserted)."""

from __future__ import annotations

import pytest

from bench.querybench import run_query_bench


@pytest.mark.timeout(300)
async def test_query_bench_reports_every_query_with_read_units() -> None:
    rows = await run_query_bench("dynalite", hours=1, repeat=1)
    assert [r["query"] for r in rows] == [
        "raw 1 h",
        "series 1 h, 500 points",
        "raw 1 h (pages of 10,000)",
        "series 1 h, 500 points",
    ]
    assert rows[0]["items"] == 3600  # every reading of the hour, once
    assert rows[1]["items"] <= 500  # at most max_points windows
    assert all(r["read_units"] > 0 for r in rows)
