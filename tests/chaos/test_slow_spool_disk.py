"""A slow disk under the dead-letter spool: fsync takes seconds.

The worker's data_dir is a FUSE mount served by ``tests/chaos/slowdisk.py``: the
kernel hands every write and fsync under it to that process, which answers an fsync
only after the delay the test sets. Nothing in the service is patched; its spool
thread is blocked in ``fsync(2)`` as on a slow device.

Two phases, with malformed messages (each one a dead letter):

* **slow** (fsync 2 s, above the 1 s warning threshold, below the 5 s stall limit):
  messages are acknowledged only after their fsync returned, the write time shows
  in ``iot_ingest_deadletter_write_seconds``, a WARNING is logged, readiness stays
  true.
* **stall** (fsync 8 s, beyond the 5 s limit; the disk then recovers): readiness
  turns false with the spool's reason while the fsync is pending, no dead-lettered
  message is acknowledged, ``iot_ingest_deadletter_write_pending_seconds`` shows
  the age; valid readings published meanwhile are written to DynamoDB at once, but
  their messages are acknowledged only after the earlier dead-lettered ones (MQTT
  acknowledges in arrival order); when the fsync returns everything is
  acknowledged and readiness is true again.

Mounting needs root, as for the full-disk test; elsewhere the test fails saying so.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.pipeline.deadletters import SLOW_WRITE_S, STALLED_WRITE_S
from ingest.pipeline.service import IngestService
from ingest.storage.spool import iter_dead_letters
from tests.ingest.harness import counter, make_config, publish, running, wait_until

pytestmark = pytest.mark.chaos

SLOW_FSYNC_S = 2.0
STALL_FSYNC_S = 8.0
VALID = 10
PER_PHASE = 20
COMPLETED = "iot_ingest_messages_completed_total"
RECEIVED = "iot_ingest_messages_received_total"
PENDING = "iot_ingest_deadletter_write_pending_seconds"
WRITE_SECONDS = "iot_ingest_deadletter_write_seconds"


class SlowDisk:
    """A running ``slowdisk.py`` mount; ``set(fsync_delay_s=…)`` changes its delays."""

    def __init__(self, mountpoint: Path, control: Path, proc: subprocess.Popen[bytes]) -> None:
        self.mountpoint = mountpoint
        self.control = control
        self.proc = proc

    def set(self, *, fsync_delay_s: float = 0.0, write_delay_s: float = 0.0) -> None:
        doc = {"fsync_delay_s": fsync_delay_s, "write_delay_s": write_delay_s}
        self.control.write_bytes(orjson.dumps(doc))

    def answered(self, op: str, delay_s: float) -> list[float]:
        """``time.monotonic()`` of each answer to ``op`` that was delayed by ``delay_s``."""
        log = self.control.with_suffix(".log")
        lines = log.read_bytes().splitlines() if log.exists() else []
        docs = [orjson.loads(line) for line in lines]
        return [d["answered"] for d in docs if d["op"] == op and d["delay_s"] == delay_s]


@pytest.fixture
def slow_disk(tmp_path: Path) -> Iterator[SlowDisk]:
    """A FUSE mount whose fsync sleeps as told (no delay at first); unmounted after the test."""
    if not Path("/dev/fuse").exists() or os.geteuid() != 0:
        pytest.fail(
            "the slow-disk chaos test mounts a FUSE file system and needs root and "
            "/dev/fuse (run the chaos suite as root, e.g. in the CI container)",
            pytrace=False,
        )
    mnt, control = tmp_path / "slow-disk", tmp_path / "slow-disk.json"
    mnt.mkdir()
    disk_proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("slowdisk.py")), str(mnt), str(control)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    disk = SlowDisk(mnt, control, disk_proc)
    disk.set()
    try:
        assert disk_proc.stdout is not None
        line = disk_proc.stdout.readline()
        assert line.strip() == b"mounted", line + disk_proc.stdout.read()
        yield disk
    finally:
        disk.set()  # let any pending fsync return before the server goes
        disk_proc.terminate()
        disk_proc.wait(10)
        if disk_proc.stdout is not None:
            disk_proc.stdout.close()
        if mnt.is_mount():
            subprocess.run(["umount", "-l", str(mnt)], check=True)


@dataclass
class Watch:
    """Samples taken every 50 ms while waiting for a phase to complete."""

    ready: list[bool] = field(default_factory=list)
    max_pending_s: float = 0.0
    first_ack_s: float | None = None  # after the start of the watch
    first_ack_at: float | None = None  # time.monotonic() when the first completion was seen


async def watch_phase(
    service: IngestService, *, completed_before: float, expect: float, timeout_s: float
) -> tuple[Watch, float]:
    """Poll until ``expect`` messages more are complete; returns the samples and seconds taken."""
    w, t0 = Watch(), time.monotonic()
    while True:
        done = counter(service, COMPLETED) - completed_before
        elapsed = time.monotonic() - t0
        if done > 0 and w.first_ack_s is None:
            w.first_ack_s, w.first_ack_at = elapsed, time.monotonic()
        if done >= expect:
            break
        assert elapsed < timeout_s, f"only {done} of {expect} completed after {timeout_s} s"
        w.ready.append(service.readiness()[0])
        w.max_pending_s = max(w.max_pending_s, counter(service, PENDING))
        await asyncio.sleep(0.05)
    return w, time.monotonic() - t0


def _slow_writes(service: IngestService, above_s: float) -> int:
    """Spool writes slower than ``above_s`` (from the histogram's buckets; ``above_s`` a bound)."""
    total = bucket = 0.0
    for metric in service.metrics.registry.collect():
        for s in metric.samples:
            if s.name == WRITE_SECONDS + "_count":
                total = s.value
            elif s.name == WRITE_SECONDS + "_bucket" and float(s.labels["le"]) == above_s:
                bucket = s.value
    return int(total - bucket)


@pytest.mark.timeout(120)
async def test_slow_spool_fsync_is_reported_and_nothing_is_acknowledged_before_it_returns(
    mosquitto: Any,
    moto_server: Any,
    unique_name: str,
    slow_disk: SlowDisk,
    caplog: pytest.LogCaptureFixture,
    figure: Callable[..., None],
) -> None:
    caplog.set_level(logging.WARNING, logger="ingest.pipeline.deadletters")
    cfg = make_config(
        broker_url=mosquitto.url,
        endpoint=moto_server.endpoint_url,
        name=unique_name,
        data_dir=slow_disk.mountpoint,
    )
    service = IngestService(cfg)

    def malformed(phase: str) -> list[tuple[str, bytes]]:
        return [
            (f"{unique_name}/s{i % 5}/telemetry", f'{{"phase": "{phase}", "n": {i}'.encode())
            for i in range(PER_PHASE)
        ]

    async with running(service):
        # Slow: every fsync 2 s.
        slow_disk.set(fsync_delay_s=SLOW_FSYNC_S)
        sent = await publish(cfg.mqtt.mqtt_url or "", malformed("slow"))
        await wait_until(lambda: counter(service, RECEIVED) >= sent, 30, "received")
        slow, slow_s = await watch_phase(
            service, completed_before=0, expect=sent, timeout_s=SLOW_FSYNC_S * PER_PHASE + 10
        )
        slow_warnings = [r for r in caplog.records if r.levelno == logging.WARNING]

        # Stall: the next fsync takes 8 s; once readiness is false the disk recovers.
        slow_disk.set(fsync_delay_s=STALL_FSYNC_S)
        t_stall = time.monotonic()
        stall_msgs = malformed("stall")
        sent += await publish(cfg.mqtt.mqtt_url or "", stall_msgs)
        await wait_until(lambda: counter(service, RECEIVED) >= sent, 30, "received")
        await wait_until(lambda: not service.readiness()[0], STALL_FSYNC_S + 5, "readiness false")
        not_ready_after_s = time.monotonic() - t_stall
        _, stalled_reasons = service.readiness()
        pending_at_not_ready = counter(service, PENDING)
        completed_while_stalled = counter(service, COMPLETED) - PER_PHASE
        unacked_while_stalled = counter(service, "iot_ingest_unacked_messages")
        # Valid readings are written during the stall, but PUBACKs go in arrival order
        # (MQTT): their messages wait behind the dead-lettered ones.
        now_ms = int(time.time() * 1000) - 60_000
        valid = [
            (f"{unique_name}/ok{i % 2}/telemetry", orjson.dumps({"ts": now_ms + i, "t": i}))
            for i in range(VALID)
        ]
        t_valid = time.monotonic()
        sent_valid = await publish(cfg.mqtt.mqtt_url or "", valid)
        await wait_until(
            lambda: counter(service, "iot_ingest_items_written_total") >= sent_valid,
            2.5,
            "valid readings written during the stall",
        )
        valid_written_s = time.monotonic() - t_valid
        await wait_until(  # the gauge is sampled every second
            lambda: counter(service, "iot_ingest_unacked_messages") >= PER_PHASE + sent_valid,
            1.5,
            "the unacked gauge to count the valid messages",
        )
        still_pending_s = counter(service, PENDING)
        completed_after_valid = counter(service, COMPLETED) - PER_PHASE
        unacked_after_valid = counter(service, "iot_ingest_unacked_messages")
        slow_disk.set()  # later fsyncs are fast again; the pending one still sleeps its 8 s
        stall, _ = await watch_phase(
            service,
            completed_before=PER_PHASE,
            expect=PER_PHASE + sent_valid,
            timeout_s=STALL_FSYNC_S + 15,
        )
        stall_to_acked_s = time.monotonic() - t_stall
        ready_after, reasons_after = service.readiness()
        writes_over_slow = _slow_writes(service, SLOW_WRITE_S)
        writes_over_stall = _slow_writes(service, float(STALLED_WRITE_S))
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    letters = [dl for _, dl in iter_dead_letters(slow_disk.mountpoint / "deadletters")]
    figure(
        "spool-disk-slow",
        slow_fsync_s=SLOW_FSYNC_S,
        slow_fsyncs=len(slow_disk.answered("fsync", SLOW_FSYNC_S)),
        slow_first_ack_s=round(slow.first_ack_s or 0.0, 2),
        slow_all_acked_s=round(slow_s, 2),
        slow_ready_throughout=all(slow.ready),
        slow_warnings=len(slow_warnings),
        stall_fsync_s=STALL_FSYNC_S,
        not_ready_after_s=round(not_ready_after_s, 2),
        pending_at_not_ready_s=round(pending_at_not_ready, 2),
        completed_while_stalled=int(completed_while_stalled),
        unacked_while_stalled=int(unacked_while_stalled),
        stall_to_all_acked_s=round(stall_to_acked_s, 2),
        writes_over_1s=writes_over_slow,
        writes_over_5s=writes_over_stall,
        dead_letters_kept=len(letters),
        valid_written_during_stall_s=round(valid_written_s, 2),
        valid_acked_during_stall=int(completed_after_valid),
        lost=sent - len({dl.payload for dl in letters}),
    )
    # Slow: acknowledged only once the fsync returned, reported, still ready.
    slow_fsyncs = slow_disk.answered("fsync", SLOW_FSYNC_S)
    assert slow_fsyncs, "the spool never fsynced on the slow disk"
    assert slow.first_ack_at is not None and slow.first_ack_at >= slow_fsyncs[0], (
        "acknowledged a dead letter before its fsync returned"
    )
    assert slow.first_ack_s is not None and slow.first_ack_s >= SLOW_FSYNC_S * 0.9, slow
    assert slow.max_pending_s >= SLOW_FSYNC_S * 0.5, slow
    assert all(slow.ready), "a 2 s fsync is below the stall limit: readiness should stay true"
    assert any("spool write slow" in r.getMessage() for r in slow_warnings), slow_warnings
    assert any("spool write took" in r.getMessage() for r in slow_warnings), slow_warnings
    # Stall: readiness false at the limit, with the spool's reason; nothing acknowledged.
    assert any("stall limit" in r and "too slow" in r for r in stalled_reasons), stalled_reasons
    assert STALLED_WRITE_S * 0.9 <= pending_at_not_ready < STALL_FSYNC_S, pending_at_not_ready
    assert completed_while_stalled == 0, "acknowledged dead letters before their fsync returned"
    assert unacked_while_stalled == PER_PHASE
    assert any("spool stalled" in m for m in errors), errors
    stall_fsyncs = slow_disk.answered("fsync", STALL_FSYNC_S)
    assert len(stall_fsyncs) == 1, stall_fsyncs
    assert stall.first_ack_at is not None and stall.first_ack_at >= stall_fsyncs[0]
    assert stall_to_acked_s >= STALL_FSYNC_S * 0.9
    assert ready_after, reasons_after
    assert writes_over_slow >= 2 and writes_over_stall >= 1
    # Everything kept, each message once, and every message acknowledged.
    assert still_pending_s > 0, "the stalled fsync returned before the valid readings were written"
    assert completed_after_valid == 0, "a message was acknowledged ahead of an earlier one"
    assert unacked_after_valid == PER_PHASE + VALID
    assert counter(service, "iot_ingest_items_written_total") == VALID
    assert counter(service, COMPLETED) == sent + sent_valid
    assert sorted(dl.payload for dl in letters) == sorted(
        p for _, p in [*malformed("slow"), *stall_msgs]
    )
