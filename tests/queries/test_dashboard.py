"""The dashboard in a real headless Chromium: the page loads, charts render data from a test table.

Chromium is a test dependency (Debian package ``chromium``, installed by
``make test-deps``): when it is missing this test fails, it never skips. The
screenshot is kept under ``test-artifacts/`` (git-ignored) for a human to look at.
"""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from ingest.storage.layout import Reading
from tests.queries.harness import Api, TestTable

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture
def dynamodb_endpoint(moto_server: object) -> str:
    """One DynamoDB-API server is enough here: the browser is what is under test."""
    return moto_server.endpoint_url  # type: ignore[attr-defined, no-any-return]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path is not None:
            return path
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    pytest.fail(
        "chromium not found: the dashboard test needs a real headless browser; "
        "run `make test-deps` (Debian package chromium)",
        pytrace=False,
    )


async def _browser(args: list[str], profile: Path, timeout_s: float = 60) -> str:
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,800",
        "--virtual-time-budget=5000",
        *args,
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {err.decode()[-2000:]}"
    return out.decode()


async def test_dashboard_renders_charts_in_headless_chromium(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
    tmp_path: Path,
) -> None:
    table = await make_table()
    now = time.time_ns() // 1_000_000
    readings = [
        Reading(
            sensor,
            now - 30 * 60_000 + i * 2_500,
            {
                # A smooth curve plus deterministic jitter, so the min/max band shows.
                "temperature": 20 + 3 * math.sin(i / 40 + k) + ((i * 7919) % 11 - 5) * 0.15,
                "humidity": 50 + 10 * math.cos(i / 25 + k),
            },
        )
        for k, sensor in enumerate(("dash-a", "dash-b"))
        for i in range(720)
    ]
    await table.put(readings)
    await table.register(readings)
    api = await serve_api(table)
    url = f"{api.url}/?sensors=dash-a,dash-b&range=3600000&live=0"

    dom = await _browser(["--dump-dom", url], tmp_path / "profile-dom")
    assert 'id="status"' in dom
    assert 'class="error"' not in dom, re.search(r'id="status"[^>]*>[^<]*', dom)
    rendered = re.search(r'id="charts"[^>]*data-rendered="(\d+)"', dom)
    assert rendered is not None, "the charts were not drawn:\n" + dom[-3000:]
    charts = re.findall(r'<svg class="chart"[^>]*data-points="(\d+)"', dom)
    assert len(charts) == 2, charts  # one chart per metric: humidity, temperature
    assert all(int(n) > 100 for n in charts), charts  # 2 sensors x ~120+ windows each
    assert int(rendered.group(1)) == sum(int(n) for n in charts)
    assert dom.count('class="line"') >= 4  # 2 metrics x 2 sensors
    assert 'class="band"' in dom  # the min/max band
    assert "dash-a" in dom
    assert "dash-b" in dom

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    await _browser([f"--screenshot={shot}", url], tmp_path / "profile-shot")
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 20_000, f"screenshot suspiciously small ({len(data)} bytes)"
