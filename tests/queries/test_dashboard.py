"""The dashboard in a real headless Chromium: the page loads, charts render data from a test table;
a drag across a chart zooms (driven over the DevTools protocol: real mouse events).

Chromium is a test dependency (Debian package ``chromium``, installed by
``make test-deps``): when it is missing this test fails, it never skips. The
screenshot is kept under ``test-artifacts/`` (git-ignored) for a human to look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import re
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
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


class _Page:
    """One tab of a headless Chromium, driven over the DevTools protocol (a WebSocket)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        await self._ws.send_json({"id": msg_id, "method": method, "params": params})
        while True:
            msg = await self._ws.receive_json(timeout=30)
            if msg.get("id") == msg_id:
                assert "error" not in msg, (method, msg["error"])
                return msg["result"]  # type: ignore[no-any-return]

    async def eval(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float = 20) -> Any:
        """Poll ``expression`` until it is truthy (the page's state, no fixed sleep)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = await self.eval(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        status = await self.eval("document.getElementById('status').textContent")
        raise AssertionError(f"timed out waiting for {expression} (status: {status})")

    async def mouse(self, kind: str, x: float, y: float, clicks: int = 1) -> None:
        await self.call(
            "Input.dispatchMouseEvent",
            type=kind,
            x=x,
            y=y,
            button="left",
            buttons=0 if kind == "mouseReleased" else 1,
            clickCount=clicks,
        )


@contextlib.asynccontextmanager
async def _devtools(profile: Path) -> AsyncIterator[_Page]:
    proc = await asyncio.create_subprocess_exec(
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,800",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        port = None
        while port is None:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert line, "chromium exited before its DevTools endpoint was up"
            found = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            port = int(found.group(1)) if found else None
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            target = next(t for t in targets if t["type"] == "page")
            async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield _Page(ws)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


_CHARTS = "document.getElementById('charts').dataset"


async def _range(page: _Page) -> tuple[int, int, int]:
    """The charts' range as the server resolved it (start, end) and their step."""
    values = await page.eval(f"[{_CHARTS}.start, {_CHARTS}.end, {_CHARTS}.step]")
    start, end, step = (int(v) for v in values)
    return start, end, step


async def test_dragging_across_a_chart_zooms_every_chart_and_double_click_resets(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
    tmp_path: Path,
) -> None:
    table = await make_table()
    now = time.time_ns() // 1_000_000
    readings = [
        Reading(sensor, now - 50 * 60_000 + i * 5_000, {"t": 20 + math.sin(i / 30 + k), "h": 1.0})
        for k, sensor in enumerate(("zoom-a", "zoom-b"))
        for i in range(600)
    ]
    await table.put(readings)
    await table.register(readings)
    api = await serve_api(table)
    url = f"{api.url}/?sensors=zoom-a,zoom-b&range=3600000&live=0"
    async with _devtools(tmp_path / "profile-cdp") as page:
        await page.call("Page.navigate", url=url)
        await page.wait_for(f"{_CHARTS}.fetches === '1'")
        start0, end0, step0 = await _range(page)
        assert end0 - start0 == 3_600_000  # the live range: start=now-3600s&end=now
        assert await page.eval("location.search.includes('from=')") is False
        box = await page.eval(
            "(() => { const r = document.querySelector('svg.chart').getBoundingClientRect();"
            " return [r.left, r.top, r.width, r.height]; })()"
        )
        left, top, width, height = box
        y = top + height / 2
        # Drag from 40% to 70% of the first chart's width.
        await page.mouse("mousePressed", left + 0.4 * width, y)
        await page.mouse("mouseMoved", left + 0.55 * width, y)
        await page.mouse("mouseMoved", left + 0.7 * width, y)
        await page.mouse("mouseReleased", left + 0.7 * width, y)
        await page.wait_for(f"{_CHARTS}.fetches === '2'")
        start1, end1, step1 = await _range(page)
        assert start0 < start1 < end1 < end0
        assert 0.2 < (end1 - start1) / (end0 - start0) < 0.4, (start1, end1)
        assert step1 < step0  # refetched at a finer step
        search = await page.eval("location.search")
        assert f"from={start1}" in search and f"to={end1}" in search, search
        assert await page.eval("document.getElementById('reset-zoom').hidden") is False
        # Every chart shows the zoomed range's data (both metrics, both sensors).
        points = await page.eval(
            "Array.from(document.querySelectorAll('svg.chart')).map(s => +s.dataset.points)"
        )
        assert len(points) == 2 and all(n > 20 for n in points), points

        # The zoomed URL, shared: the same range again.
        await page.call("Page.navigate", url=f"{api.url}/{search}")
        await page.wait_for(f"{_CHARTS}.fetches === '1'")
        assert int(await page.eval(f"{_CHARTS}.start")) == start1
        assert int(await page.eval(f"{_CHARTS}.end")) == end1

        # Double-click: back to the live range.
        box = await page.eval(
            "(() => { const r = document.querySelector('svg.chart').getBoundingClientRect();"
            " return [r.left, r.top, r.width, r.height]; })()"
        )
        x, y = box[0] + box[2] / 2, box[1] + box[3] / 2
        for clicks in (1, 2):
            await page.mouse("mousePressed", x, y, clicks)
            await page.mouse("mouseReleased", x, y, clicks)
        await page.wait_for(f"{_CHARTS}.fetches === '2'")
        assert (
            int(await page.eval(f"{_CHARTS}.end")) - int(await page.eval(f"{_CHARTS}.start"))
            == 3_600_000
        )
        assert await page.eval("location.search.includes('from=')") is False
        assert await page.eval("document.getElementById('reset-zoom').hidden") is True

        # A relative range in the URL: resolved by the server, kept relative in the URL.
        await page.call("Page.navigate", url=f"{url}&from=now-20m&to=now")
        await page.wait_for(f"{_CHARTS}.fetches === '1'")
        assert (
            int(await page.eval(f"{_CHARTS}.end")) - int(await page.eval(f"{_CHARTS}.start"))
            == 20 * 60_000
        )
        assert "from=now-20m" in await page.eval("location.search")
        assert await page.eval("document.querySelectorAll('svg.chart').length") == 2
