"""``iot-ingest demo``: everything on embedded defaults, in one process tree.

Embedded broker and DynamoDB-API server, the ingest service, a simulated
fleet (a few hundred devices), and the query API with the dashboard. Prints
the dashboard URL; Ctrl-C (or SIGTERM) stops the fleet, drains the service
and stops the servers. This module sits at the top of the dependency graph
(it imports the simulator and the query API), so nothing imports it but the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config
from .embedded import EmbeddedBroker, EmbeddedDynamo
from .service import IngestService

__all__ = ["DemoOptions", "run_demo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoOptions:
    """What the demo runs."""

    devices: int = 300
    rate_per_s: float = 300.0
    duration_s: float | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("data/demo")
    seed: int = 1


async def run_demo(
    opts: DemoOptions, stop: asyncio.Event, ready: asyncio.Event | None = None
) -> int:
    """Run the demo until ``stop`` is set (or ``duration_s`` has passed)."""
    from queries.app import create_app
    from queries.server import ApiServer
    from queries.settings import ServeSettings
    from simulator.fleet import Fleet
    from simulator.generator import TrafficOptions
    from simulator.run import SimulationConfig, run_simulation

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "demo")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "demo")
    async with contextlib.AsyncExitStack() as stack:
        broker = await stack.enter_async_context(EmbeddedBroker(data_dir=opts.data_dir / "broker"))
        dynamo = await stack.enter_async_context(EmbeddedDynamo())
        cfg = Config(
            mqtt_url=broker.url,
            dynamodb_endpoint=dynamo.endpoint_url,
            table="iot-demo",
            create_table=True,
            data_dir=opts.data_dir,
            metrics_port=0,
            mqtt_client_id="iot-ingest-demo",
            registry_interval_s=2.0,
            aws_access_key_id="demo",
            aws_secret_access_key="demo",
        )
        service = IngestService(cfg)
        service_stop, service_ready = asyncio.Event(), asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            service_task = tg.create_task(service.run(service_stop, service_ready), name="ingest")
            await _first(service_ready.wait(), service_task)
            settings = ServeSettings(
                table=cfg.table,
                endpoint_url=dynamo.endpoint_url,
                aws_access_key_id="demo",
                aws_secret_access_key="demo",
            )
            api = await stack.enter_async_context(
                ApiServer(create_app(settings), host=opts.host, port=opts.port)
            )
            sim_stop = asyncio.Event()
            sim = SimulationConfig(
                fleet=Fleet.uniform(
                    devices=opts.devices,
                    rate_per_s=opts.rate_per_s,
                    kinds=("env", "power", "vibration"),
                ),
                traffic=TrafficOptions(
                    seed=opts.seed, start_ts_ms=int(time.time() * 1000), duration_s=opts.duration_s
                ),
                mqtt_url=broker.url,
                protocol_version="5",
            )
            sim_task = tg.create_task(run_simulation(sim, stop=sim_stop), name="simulator")
            print(
                f"\niot-ingest demo: dashboard at {api.url}/  (API {api.url}/v1/sensors, "
                f"metrics http://127.0.0.1:{service.health_port}/metrics)\n"
                f"  {opts.devices} simulated devices, {opts.rate_per_s:g} readings/s → "
                f"{broker.url} → ingest → DynamoDB (moto, in memory). Ctrl-C stops.\n",
                file=sys.stderr,
                flush=True,
            )
            if ready is not None:
                ready.set()
            await _first(stop.wait(), sim_task)
            sim_stop.set()
            await sim_task
            service_stop.set()
            await service_task
    log.info("demo stopped")
    return 0


async def _first(waiter: Coroutine[Any, Any, object], task: asyncio.Task[Any]) -> None:
    """Wait for ``waiter`` unless ``task`` ends first (its error then propagates)."""
    w = asyncio.ensure_future(waiter)
    try:
        await asyncio.wait([w, task], return_when=asyncio.FIRST_COMPLETED)
    finally:
        w.cancel()
    if task.done() and not w.done():
        task.result()
