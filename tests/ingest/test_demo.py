"""The one-command demo: embedded servers, ingest, a fleet and the dashboard, stopped cleanly."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from bench.servers import free_port
from ingest.demo import DemoOptions, run_demo


async def test_demo_serves_live_data_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    stop, ready = asyncio.Event(), asyncio.Event()
    opts = DemoOptions(devices=30, rate_per_s=60, port=port, data_dir=tmp_path)
    demo = asyncio.create_task(run_demo(opts, stop, ready))
    try:
        await asyncio.wait(
            [demo, asyncio.create_task(ready.wait())], timeout=60, return_when="FIRST_COMPLETED"
        )
        assert ready.is_set(), "demo did not start"
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/") as r:
                assert r.status == 200 and "<html" in (await r.text()).lower()
            sensors: list[dict[str, object]] = []
            deadline = time.monotonic() + 30
            while len(sensors) < 30:
                assert time.monotonic() < deadline, f"only {len(sensors)} sensors listed"
                await asyncio.sleep(0.5)
                async with http.get(base + "/v1/sensors") as r:
                    sensors = (await r.json())["sensors"]
            sid = sensors[0]["sensor_id"]
            async with http.get(
                f"{base}/v1/sensors/{sid}/readings?start={int(time.time() * 1000) - 60_000}"
            ) as r:
                assert r.status == 200
                assert (await r.json())["readings"], "no readings for a listed sensor"
    finally:
        stop.set()
        assert await asyncio.wait_for(demo, 60) == 0
