"""``iot-ingest demo``: everything on embedded defaults, in one process tree.

Embedded broker and DynamoDB-API server (moto, which serves S3 on the same
endpoint), the ingest service, a simulated fleet, the archiver, compaction, and the
query API with the dashboard. Prints the dashboard URL; Ctrl-C (or SIGTERM) stops
the fleet, the archiver and compaction, drains the service and stops the servers.
This module sits at the top of the dependency graph (it imports the simulator, the
archive and the query API), so nothing imports it but the CLI.

**The table is ``packed``** (decision 0008) unless ``layout="reading"``: one item per
sensor and window, plus the journal and staging items, instead of one per reading.
The embedded moto's base-table Queries read their own partition
(:mod:`ingest.trial.motoserver`; plain moto reads and sorts its whole table for every
Query, which held this demo to 500 devices with a sensor list near a second): at
2,000 devices the dashboard's whole sensor list takes about half a second
(docs/performance.md, "The demo on the embedded moto"). What bounds a demo now is
the one moto process every part shares (each UpdateItem a few ms of its CPU) and the
demo process's own CPU (the fleet, the ingest and the API on one event loop). Its
settings are the demo's, not production's: five-minute windows (the replayed history
is sealed a minute after the start, live windows a minute after they end), staging
every two seconds (a reading is on the dashboard within seconds), few staging
groups, journal flushes every 500 ms (fewer items; the acknowledgements wait that
long).

The lifecycle shows within minutes: the table has five-minute buckets; first the
fleet's last ``history_minutes`` are replayed (fast, through the broker like any
traffic), so there are sealed windows and closed buckets a minute after the start;
then, beside the live fleet, compaction runs every ``compact_every_s`` (as
``iot-ingest table compact --every``), and the archiver a pass every
``archive_every_s``: each sensor's bucket goes to S3 as Parquet
``archive_horizon_s`` after it closed, is verified, marked, and deleted from
DynamoDB. The query API is given the archive bucket, so the dashboard reads the
older minutes from S3 (responses say so in ``tiers``) and the last ones from
DynamoDB. An archiver that does not take the table's layout (one that archives only
``reading`` tables) refuses it when it is constructed: the demo says so in one line
and runs without archival.

Against DynamoDB a Query costs what it reads, not what the table holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ingest.aws.settings import AwsSettings
from ingest.config import Config
from ingest.core.lifecycle import StopRequested, unless_stopped
from ingest.pipeline.service import IngestService
from ingest.trial.servers import EmbeddedBroker, EmbeddedDynamo

if TYPE_CHECKING:
    from ingest.archive.archiver import Archiver
    from ingest.archive.metrics import ArchiveMetrics
    from ingest.storage.dynamo import TableClient
    from ingest.storage.layout import TableLayout
    from simulator.run import SimulationConfig

__all__ = ["DEFAULT_DEVICES", "DemoInfo", "DemoOptions", "demo_config", "run_demo"]

log = logging.getLogger(__name__)

_KINDS = ("env", "power", "vibration")
DEFAULT_DEVICES = 500
"""Devices of the demo by default (``--devices``), a reading a second each."""
_KEY = "demo"  # moto takes any credentials
_STOP_GRACE_S = 2.0  # beyond the service's own drain deadline, before the demo cancels it


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoOptions:
    """What the demo runs.

    Args:
        devices: Simulated devices.
        rate_per_s: Readings per second of the live fleet (``None``: one per device).
        duration_s: Stop after this long (``None``: until stopped).
        host: Address of the dashboard/API.
        port: Its port (0: any).
        data_dir: Dead letters and the broker's data.
        seed: Seed of the simulated traffic.
        mqtt_url: A broker of your own instead of the embedded one (``None``: embedded).
        mqtt_protocol: MQTT version of the service and the fleet (with the embedded
            broker: this one if it speaks it, else the one it speaks).
        layout: Table layout: ``packed`` (decision 0008) or ``reading`` (one item per
            reading: a Query per shard and bucket, each of a reading's items on moto).
        bucket_minutes: Bucket width of the demo table (short, so buckets close soon).
        shards: Write shards of a ``reading`` table (few: every shard is a Query per bucket
            on the embedded moto).
        window_seconds: ``packed``: window width (divides the bucket; short, so windows
            seal within the demo's first minutes).
        stage_interval_ms: ``packed``: how often staging items make readings visible.
        staging_groups: ``packed``: sensor groups of the staging items (few: each is an
            item per staging interval, and a reader reads its group's last minutes).
        flush_interval_ms: ``packed``: the journal's flush interval (an item per flush;
            the acknowledgements wait for it).
        compact_every_s: ``packed``: seconds between compaction passes (``None``: none).
        retention_days: Retention of the demo table.
        history_minutes: Minutes of past traffic replayed at the start (0: none).
        history_rate_per_s: Readings per second of that history (``None``: see
            :attr:`replay_rate_per_s`, light on the in-memory server).
        archive: Run the archiver (and give the query API the archive bucket), if it
            takes the table's layout.
        archive_every_s: Seconds between archive passes.
        archive_horizon_s: Archive a bucket this long after it closed.
        s3_bucket: The archive's bucket on the embedded S3.
        shutdown_timeout_s: How long the demo may take to stop once asked (the fleet and
            the archiver a third of it, the service's drain the rest).
    """

    devices: int = DEFAULT_DEVICES
    rate_per_s: float | None = None
    duration_s: float | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("data/demo")
    seed: int = 1
    mqtt_url: str | None = None
    mqtt_protocol: Literal["5", "3.1.1"] = "5"
    layout: Literal["packed", "reading"] = "packed"
    bucket_minutes: int = 5
    shards: int = 2
    window_seconds: int = 300
    stage_interval_ms: int = 2_000
    staging_groups: int = 8
    flush_interval_ms: int = 500
    compact_every_s: float | None = 60.0
    retention_days: int = 1
    history_minutes: float = 10.0
    history_rate_per_s: float | None = None
    archive: bool = True
    archive_every_s: float = 30.0
    archive_horizon_s: float = 60.0
    s3_bucket: str = "iot-demo-archive"
    shutdown_timeout_s: float = 15.0

    @property
    def live_rate_per_s(self) -> float:
        """Readings per second of the live fleet."""
        return float(self.devices) if self.rate_per_s is None else self.rate_per_s

    @property
    def replay_rate_per_s(self) -> float:
        """Readings per second of the replayed history: ``history_rate_per_s``, else the
        live rate, at most 20/s on a ``reading`` table (one item each) or 100/s on a
        ``packed`` one (its items are per sensor and window, whatever their readings; the
        replay's burst is what the ingest and moto must absorb at the start)."""
        if self.history_rate_per_s is not None:
            return self.history_rate_per_s
        return min(self.live_rate_per_s, 20.0 if self.layout == "reading" else 100.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoInfo:
    """Where the running demo's parts are (given to ``on_ready``)."""

    api_url: str
    metrics_url: str
    mqtt_url: str
    endpoint_url: str
    table: str
    s3_bucket: str | None
    s3_prefix: str
    archive_metrics_url: str | None


async def run_demo(
    opts: DemoOptions,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
    *,
    on_ready: Callable[[DemoInfo], None] | None = None,
) -> int:
    """Run the demo until ``stop`` is set (or ``duration_s`` has passed).

    ``stop`` is heeded in every state. While starting, the step under way is abandoned
    (a server coming up is killed) and what started is stopped; a service that cannot
    reach its broker is drained (it holds nothing) and stopped. Once running, the fleet
    and the archiver get a third of ``shutdown_timeout_s`` to finish (then they are
    cancelled: the demo's data is in memory anyway), the service the rest to drain.

    Args:
        opts: What to run.
        stop: Set it to stop everything (fleet, archiver, service, servers).
        ready: Set once the dashboard serves and the fleet runs.
        on_ready: Called then with where everything is.

    Returns:
        0 (also when stopped before it was ready).
    """
    os.environ.setdefault("AWS_ACCESS_KEY_ID", _KEY)
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", _KEY)
    async with contextlib.AsyncExitStack() as stack:
        try:
            await _run(opts, stop, ready, on_ready, stack)
        except StopRequested:
            log.info("demo stopped while starting")
            return 0
    log.info("demo stopped")
    return 0


async def _run(
    opts: DemoOptions,
    stop: asyncio.Event,
    ready: asyncio.Event | None,
    on_ready: Callable[[DemoInfo], None] | None,
    stack: contextlib.AsyncExitStack,
) -> None:
    """The demo; raises :class:`StopRequested` when ``stop`` comes before it is ready."""
    from ingest.archive.metrics import ArchiveMetrics
    from ingest.archive.planner import validate_horizon
    from ingest.pipeline.service import layout_from_config
    from ingest.storage.archive.errors import ArchiveConfigError
    from ingest.storage.dynamo import DynamoClient
    from queries.api.app import create_app
    from queries.api.server import ApiServer
    from queries.api.settings import ServeSettings
    from simulator.run import run_simulation

    history_ms = round(opts.history_minutes * 60_000)
    # A bad option fails before anything starts (the servers' addresses are not known yet).
    demo_config(
        opts, mqtt_url="mqtt://127.0.0.1:1883", protocol="5", endpoint_url="http://127.0.0.1"
    )
    mqtt_url, protocol = opts.mqtt_url, opts.mqtt_protocol
    if mqtt_url is None:
        broker = await unless_stopped(
            stop, stack.enter_async_context(EmbeddedBroker(data_dir=opts.data_dir / "broker"))
        )
        mqtt_url, protocol = broker.url, broker.protocol_for(protocol)
    dynamo = await unless_stopped(stop, stack.enter_async_context(EmbeddedDynamo()))
    cfg = demo_config(opts, mqtt_url=mqtt_url, protocol=protocol, endpoint_url=dynamo.endpoint_url)
    layout = layout_from_config(cfg)
    if opts.archive and layout.kind == "reading":  # a bad option fails before anything starts
        validate_horizon(layout, round(opts.archive_horizon_s * 1000))
    service = IngestService(cfg)
    service_stop, service_ready = asyncio.Event(), asyncio.Event()
    archive_metrics = ArchiveMetrics()
    stopped_starting = False
    async with asyncio.TaskGroup() as tg:
        service_task = tg.create_task(service.run(service_stop, service_ready), name="ingest")
        try:
            await _first(service_task, service_ready, stop)
            if stop.is_set():
                raise StopRequested
            archive: tuple[Archiver, str] | None = (
                await unless_stopped(stop, _open_archive(stack, opts, cfg, layout, archive_metrics))
                if opts.archive
                else None
            )
            archiver, archive_metrics_url = archive or (None, None)
            settings = ServeSettings(
                table=cfg.dynamodb.table,
                endpoint_url=dynamo.endpoint_url,
                s3_bucket=opts.s3_bucket if archive else None,
                s3_endpoint=dynamo.endpoint_url if archive else None,
                aws_access_key_id=_KEY,
                aws_secret_access_key=_KEY,
            )
            api = await unless_stopped(
                stop,
                stack.enter_async_context(
                    ApiServer(create_app(settings), host=opts.host, port=opts.port)
                ),
            )
        except StopRequested:
            # Not raised here: the task group would wrap it. The service holds nothing it
            # could acknowledge (it was never ready, or only just): its drain is quick.
            stopped_starting = True
        if stopped_starting:
            service_stop.set()
            await service_task
        else:
            now_ms = int(time.time() * 1000)
            sim_stop, archive_stop = asyncio.Event(), asyncio.Event()
            budget_s = opts.shutdown_timeout_s / 3
            sim_task = tg.create_task(
                run_simulation(
                    _live_run(opts, mqtt_url, protocol, now_ms, flush_timeout_s=budget_s),
                    stop=sim_stop,
                ),
                name="simulator",
            )
            history = _history_run(opts, mqtt_url, protocol, now_ms, flush_timeout_s=budget_s)

            async def history_then_archive() -> None:
                if history is not None:
                    await run_simulation(history, stop=sim_stop)
                    if not sim_stop.is_set():
                        log.info("demo: %g minutes of history replayed", opts.history_minutes)
                if archiver is not None and not archive_stop.is_set():
                    try:
                        await archiver.run_every(opts.archive_every_s, archive_stop)
                    except ArchiveConfigError as exc:  # a demo goes on without archival
                        log.error("demo: archival stopped: the archiver refuses (%s)", exc)

            background = tg.create_task(history_then_archive(), name="history-and-archive")
            others = [sim_task, background]
            if layout.kind == "packed" and opts.compact_every_s is not None:
                compact_client = await stack.enter_async_context(DynamoClient.from_config(cfg))
                others.append(
                    tg.create_task(
                        _compact_every(
                            compact_client,
                            layout,
                            opts.compact_every_s,
                            archive_stop,
                            first_lookback_ms=history_ms,
                        ),
                        name="compaction",
                    )
                )
            print(
                _banner(opts, api.url, service.health_port, mqtt_url, archive_metrics_url),
                file=sys.stderr,
                flush=True,
            )
            if on_ready is not None:
                on_ready(
                    DemoInfo(
                        api_url=api.url,
                        metrics_url=f"http://127.0.0.1:{service.health_port}/metrics",
                        mqtt_url=mqtt_url,
                        endpoint_url=dynamo.endpoint_url,
                        table=cfg.dynamodb.table,
                        s3_bucket=opts.s3_bucket if archive else None,
                        s3_prefix="archive",
                        archive_metrics_url=archive_metrics_url,
                    )
                )
            if ready is not None:
                ready.set()
            await _first(sim_task, stop)
            sim_stop.set()
            archive_stop.set()  # a pass under way stops after the bucket (or period) in hand
            _, late = await asyncio.wait(others, timeout=budget_s)
            if late:
                log.warning(
                    "demo: %s not finished %g s after the stop: cancelled",
                    " and ".join(sorted(t.get_name() for t in late)),
                    budget_s,
                )
                for t in late:
                    t.cancel()
                await asyncio.wait(late)
            service_stop.set()
            await _cancel_unless_stopped_within(
                service_task, opts.shutdown_timeout_s * 2 / 3 + _STOP_GRACE_S
            )
    if stopped_starting:
        raise StopRequested


async def _cancel_unless_stopped_within(service: asyncio.Task[Any], timeout_s: float) -> None:
    """Wait for the stopped service's task; cancel it if it has not returned in ``timeout_s``.

    The service bounds its drain by its ``shutdown_timeout_s`` and ends every stage when
    the deadline cuts it short (a packed service once left its window writer running
    there and returned only when cancelled: seen at 2,000 devices, fixed in
    :mod:`ingest.pipeline.service`). This is the demo's own bound on top, for a service
    that still would not return: its data is in the in-memory moto, gone at exit anyway.
    """
    done, _ = await asyncio.wait([service], timeout=timeout_s)
    if done:
        await service  # its error, if any, as before
        return
    log.warning(
        "demo: the ingest service had not returned %g s after its stop: cancelled", timeout_s
    )
    service.cancel()
    await asyncio.wait([service])


def demo_config(opts: DemoOptions, *, mqtt_url: str, protocol: str, endpoint_url: str) -> Config:
    """The ingest service's configuration in the demo (its table's layout included).

    Raises:
        pydantic.ValidationError: an option the configuration refuses (a window that does
            not divide the bucket, say), naming it.
    """
    history_ms = round(opts.history_minutes * 60_000)
    return Config.model_validate(
        {
            "mqtt_url": mqtt_url,
            "mqtt_protocol": protocol,
            "dynamodb_endpoint": endpoint_url,
            "table": "iot-demo",
            "create_table": True,
            "bucket_minutes": opts.bucket_minutes,
            "shards": opts.shards,
            "retention_days": opts.retention_days,
            "layout": opts.layout,
            "window_seconds": opts.window_seconds,
            "stage_interval_ms": opts.stage_interval_ms,
            "staging_groups": opts.staging_groups,
            # The replayed history must be accepted; it is all in before the archiver starts.
            "max_past_ms": max(history_ms + 60_000, 300_000),
            # The history replays the devices' own past in batches over a few connections
            # (gateway mode) under their own ids; the demo's loopback broker carries only
            # its own simulator, so it trusts every publisher (SECURITY.md: sensor_id_rule).
            "sensor_id_rule": "any",
            "data_dir": opts.data_dir,
            "metrics_port": 0,
            "mqtt_client_id": "iot-ingest-demo",
            "registry_interval_s": 2.0,
            # A reading table's registry refreshes often (the archiver plans from it); a
            # packed one's once a window, its default (on moto every UpdateItem counts).
            **(
                {"registry_refresh_s": 30.0}
                if opts.layout == "reading"
                else {"flush_interval_ms": opts.flush_interval_ms}
            ),
            "shutdown_timeout_s": opts.shutdown_timeout_s * 2 / 3,
            # Its table is in memory: sealing the open windows at the stop (thousands of
            # writes on moto at 2,000 devices) would save nothing that outlives the demo.
            "seal_at_stop": False,
            "aws_access_key_id": _KEY,
            "aws_secret_access_key": _KEY,
        }
    )


async def _open_archive(
    stack: contextlib.AsyncExitStack,
    opts: DemoOptions,
    cfg: Config,
    layout: TableLayout,
    metrics: ArchiveMetrics,
) -> tuple[Archiver, str] | None:
    """The archiver, its metrics URL and the archive bucket (created on the embedded S3);
    ``None``, said in one line, when the archiver refuses the table (its layout)."""
    from ingest.archive.archiver import Archiver, ArchiveSettings
    from ingest.archive.metrics import serve_metrics
    from ingest.storage.archive.errors import ArchiveConfigError
    from ingest.storage.archive.store import S3Store
    from ingest.storage.dynamo import DynamoClient

    endpoint = cfg.aws.dynamodb_endpoint  # moto serves S3 on the same port
    async with contextlib.AsyncExitStack() as opened:
        client = await opened.enter_async_context(DynamoClient.from_config(cfg))
        store = await opened.enter_async_context(
            S3Store(
                bucket=opts.s3_bucket,
                aws=AwsSettings(
                    endpoint_url=endpoint, aws_access_key_id=_KEY, aws_secret_access_key=_KEY
                ),
            )
        )
        try:
            archiver = Archiver(
                client,
                store,
                layout,
                # One Query at a time: the in-memory server (one Python process) is
                # shared with the ingest and the dashboard, which come first.
                ArchiveSettings(
                    horizon_ms=round(opts.archive_horizon_s * 1000),
                    # A packed table's parts are left to their TTL (docs/archival.md).
                    delete_archived=layout.kind == "reading",
                    concurrency=1,
                    query_concurrency=1,
                ),
                metrics=metrics,
            )
        except ArchiveConfigError as exc:
            if layout.kind == "reading":
                raise  # checked before anything started: not reached
            log.warning("demo: archival off: the archiver refuses this table (%s)", exc)
            return None
        await store.client.create_bucket(Bucket=store.bucket)
        server = await opened.enter_async_context(serve_metrics(metrics, host="127.0.0.1", port=0))
        stack.push_async_exit(opened.pop_all())
    return archiver, f"http://127.0.0.1:{server.port}/metrics"


async def _compact_every(
    client: TableClient,
    layout: TableLayout,
    every_s: float,
    stop: asyncio.Event,
    *,
    first_lookback_ms: int,
) -> None:
    """A compaction pass, then a rollup pass, every ``every_s`` until ``stop``
    (``iot-ingest table compact --every``), each over the periods that settled since the last one (the first also over
    the replayed history). Every pass is logged; a failed one is retried at the next."""
    from ingest.core.errors import DynamoError
    from ingest.storage.compaction import compact_pass
    from ingest.storage.compaction import settle_ms as compaction_settle_ms
    from ingest.storage.rollpass import rollup_pass
    from ingest.storage.windows import WindowScheme

    scheme = WindowScheme(layout)
    settle_ms = compaction_settle_ms(scheme)  # as the CLI's
    every_ms = round(every_s * 1000)
    lookback_ms = first_lookback_ms + settle_ms + every_ms + layout.window_ms
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every_s)
        if stop.is_set():
            return
        try:
            report = await compact_pass(
                client,
                scheme,
                worker="demo-compact",
                now_ms=int(time.time() * 1000),
                lookback_ms=lookback_ms,
                settle_ms=settle_ms,
            )
        except DynamoError as exc:
            log.error("demo: compaction pass failed (retrying in %g s): %s", every_s, exc)
            continue
        log.info("demo: %s", report.summary())
        try:  # then the hours that closed: minute and hour rollups for the dashboard's series
            rolled = await rollup_pass(
                client,
                scheme,
                worker="demo-compact",
                now_ms=int(time.time() * 1000),
                lookback_ms=max(lookback_ms, 2 * 3_600_000),
                settle_ms=settle_ms,
            )
        except DynamoError as exc:
            log.error("demo: rollup pass failed (retrying in %g s): %s", every_s, exc)
            continue
        log.info("demo: %s", rolled.summary())
        # Next time only what settled since (twice over: a late pass misses nothing).
        lookback_ms = settle_ms + 2 * every_ms + layout.window_ms


def _live_run(
    opts: DemoOptions, mqtt_url: str, protocol: str, now_ms: int, *, flush_timeout_s: float
) -> SimulationConfig:
    """The live fleet, from ``now_ms`` on, following the wall clock."""
    from simulator.fleet import Fleet
    from simulator.generator import TrafficOptions
    from simulator.run import SimulationConfig

    return SimulationConfig(
        fleet=Fleet.uniform(devices=opts.devices, rate_per_s=opts.live_rate_per_s, kinds=_KINDS),
        traffic=TrafficOptions(
            seed=opts.seed,
            start_ts_ms=now_ms,
            duration_s=opts.duration_s,
            # Continue the replayed history's signals: same seed (same per-device levels,
            # phases, drift) and the history's start as the origin of the slow terms.
            signal_origin_ts_ms=now_ms - round(opts.history_minutes * 60_000),
        ),
        mqtt_url=mqtt_url,
        protocol_version=protocol,
        flush_timeout_s=flush_timeout_s,
    )


def _history_run(
    opts: DemoOptions, mqtt_url: str, protocol: str, now_ms: int, *, flush_timeout_s: float
) -> SimulationConfig | None:
    """The fleet's last ``history_minutes`` before ``now_ms``, sent as fast as it goes."""
    from simulator.fleet import Fleet
    from simulator.generator import TrafficOptions
    from simulator.run import SimulationConfig

    history_ms = round(opts.history_minutes * 60_000)
    if history_ms <= 0:
        return None
    return SimulationConfig(
        fleet=Fleet.uniform(devices=opts.devices, rate_per_s=opts.replay_rate_per_s, kinds=_KINDS),
        traffic=TrafficOptions(
            seed=opts.seed,  # the live fleet's seed: the live run continues these signals
            start_ts_ms=now_ms - history_ms,
            duration_s=history_ms / 1000,
            mode="gateway",  # a few connections carrying batches: a quick replay
            sensor_id_separator=None,  # the live devices' ids (the service trusts them)
        ),
        mqtt_url=mqtt_url,
        protocol_version=protocol,
        flush_timeout_s=flush_timeout_s,
        client_id_prefix="history-",
        realtime=False,
    )


def _banner(
    opts: DemoOptions,
    api_url: str,
    health_port: int | None,
    mqtt_url: str,
    archive_metrics: str | None,
) -> str:
    lines = [
        f"\niot-ingest demo: dashboard at {api_url}/  (API {api_url}/v1/sensors, "
        f"metrics http://127.0.0.1:{health_port}/metrics)",
        f"  {opts.devices} simulated devices, {opts.live_rate_per_s:g} readings/s → "
        f"{mqtt_url} → ingest → DynamoDB (moto, in memory). Ctrl-C stops.",
    ]
    if opts.layout == "packed":
        compaction = (
            f"compaction every {opts.compact_every_s:g} s"
            if opts.compact_every_s is not None
            else "no compaction"
        )
        lines.append(
            f"  table: packed, {opts.window_seconds} s windows sealed a minute after they end, "
            f"staging every {opts.stage_interval_ms / 1000:g} s, {compaction}."
        )
    else:
        lines.append(f"  table: one item per reading, {opts.shards} shards.")
    if opts.history_minutes > 0:
        lines.append(f"  replaying the last {opts.history_minutes:g} minutes first (history).")
    if opts.archive and archive_metrics is None:
        lines.append("  archival off: the archiver refuses this table's layout (see the log).")
    elif opts.archive:
        lines.append(
            f"  archival on: {opts.bucket_minutes}-minute buckets go to "
            f"s3://{opts.s3_bucket}/archive/ (moto S3, same endpoint) as Parquet "
            f"{opts.archive_horizon_s:g} s after they close (a pass every "
            f"{opts.archive_every_s:g} s), then leave DynamoDB; the dashboard reads them "
            f"back from S3 (archive metrics {archive_metrics})."
        )
    return "\n".join(lines) + "\n"


async def _first(task: asyncio.Task[Any], *events: asyncio.Event) -> None:
    """Wait until ``task`` ends or one of ``events`` is set (an error of ``task`` propagates)."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait([task, *waiters], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
    if task.done() and not any(e.is_set() for e in events):
        task.result()
