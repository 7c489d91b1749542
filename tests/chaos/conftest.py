"""Shared parts of the chaos suite: subprocess workers, simulated traffic, verification, figures.

* :class:`Worker` runs ``python -m ingest.cli run …`` as a subprocess (the way users
  run it), waits for ``/readyz``, scrapes ``/metrics``, samples its memory from
  ``/proc`` (``VmRSS`` every half second, ``VmHWM`` = peak) and can be SIGKILLed.
* :func:`simulate` publishes simulator traffic (QoS 1, re-sent after reconnects) to a
  test's own topic prefix and returns the run summary and the manifest.
* :func:`verify` reads the table back against the manifest: ``lost`` (readings in the
  manifest missing from the table) and ``duplicates`` (items beyond one per key).
* The ``figure`` fixture prints one ``CHAOS name: k=v …`` line, appends it as JSON to
  ``test-artifacts/chaos.jsonl`` and repeats it in pytest's terminal summary, so the
  figures are visible with or without ``-s``.

``CHAOS_FULL=1`` selects the long variants (:data:`FULL`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio

from bench.processes import parse_prometheus
from bench.procstat import sample
from bench.servers import REPO_ROOT
from ingest.core.lifecycle import StartClose
from ingest.trial.servers import free_port
from simulator.faults import FaultConfig
from simulator.fleet import Fleet
from simulator.generator import Mode, TrafficOptions
from simulator.manifest import Manifest
from simulator.run import RunSummary, SimulationConfig, run_simulation
from simulator.verify import VerifyReport, format_report, verify_table
from tests.drain import assert_drained
from tests.ingest.harness import AWS

FULL = os.environ.get("CHAOS_FULL", "") not in ("", "0")
"""Long variants (``CHAOS_FULL=1``): minute-long outages, the 20-minute soak."""

ARTIFACTS = REPO_ROOT / "test-artifacts"
FIGURES_FILE = ARTIFACTS / "chaos.jsonl"

_recorded: list[str] = []


# -- figures ------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``figure("dynamodb-down", published=…, lost=0, …)``: print and record one figure line."""

    def record(name: str, **fields: Any) -> None:
        line = f"CHAOS {name}: " + " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        print(line, flush=True)
        _recorded.append(line)
        doc = {
            "fault": name,
            "test": request.node.nodeid,
            "full": FULL,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **fields,
        }
        ARTIFACTS.mkdir(exist_ok=True)
        with FIGURES_FILE.open("ab") as f:
            f.write(orjson.dumps(doc) + b"\n")

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _recorded:
        terminalreporter.section("chaos figures")
        for line in _recorded:
            terminalreporter.write_line(line)


# -- subprocess workers -----------------------------------------------------------------


@dataclass
class Memory:
    """Memory of a worker: RSS samples (MiB) and the kernel's peak (VmHWM, MiB)."""

    samples: list[tuple[float, float]] = field(default_factory=list)  # (monotonic s, RSS MiB)
    peak_mb: float = 0.0

    def rss_at(self, fraction: float) -> float:
        """RSS of the sample at ``fraction`` (0..1) of the sampled period."""
        return self.samples[min(len(self.samples) - 1, int(fraction * len(self.samples)))][1]


