"""End-to-end load runs: broker, DynamoDB target, N workers and a publisher, measured.

One *phase* runs one pipeline (``ours``: ``iot-ingest run`` workers; or
``baseline``: :mod:`bench.baseline` workers) on one scenario, on fresh
servers::

    Mosquitto (deploy/mosquitto.conf)   ← publisher (simulator / bench.hotsensor)
        │ $share/bench/sensors/+/telemetry
        ▼
    N workers (subprocesses)  ──BatchWriteItem──►  bench.sink  [──► moto / dynalite]

The sink (:mod:`bench.sink`, a benchmark fixture) accounts every item it
acknowledges: keys, sizes, write units, latency since the scheduled publish
time, per-partition rates. With ``target`` moto or dynalite it forwards to that
server and ``iot-ingest verify`` checks the table against the manifest too.

Measured per phase, between "all workers ready" and "every expected reading
durable" (or the drain deadline): the workers' CPU seconds (``/proc``, user +
system), their peak RSS, the sink's accounting, and a one-second timeline of
the workers' own metrics. :func:`run_bench` runs ours then the baseline and
returns the result document that :mod:`bench.report` renders.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson

from bench import procstat
from bench.capacity import US_EAST_1_USD_PER_MILLION_WRU, cost_per_million_readings_usd
from bench.errors import BenchError
from bench.histogram import percentile_from_sparse
from bench.processes import ManagedProcess, get_json, get_text, parse_prometheus
from bench.scenarios import Scenario
from bench.servers import DynaliteServer, MosquittoServer, MotoServer
from ingest.storage.layout import TableLayout
from ingest.storage.table import create_table_request
from ingest.trial.servers import free_port

__all__ = [
    "GROUP",
    "TABLE",
    "TOPIC",
    "LoadSpec",
    "Pipeline",
    "Target",
    "environment",
    "layout_args",
    "phase_figures",
    "run_bench",
    "run_phase",
]

log = logging.getLogger(__name__)

Pipeline = Literal["ours", "baseline"]
Target = Literal["sink", "moto", "dynalite"]

TABLE = "bench-readings"
TOPIC = "sensors/+/telemetry"
GROUP = "bench"
_VERIFY_TIMEOUT_S = 900.0
_METRICS = (
    "iot_ingest_messages_completed_total",
    "iot_ingest_items_written_total",
    "iot_ingest_write_requests_total",
    "iot_ingest_readings_decoded_total",
    "iot_ingest_messages_received_total",
    "iot_ingest_inbox_messages",
    "iot_ingest_write_queue_batches",
    "iot_ingest_unacked_messages",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadSpec:
    """What one load run does.

    Attributes:
        scenario: The traffic.
        duration_s: Seconds the publisher runs.
        rate_per_s: Readings/s offered (before a spike).
        workers: Worker processes per pipeline (one shared subscription).
        target: Where the workers write: the sink, or the sink forwarding to moto/dynalite.
        baseline: Also run the baseline pipeline.
        devices: Fleet size (None: the scenario's).
        seed: Simulator seed.
        drain_timeout_s: After the publisher ends, how long to wait for every reading.
        stall_timeout_s: Give up draining sooner when nothing was written for this long.
        usd_per_million_wru: On-demand write price used for the cost figure.
        ingest_args: Extra arguments for ``iot-ingest run`` (e.g. a slow-path flag).
        layouts: Table layouts ``ours`` runs on, one phase each, side by side in the
            result (the first is the headline; ``layouts`` in the result holds each).
    """

    scenario: Scenario
    duration_s: float
    rate_per_s: float
    workers: int = 1
    target: Target = "sink"
    baseline: bool = True
    devices: int | None = None
    seed: int = 1
    drain_timeout_s: float = 300.0
    stall_timeout_s: float = 20.0
    usd_per_million_wru: float = US_EAST_1_USD_PER_MILLION_WRU
    ingest_args: tuple[str, ...] = ()
    layouts: tuple[TableLayout, ...] = (TableLayout(),)


def layout_args(layout: TableLayout) -> list[str]:
    """``iot-ingest run`` flags that give a worker the table's layout."""
    args = ["--layout", layout.kind, "--bucket-minutes", str(layout.bucket_ms // 60_000)]
    if layout.kind == "reading":
        return [*args, "--shards", str(layout.shards)]
    return [
        *args,
        "--window-seconds", str(layout.window_ms // 1000),
        "--stage-interval-ms", str(layout.stage_ms),
        "--staging-groups", str(layout.groups),
    ]  # fmt: skip


@dataclass(slots=True)
class _Worker:
    proc: ManagedProcess
    port: int
    cpu0_s: float = 0.0


@dataclass(slots=True)
class _Phase:
    """What a phase collected, before the figures are computed."""

    pipeline: Pipeline
    summary: dict[str, Any] = field(default_factory=dict)
    manifest_counts: dict[str, int] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    cpu_s: float = 0.0
    window_s: float = 0.0
    hwm_kb: list[int] = field(default_factory=list)
    sink_cpu_s: float = 0.0
    machine_busy_cores: float | None = None
    drained: bool = False
    drain_s: float = 0.0
    verify: dict[str, Any] | None = None


def _python() -> str:
    return sys.executable


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_EC2_METADATA_DISABLED": "true",
        "PYTHONUNBUFFERED": "1",
    }


def _machine_busy() -> float:
    """Busy CPU seconds of the whole machine so far (all cores), from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return (total - idle) / os.sysconf("SC_CLK_TCK")


async def _prepare_table(endpoint: str, layout: TableLayout) -> None:
    """Create the table (on-demand) and its layout record, as ``iot-ingest table create`` would."""
    from aiobotocore.session import get_session

    async with get_session().create_client(
        "dynamodb",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    ) as client:
        await client.create_table(**create_table_request(TABLE))
        async with asyncio.timeout(30):
            while True:
                desc = await client.describe_table(TableName=TABLE)
                if desc["Table"].get("TableStatus") == "ACTIVE":
                    break
                await asyncio.sleep(0.1)
        await client.put_item(TableName=TABLE, Item=layout.to_layout_item())


def _worker_argv(
    spec: LoadSpec,
    pipeline: Pipeline,
    i: int,
    port: int,
    broker_url: str,
    endpoint: str,
    scratch: Path,
    layout: TableLayout,
) -> list[str]:
    if pipeline == "ours":
        return [
            _python(),
            "-m",
            "ingest.cli",
            "run",
            "--mqtt-url",
            broker_url,
            "--topic",
            TOPIC,
            "--shared-group",
            GROUP,
            "--table",
            TABLE,
            "--dynamodb-endpoint",
            endpoint,
            "--metrics-port",
            str(port),
            "--mqtt-client-id",
            f"bench-ingest-{i}",
            "--data-dir",
            str(scratch / f"ingest-{i}"),
            "--log-level",
            "WARNING",
            *layout_args(layout),
            *spec.ingest_args,
        ]
    return [
        _python(),
        "-m",
        "bench.baseline",
        "--mqtt-url",
        broker_url,
        "--topic",
        f"$share/{GROUP}/{TOPIC}",
        "--table",
        TABLE,
        "--dynamodb-endpoint",
        endpoint,
        "--client-id",
        f"bench-baseline-{i}",
        "--stats-port",
        str(port),
    ]


async def _wait_ready(
    http: aiohttp.ClientSession, pipeline: Pipeline, workers: list[_Worker], timeout_s: float
) -> None:
    for w in workers:
        if pipeline == "baseline":
            await w.proc.wait_line("READY", timeout_s)
            continue
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        while True:
            if not w.proc.running:
                raise BenchError(f"{w.proc.name} exited during start-up; see {w.proc.log_path}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(f"http://127.0.0.1:{w.port}/readyz") as resp:
                    if resp.status == 200:
                        break
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{w.proc.name} not ready within {timeout_s:g} s; see {w.proc.log_path}"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)


async def _worker_counters(
    http: aiohttp.ClientSession, pipeline: Pipeline, workers: list[_Worker]
) -> dict[str, float]:
    total: dict[str, float] = {}
    for w in workers:
        try:
            if pipeline == "ours":
                text = await get_text(http, f"http://127.0.0.1:{w.port}/metrics", timeout_s=2)
                values = parse_prometheus(text, _METRICS)
                got = {
                    "items_written": values["iot_ingest_items_written_total"],
                    "readings": values["iot_ingest_readings_decoded_total"],
                    "messages": values["iot_ingest_messages_completed_total"],
                    "write_requests": values["iot_ingest_write_requests_total"],
                    "messages_received": values["iot_ingest_messages_received_total"],
                    # Where a backlog sits: full inbox or write queue = the worker is the
                    # bottleneck; empty ones at a low rate = it is starved upstream.
                    "inbox": values["iot_ingest_inbox_messages"],
                    "write_queue": values["iot_ingest_write_queue_batches"],
                    "unacked": values["iot_ingest_unacked_messages"],
                }
            else:
                doc = await get_json(http, f"http://127.0.0.1:{w.port}/stats", timeout_s=2)
                got = {
                    k: float(doc.get(k, 0))
                    for k in ("items_written", "readings", "messages", "write_requests")
                }
        except (aiohttp.ClientError, TimeoutError, BenchError):
            continue
        for k, v in got.items():
            total[k] = total.get(k, 0.0) + v
    return total


async def _sample_loop(
    http: aiohttp.ClientSession,
    phase: _Phase,
    pipeline: Pipeline,
    workers: list[_Worker],
    sink_url: str,
    sink_pid: int,
    t0: float,
    stop: asyncio.Event,
) -> None:
    """Every second: the workers' metrics, CPU and memory, and the sink's counts."""
    while not stop.is_set():
        t = time.monotonic() - t0
        sample: dict[str, Any] = {"t_s": round(t, 3)}
        sample.update(await _worker_counters(http, pipeline, workers))
        cpu = rss = 0.0
        for w in workers:
            s = procstat.sample(w.proc.pid)
            if s is not None:
                cpu += s.cpu_s - w.cpu0_s
                rss += s.rss_kb
        sample["cpu_s"] = round(cpu, 3)
        sample["rss_mb"] = round(rss / 1024, 1)
        # Contention: CPU of the whole machine and of the sink so far (cumulative seconds).
        sample["machine_busy_s"] = round(_machine_busy(), 2)
        sink_cpu = procstat.sample(sink_pid)
        if sink_cpu is not None:
            sample["sink_cpu_s"] = round(sink_cpu.cpu_s, 3)
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, BenchError):
            st = await get_json(http, f"{sink_url}/_stats?light=1", timeout_s=2)
            sample["sink_items"] = st["counts"].get("items", 0)
            sample["sink_distinct"] = st["distinct_keys"]
        phase.samples.append(sample)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await stop.wait()


def _publisher_summary(out: str, publisher: ManagedProcess) -> dict[str, Any]:
    """The JSON summary the publisher printed (the simulator indents it over many lines)."""
    start = out.find("{")
    try:
        doc = orjson.loads(out[start:]) if start >= 0 else None
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        raise BenchError(
            f"the publisher printed no JSON summary (stdout: {out[-300:]!r}); "
            f"see {publisher.log_path}"
        )
    return doc


async def _drain(http: aiohttp.ClientSession, sink_url: str, expected: int, spec: LoadSpec) -> bool:
    """Wait until the sink holds ``expected`` distinct readings (True), or give up (False)."""
    deadline = time.monotonic() + spec.drain_timeout_s
    last, last_change = -1, time.monotonic()
    while True:
        st = await get_json(http, f"{sink_url}/_stats?light=1")
        n = int(st["distinct_keys"])
        now = time.monotonic()
        if n >= expected:
            return True
        if n != last:
            last, last_change = n, now
        if now - last_change > spec.stall_timeout_s or now > deadline:
            log.warning("drain gave up: %d of %d readings durable", n, expected)
            return False
        await asyncio.sleep(0.2)


async def _verify(logs: Path, manifest: Path, endpoint: str, pipeline: Pipeline) -> dict[str, Any]:
    argv = [
        _python(),
        "-m",
        "ingest.cli",
        "verify",
        "--manifest",
        str(manifest),
        "--table",
        TABLE,
        "--dynamodb-endpoint",
        endpoint,
        "--json",
    ]
    if pipeline == "baseline":
        argv.append("--no-registry-check")
    async with ManagedProcess(
        "verify", argv, log_dir=logs, env=_env(), capture_stdout=True
    ) as proc:
        await proc.wait(timeout_s=_VERIFY_TIMEOUT_S)
        out = await proc.read_rest()
    try:
        report: dict[str, Any] = orjson.loads(out)
    except orjson.JSONDecodeError:
        raise BenchError(f"verify printed no JSON report; see {proc.log_path}") from None
    return report


async def run_phase(
    spec: LoadSpec, pipeline: Pipeline, out_dir: Path, layout: TableLayout | None = None
) -> _Phase:
    """Run one pipeline on the spec's scenario on fresh servers; collect what it did.

    The workers are stopped before the sink's final accounting: what they write while
    they stop (a ``packed`` table's last seals) is counted.
    """
    scenario = spec.scenario
    layout = layout or TableLayout()
    suffix = "" if layout.kind == "reading" or pipeline == "baseline" else f"-{layout.kind}"
    logs = out_dir / "logs" / f"{scenario.name}-{pipeline}{suffix}"
    phase = _Phase(pipeline)
    py = _python()
    t_start = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="iot-bench-"))
        stack.callback(shutil.rmtree, scratch, True)
        broker = await stack.enter_async_context(MosquittoServer())
        upstream: str | None = None
        if spec.target == "moto":
            upstream = (await stack.enter_async_context(MotoServer())).endpoint_url
        elif spec.target == "dynalite":
            upstream = (await stack.enter_async_context(DynaliteServer())).endpoint_url
        sink_port = free_port()
        sink_argv = [py, "-m", "bench.sink", "--port", str(sink_port)]
        if upstream:
            sink_argv += ["--upstream", upstream]
        sink = await stack.enter_async_context(
            ManagedProcess("sink", sink_argv, log_dir=logs, env=_env(), capture_stdout=True)
        )
        await sink.wait_line("READY", 30)
        sink_url = f"http://127.0.0.1:{sink_port}"
        await _prepare_table(sink_url, layout)
        http = await stack.enter_async_context(aiohttp.ClientSession())

        workers: list[_Worker] = []
        for i in range(spec.workers):
            port = free_port()
            argv = _worker_argv(spec, pipeline, i, port, broker.url, sink_url, scratch, layout)
            proc = ManagedProcess(
                f"{pipeline}-worker-{i}",
                argv,
                log_dir=logs,
                env=_env(),
                capture_stdout=pipeline == "baseline",
            )
            workers.append(_Worker(await stack.enter_async_context(proc), port))
        await _wait_ready(http, pipeline, workers, timeout_s=60)
        log.info(
            "%s: %d worker(s) ready after %.1f s",
            pipeline,
            len(workers),
            time.monotonic() - t_start,
        )

        manifest = scratch / "manifest.json"
        if scenario.mode == "hot-sensor":
            pub_argv = [
                py, "-m", "bench.hotsensor", "--mqtt-url", broker.url,
                "--rate", f"{spec.rate_per_s:g}", "--duration", f"{spec.duration_s:g}",
                "--batch-size", str(scenario.batch_size), "--clock-url", f"{sink_url}/_clock",
                "--manifest", str(manifest), "--json",
            ]  # fmt: skip
        else:
            if spec.devices is not None:
                scenario = replace(scenario, devices=spec.devices)
            pub_argv = [
                py,
                "-m",
                "ingest.cli",
                *scenario.simulator_args(
                    mqtt_url=broker.url,
                    duration_s=spec.duration_s,
                    rate_per_s=spec.rate_per_s,
                    seed=spec.seed,
                    manifest=str(manifest),
                    client_id_prefix="sim-",
                ),
            ]

        for w in workers:
            s = procstat.sample(w.proc.pid)
            w.cpu0_s = s.cpu_s if s else 0.0
        sink_cpu0 = procstat.cpu_seconds(sink.pid)
        busy0 = _machine_busy()
        t0 = time.monotonic()
        publisher = ManagedProcess(
            "publisher", pub_argv, log_dir=logs, env=_env(), capture_stdout=True
        )
        stop_sampling = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(
                _sample_loop(http, phase, pipeline, workers, sink_url, sink.pid, t0, stop_sampling),
                name="bench-sampler",
            )
            try:
                async with publisher:
                    rc = await publisher.wait(timeout_s=spec.duration_s + 120)
                    out = await publisher.read_rest()
                if rc not in (0, 1):
                    raise BenchError(
                        f"the publisher exited with status {rc}; see {publisher.log_path}"
                    )
                phase.summary = _publisher_summary(out, publisher)
                doc = orjson.loads(await asyncio.to_thread(manifest.read_bytes))
                phase.manifest_counts = {
                    sid: int(rec["count"]) for sid, rec in doc["sensors"].items()
                }
                t_pub = time.monotonic()
                log.info(
                    "%s: publisher done after %.1f s: %s readings, max lag %.2f s",
                    pipeline,
                    t_pub - t0,
                    phase.summary.get("valid_readings"),
                    phase.summary.get("max_lag_s") or 0.0,
                )
                phase.drained = await _drain(
                    http, sink_url, int(phase.summary["valid_readings"]), spec
                )
                phase.drain_s = time.monotonic() - t_pub
            finally:
                stop_sampling.set()
        phase.window_s = time.monotonic() - t0
        busy1 = _machine_busy()
        phase.machine_busy_cores = (busy1 - busy0) / phase.window_s if phase.window_s else None
        for w in workers:
            s = procstat.sample(w.proc.pid)
            if s is None:
                raise BenchError(f"{w.proc.name} died during the run; see {w.proc.log_path}")
            phase.cpu_s += s.cpu_s - w.cpu0_s
            phase.hwm_kb.append(s.hwm_kb)
        phase.sink_cpu_s = procstat.cpu_seconds(sink.pid) - sink_cpu0
        for w in workers:
            await w.proc.stop()
        phase.final = await get_json(http, f"{sink_url}/_stats?sensors=1", timeout_s=60)
        log.info(
            "%s: %s in %.1f s after the publisher; %d of %s readings durable",
            pipeline,
            "drained" if phase.drained else "NOT drained",
            phase.drain_s,
            phase.final.get("distinct_keys", 0),
            phase.summary.get("valid_readings"),
        )
        if upstream is not None:
            phase.verify = await _verify(logs, manifest, upstream, pipeline)
            log.info("%s: verify %s", pipeline, "PASS" if phase.verify.get("ok") else "FAIL")
    log.info("%s: stopped; phase took %.1f s", pipeline, time.monotonic() - t_start)
    return phase


def _latency(hist: dict[str, int]) -> dict[str, float | None]:
    return {f"p{q:g}": percentile_from_sparse(hist, q) for q in (50, 95, 99)} | {
        "max": percentile_from_sparse(hist, 100),
    }


def _shift(hist: dict[str, int], offset_ms: int) -> dict[str, int]:
    """The histogram with ``offset_ms`` taken off every latency (not below 0)."""
    out: dict[str, int] = {}
    for k, n in hist.items():
        key = str(max(0, int(k) - offset_ms))
        out[key] = out.get(key, 0) + int(n)
    return out


def phase_figures(phase: _Phase, spec: LoadSpec) -> dict[str, Any]:
    """The figures of one phase (see docs/performance.md for what each means)."""
    final = phase.final
    counts = final.get("counts", {})
    sensor_keys: dict[str, int] = final.get("sensor_keys", {})
    readings = int(final.get("distinct_keys", 0))
    expected = int(phase.summary.get("valid_readings", 0))
    lost = sum(max(0, n - sensor_keys.get(sid, 0)) for sid, n in phase.manifest_counts.items())
    unexpected = sum(
        max(0, n - phase.manifest_counts.get(sid, 0)) for sid, n in sensor_keys.items()
    )
    first, last = final.get("first_write_s"), final.get("last_write_s")
    durable_window_s = (last - first) if first is not None and last is not None else 0.0
    items = int(counts.get("items", 0))
    batches = int(counts.get("requests.BatchWriteItem", 0))
    other_writes = int(counts.get("put_items", 0)) + int(counts.get("registry_updates", 0))
    wu = int(counts.get("write_units", 0))
    hottest = final.get("hottest_partitions") or []
    per_s = [
        (b["sink_items"] - a["sink_items"]) / max(b["t_s"] - a["t_s"], 1e-9)
        for a, b in itertools.pairwise(phase.samples)
        if "sink_items" in a and "sink_items" in b
    ]
    # The simulator stamps readings from the moment it starts, but its schedule starts
    # once every connection is up: every ts is early by about the connect time. Take it
    # off (the raw figures stay in the result). The hot-sensor publisher has no offset.
    offset_ms = round(float(phase.summary.get("connect_s") or 0.0) * 1000)
    raw_hist: dict[str, int] = final.get("latency_ms", {})
    hist = _shift(raw_hist, offset_ms)
    fig: dict[str, Any] = {
        "pipeline": phase.pipeline,
        "readings_expected": expected,
        "readings_durable": readings,
        "readings_per_s": readings / durable_window_s if durable_window_s > 0 else None,
        "offered_per_s": phase.summary.get("achieved_rate_per_s"),
        "peak_1s_readings_per_s": max(per_s) if per_s else None,
        "cpu_s": round(phase.cpu_s, 3),
        "cpu_us_per_reading": phase.cpu_s / readings * 1e6 if readings else None,
        "readings_per_cpu_s": readings / phase.cpu_s if phase.cpu_s > 0 else None,
        "cpu_cores": phase.cpu_s / phase.window_s if phase.window_s else None,
        "latency_ms": _latency(hist),
        "visible_ms": _latency(_shift(final.get("visible_ms", {}), offset_ms))
        if final.get("visible_ms")
        else None,
        "latency_ms_raw": _latency(raw_hist),
        "latency_offset_ms": offset_ms,
        "lost": lost,
        "unexpected": unexpected,
        "duplicates": int(final.get("rewritten_keys", 0)),
        "drained": phase.drained,
        "drain_s": round(phase.drain_s, 2),
        "peak_rss_mb": max(phase.hwm_kb) / 1024 if phase.hwm_kb else None,
        "peak_rss_mb_total": sum(phase.hwm_kb) / 1024 if phase.hwm_kb else None,
        "write_units": wu,
        "write_units_per_reading": wu / readings if readings else None,
        "write_units_per_reading_by_kind": {
            k.removeprefix("write_units."): v / readings
            for k, v in sorted(counts.items())
            if k.startswith("write_units.") and readings
        },
        "item_bytes_by_kind": {
            k.removeprefix("item_bytes."): v
            for k, v in sorted(counts.items())
            if k.startswith("item_bytes.")
        },
        "usd_per_million_wru": spec.usd_per_million_wru,
        "cost_per_million_usd": cost_per_million_readings_usd(
            wu, readings, spec.usd_per_million_wru
        ),
        "items": items,
        "items_per_reading": items / readings if readings else None,
        "requests_per_reading": batches / readings if readings else None,
        "write_requests_per_reading": (batches + other_writes) / readings if readings else None,
        "registry_updates": int(counts.get("registry_updates", 0)),
        "item_bytes_mean": counts.get("item_bytes", 0) / items if items else None,
        "max_item_bytes": final.get("max_item_bytes"),
        "partitions": final.get("partitions"),
        "peak_partition_writes_per_s": final.get("peak_partition_writes_per_s"),
        "hottest_partition_mean_writes_per_s": (
            hottest[0][1] / durable_window_s if hottest and durable_window_s > 0 else None
        ),
        "sink_rejected_batches": int(counts.get("rejected_batches", 0)),
        "publisher": {
            k: phase.summary.get(k)
            for k in (
                "messages_sent",
                "messages_acked",
                "connect_s",
                "max_lag_s",
                "cpu_s",
                "elapsed_s",
                "complete",
            )
        },
        "sink_cpu_s": round(phase.sink_cpu_s, 3),
        "machine_busy_cores": phase.machine_busy_cores,
        "window_s": round(phase.window_s, 2),
        "timeline": phase.samples,
        "latency_hist_ms": hist,
    }
    if phase.verify is not None:
        v = phase.verify
        fig["verify"] = {
            "ok": v.get("ok"),
            "readings_expected": v.get("readings_expected"),
            "readings_found": v.get("readings_found"),
            "sensors_with_differences": len(v.get("diffs", [])),
        }
        fig["lost"] = max(
            lost,
            sum(max(0, d["expected_count"] - d["found_count"]) for d in v.get("diffs", [])),
        )
    return fig


def _git(*args: str) -> str | None:
    """A git command's output in the repo, or None when git cannot answer."""
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _commit() -> str | None:
    return _git("rev-parse", "--short", "HEAD") or None


def _dirty() -> bool | None:
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def environment() -> dict[str, Any]:
    """Where a run happened: commit, CPUs, Python, load."""
    return {
        "commit": _commit(),
        "worktree_modified": _dirty(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": list(os.getloadavg()),
    }


async def run_bench(spec: LoadSpec, out_dir: Path) -> dict[str, Any]:
    """Run ours (and the baseline) on the spec's scenario; return the result document."""
    env = environment()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    # Start-up and stop take seconds; verify against moto/dynalite has its own 15 min bound.
    bound_s = (
        spec.duration_s
        + spec.drain_timeout_s
        + 240
        + (_VERIFY_TIMEOUT_S if spec.target != "sink" else 0)
    )
    phases: list[tuple[Pipeline, TableLayout]] = [("ours", lay) for lay in spec.layouts]
    if spec.baseline:
        phases.append(("baseline", TableLayout()))
    figures: dict[str, dict[str, Any]] = {}
    by_layout: dict[str, dict[str, Any]] = {}
    for pipeline, layout in phases:
        log.info("%s: %s phase (%s layout)", spec.scenario.name, pipeline, layout.kind)
        try:
            async with asyncio.timeout(bound_s):
                phase = await run_phase(spec, pipeline, out_dir, layout)
        except TimeoutError:
            raise BenchError(
                f"the {pipeline} phase of {spec.scenario.name} exceeded {bound_s:g} s; "
                f"logs in {out_dir / 'logs'}"
            ) from None
        fig = phase_figures(phase, spec) | {"layout": layout.key_parameters()}
        if pipeline == "ours":
            by_layout[layout.kind] = fig
            figures.setdefault("ours", fig)
        else:
            figures[pipeline] = fig
    ours = figures["ours"]
    base = figures.get("baseline")
    result: dict[str, Any] = {
        "format": "iot-ingest-bench-result",
        "version": 1,
        "scenario": spec.scenario.name,
        "scenario_summary": spec.scenario.summary,
        "duration_s": spec.duration_s,
        "rate_per_s": spec.rate_per_s,
        "workers": spec.workers,
        "target": spec.target,
        "ingest_args": list(spec.ingest_args),
        "target_note": (
            "bench.sink: a protocol-checking benchmark fixture, not a database"
            if spec.target == "sink"
            else f"{spec.target}, through bench.sink in tap mode (accounting), verified with iot-ingest verify"
        ),
        "started_at": started,
        "environment": env,
        **{k: v for k, v in ours.items() if k not in ("pipeline",)},
        "baseline": base,
        "ratio": _ratios(ours, base),
    }
    if len(by_layout) > 1:
        result["layouts"] = {
            kind: {k: v for k, v in fig.items() if k not in ("timeline", "latency_hist_ms")}
            for kind, fig in by_layout.items()
        }
    return result


def _ratios(ours: dict[str, Any], base: dict[str, Any] | None) -> dict[str, float | None] | None:
    if base is None:
        return None

    def ratio(a: Any, b: Any) -> float | None:
        return a / b if isinstance(a, int | float) and isinstance(b, int | float) and b else None

    return {
        "readings_per_cpu_s": ratio(ours.get("readings_per_cpu_s"), base.get("readings_per_cpu_s")),
        "readings_per_s": ratio(ours.get("readings_per_s"), base.get("readings_per_s")),
        "cost_per_million_usd": ratio(
            ours.get("cost_per_million_usd"), base.get("cost_per_million_usd")
        ),
    }