class Worker(StartClose):
    """One ``iot-ingest run`` subprocess; an async context manager (stopped with SIGTERM on exit).

    Args:
        name: For the log file and messages.
        log_dir: Where ``{name}.log`` goes (appended across restarts).
        options: Config keys to flags: ``{"mqtt_url": …}`` → ``--mqtt-url …``; True → a bare flag.
    """

    def __init__(self, name: str, log_dir: Path, **options: Any) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self.port = free_port()
        self.options = {"metrics_port": self.port, **options}
        self.proc: asyncio.subprocess.Process | None = None
        self.memory = Memory()
        self._sampling: asyncio.Task[None] | None = None
        self._stop_sampling = asyncio.Event()

    def _argv(self) -> list[str]:
        argv = [sys.executable, "-m", "ingest.cli", "run"]
        for key, value in self.options.items():
            flag = "--" + key.replace("_", "-")
            argv += [flag] if value is True else [flag, str(value)]
        return argv

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    async def start(self, ready_timeout_s: float = 60) -> None:
        """Start and wait until ``/readyz`` answers 200."""
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": AWS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": AWS["aws_secret_access_key"],
        }
        with self.log.open("ab") as out:  # the child keeps its own descriptor
            self.proc = await asyncio.create_subprocess_exec(
                *self._argv(), env=env, stdout=out, stderr=asyncio.subprocess.STDOUT
            )
        self._stop_sampling = asyncio.Event()
        self._sampling = asyncio.create_task(self._sample(self.proc.pid), name=f"rss-{self.name}")
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode}: {self.tail()}"
                )
            ready, _ = await self.readiness()
            if ready:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name} not ready in {ready_timeout_s} s: {self.tail()}")

    async def _sample(self, pid: int) -> None:
        while not self._stop_sampling.is_set():
            s = await asyncio.to_thread(sample, pid)
            if s is None:
                return
            self.memory.samples.append((time.monotonic(), s.rss_kb / 1024))
            self.memory.peak_mb = max(self.memory.peak_mb, s.hwm_kb / 1024)
            try:
                async with asyncio.timeout(0.5):
                    await self._stop_sampling.wait()
            except TimeoutError:
                pass

    async def _end_sampling(self) -> None:
        self._stop_sampling.set()
        if self._sampling is not None:
            task, self._sampling = self._sampling, None
            await task

    async def readiness(self) -> tuple[bool, list[str]]:
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{self.port}/readyz") as resp,
            ):
                body = await resp.json()
                return resp.status == 200, list(body.get("reasons", []))
        except (aiohttp.ClientError, ValueError):
            return False, ["health endpoint not answering"]

    async def metrics(self, *names: str) -> dict[str, float]:
        """Sampled values, summed over labels (each name 0.0 when absent)."""
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{self.port}/metrics") as resp,
        ):
            return parse_prometheus(await resp.text(), names)

    async def metric(self, name: str) -> float:
        return (await self.metrics(name))[name]

    async def wait_metric(self, name: str, at_least: float, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while (value := await self.metric(name)) < at_least:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: {name}={value} < {at_least} after {timeout_s} s: {self.tail()}"
                )
            await asyncio.sleep(0.2)
        return value

    async def kill(self) -> None:
        """SIGKILL (no drain, no DISCONNECT), after a last memory sample."""
        assert self.proc is not None and self.proc.returncode is None, f"{self.name} not running"
        await self._end_sampling()
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self, timeout_s: float = 40) -> int:
        """SIGTERM and wait for the drain; returns the exit status."""
        await self._end_sampling()
        proc = self.proc
        if proc is None:
            return 0
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout_s):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise AssertionError(
                    f"{self.name} did not stop in {timeout_s} s: {self.tail()}"
                ) from None
        return proc.returncode if proc.returncode is not None else 0

    async def aclose(self) -> None:
        await self.stop()


PACKED_LAYOUT: dict[str, Any] = {
    "layout": "packed",
    "bucket_minutes": 60,
    "window_seconds": 60,
    "stage_interval_ms": 500,
}
"""A packed table whose windows the quick runs see staged, and sealed at the stop."""


@pytest.fixture(params=["reading", "packed"])
def table_layout(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The table layout's config keys of a scenario's workers: each runs on both layouts
    (on ``packed``, readings become durable in the journal and are read back from the
    staging items and sealed windows; verify counts each timestamp once)."""
    return {} if request.param == "reading" else PACKED_LAYOUT


def worker_options(
    *, broker_url: str, endpoint: str, name: str, data_dir: Path, **overrides: Any
) -> dict[str, Any]:
    """Flags of a worker isolated by ``name`` (table, topic prefix, client id)."""
    return {
        "mqtt_url": broker_url,
        "topic": f"{name}/+/telemetry",
        "table": name,
        "dynamodb_endpoint": endpoint,
        "create_table": True,
        "data_dir": data_dir,
        "mqtt_client_id": f"ingest-{name}"[:64],
        "flush_interval_ms": 20,
        "registry_interval_s": 1,
        "shutdown_timeout_s": 20,
        **overrides,
    }


# -- simulated traffic and verification ---------------------------------------------------

DATA_FAULTS = FaultConfig(
    duplicate_rate=0.03,
    duplicate_delay_s=1.0,
    late_rate=0.03,
    late_max_s=1.0,
    skew_rate=0.2,
    skew_max_s=20.0,
    malformed_rate=0.02,
    missing_rate=0.01,
    oversize_rate=0.002,
    dropout_rate=0.001,
    dropout_s=1.0,
)
"""The simulator's data faults for the soak (duplicates, late, skewed, malformed, …)."""


def sim_config(
    broker_url: str,
    name: str,
    *,
    rate_per_s: float,
    duration_s: float | None = None,
    count_limit: int | None = None,
    devices: int = 10,
    mode: Mode = "device",
    faults: FaultConfig | None = None,
    seed: int = 1,
    realtime: bool = True,
    flush_timeout_s: float = 60.0,
    start_ts_ms: int | None = None,
) -> SimulationConfig:
    """Simulated QoS 1 traffic to ``{name}/{sensor_id}/telemetry`` (full manifest detail)."""
    return SimulationConfig(
        fleet=Fleet.uniform(devices=devices, rate_per_s=rate_per_s, kinds=("env", "power")),
        traffic=TrafficOptions(
            seed=seed,
            # Readings a minute in the past: inside the accepted window, even with clock skew.
            start_ts_ms=start_ts_ms or int(time.time() * 1000) - 60_000,
            duration_s=duration_s,
            count_limit=count_limit,
            mode=mode,
            gateways=2,
            batch_size=20,
            faults=faults or FaultConfig(),
            manifest_detail=True,
        ),
        mqtt_url=broker_url,
        qos=1,
        topic_pattern=f"{name}/{{sensor_id}}/telemetry",
        client_id_prefix=f"{name[-8:]}-{time.monotonic_ns() % 10**6}-",
        realtime=realtime,
        flush_timeout_s=flush_timeout_s,
    )


async def simulate(
    config: SimulationConfig, stop: asyncio.Event | None = None
) -> tuple[RunSummary, Manifest]:
    summary, manifest = await run_simulation(config, stop=stop)
    return summary, manifest


@dataclass(frozen=True)
class Verified:
    """The table compared with a manifest."""

    expected: int
    found_items: int
    lost: int
    duplicates: int
    changed: int
    report: VerifyReport

    def explain(self) -> str:
        return "\n".join(format_report(self.report)[:40])


async def verify(manifest: Manifest, table: str, endpoint: str) -> Verified:
    """Read every key of the manifest back: lost readings, extra items per key, changed values."""
    report = await verify_table(manifest, table=table, endpoint_url=endpoint, check_registry=False)
    lost = dup = changed = 0
    for d in report.diffs:
        lost += len(d.missing_ts)
        changed += len(d.changed_ts)
        distinct = d.expected_count - len(d.missing_ts) + len(d.extra_ts)
        dup += max(0, d.found_count - distinct)
    return Verified(
        expected=report.readings_expected,
        found_items=report.readings_found,
        lost=lost,
        duplicates=dup,
        changed=changed,
        report=report,
    )


async def verify_until(
    manifest: Manifest, table: str, endpoint: str, timeout_s: float
) -> tuple[Verified, float]:
    """Verify until nothing is lost (or the deadline); returns the last result and seconds waited."""
    t0 = time.monotonic()
    while True:
        v = await verify(manifest, table, endpoint)
        waited = time.monotonic() - t0
        if v.lost == 0 or waited > timeout_s:
            return v, waited
        await asyncio.sleep(1.0)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so fixtures can tell whether the test passed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest_asyncio.fixture
async def workers(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., Worker]]:
    """Factory of :class:`Worker` (not started).

    After a test that passed, every worker still running is stopped with SIGTERM
    (a drain), and then each worker's MQTT session is resumed by an independent
    client: the broker must hold nothing for it (:func:`tests.drain.assert_drained`).
    Every fault test gets the broker's half of at-least-once checked for free; it
    only has to leave the broker running. After a failed test, workers are killed.
    """
    made: list[Worker] = []

    def make(name: str, **options: Any) -> Worker:
        w = Worker(name, tmp_path, **options)
        made.append(w)
        return w

    try:
        yield make
    finally:
        report = getattr(request.node, "report_call", None)
        passed = report is not None and report.passed
        for w in made:
            if w.proc is not None and w.proc.returncode is None:
                if passed:
                    assert await w.stop() == 0, f"{w.name} did not drain cleanly: {w.tail()}"
                else:
                    w.proc.kill()
                    await w.proc.wait()
            await w._end_sampling()
        if passed:
            sessions = {
                (str(w.options["mqtt_url"]), str(w.options["mqtt_client_id"])): w
                for w in made
                if w.proc is not None
            }
            for (url, client_id), w in sessions.items():
                await assert_drained(
                    url, client_id, version=str(w.options.get("mqtt_protocol", "5")), quiet_s=1.0
                )
