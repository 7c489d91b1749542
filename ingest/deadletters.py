"""Dead letters: every refused message or reading, kept durably with its reason.

The spool is JSONL under ``{data_dir}/deadletters/``, one file per UTC day.
Entries are appended in groups and fsync'ed before the messages they belong
to may be acknowledged: a dead letter is as durable as a table write. When
the disk refuses (full, read-only), the spool reports it loudly — log,
metric, readiness false — and keeps retrying; nothing is acknowledged that
was not kept.

A slow disk is watched too: every group's append + fsync is timed
(``iot_ingest_deadletter_write_seconds``; the write in progress shows its age
in ``iot_ingest_deadletter_write_pending_seconds``). Past
:data:`SLOW_WRITE_S` it is logged at WARNING; still pending past
:data:`STALLED_WRITE_S`, the spool is unhealthy (readiness false, logged at
ERROR) until the write returns. Its messages wait, unacknowledged, meanwhile.

Each line::

    {"time_ms": ..., "stage": "decode"|"write", "reason": "...", "topic": "...",
     "payload": "<text>" | "payload_b64": "<base64>", "index": N}

For a refused reading inside a batch the payload is that reading alone (as a
one-reading message), so replaying it does not re-send its valid neighbours.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .acks import AckTracker, Pending
from .layout import Item, TableLayout
from .metrics import Metrics
from .mqttclient import MqttSettings

__all__ = ["SLOW_WRITE_S", "STALLED_WRITE_S", "DeadLetter", "DeadLetterSpool", "iter_dead_letters"]

log = logging.getLogger(__name__)

SLOW_WRITE_S = 1.0
"""A spool write (append + fsync of one group) slower than this is logged at WARNING.

A healthy local disk appends and syncs a group in milliseconds; a second means
the device or its queue is in trouble.
"""

STALLED_WRITE_S = 5.0
"""A spool write still pending after this long makes the spool unhealthy (readiness false).

The default cap of a DynamoDB write retry's backoff (``write_retry_max_ms``):
past it, dead letters wait longer than any single table retry would.
"""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One refused message or reading."""

    time_ms: int
    stage: str
    reason: str
    topic: str
    payload: bytes
    index: int | None = None

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "time_ms": self.time_ms,
            "stage": self.stage,
            "reason": self.reason,
            "topic": self.topic,
        }
        try:
            doc["payload"] = self.payload.decode("utf-8")
        except UnicodeDecodeError:
            doc["payload_b64"] = base64.b64encode(self.payload).decode()
        if self.index is not None:
            doc["index"] = self.index
        return orjson.dumps(doc)

    @classmethod
    def from_json(cls, line: bytes) -> DeadLetter:
        doc = orjson.loads(line)
        if "payload_b64" in doc:
            payload = base64.b64decode(doc["payload_b64"])
        else:
            payload = str(doc.get("payload", "")).encode()
        return cls(
            time_ms=int(doc["time_ms"]),
            stage=str(doc["stage"]),
            reason=str(doc["reason"]),
            topic=str(doc["topic"]),
            payload=payload,
            index=doc.get("index"),
        )


def _reading_payload(item: Item) -> bytes:
    r = TableLayout.from_item(item)
    return orjson.dumps({"sensor_id": r.sensor_id, "ts": r.ts_ms, **r.metrics, **r.tags})


class DeadLetterSpool:
    """Appends dead letters to the spool and completes their messages once durable.

    Args:
        directory: Spool directory (created if missing).
        acks: Ack tracker to complete messages.
        metrics: Metrics.
        max_pending: Bound of the queue in front of the spool.
        on_kept: Called with each group of entries once it is on disk.
        slow_write_s: A write slower than this is logged at WARNING.
        stalled_write_s: A write pending longer than this makes the spool unhealthy.
    """

    def __init__(
        self,
        directory: Path,
        *,
        acks: AckTracker,
        metrics: Metrics,
        max_pending: int = 10_000,
        on_kept: Callable[[list[DeadLetter]], None] | None = None,
        slow_write_s: float = SLOW_WRITE_S,
        stalled_write_s: float = STALLED_WRITE_S,
    ) -> None:
        self.directory = directory
        self._acks = acks
        self._m = metrics
        self._queue: asyncio.Queue[tuple[DeadLetter, list[Pending]]] = asyncio.Queue(max_pending)
        self.healthy = True
        self.last_error: str | None = None
        self._on_kept = on_kept
        self._slow_write_s = slow_write_s
        self._stalled_write_s = stalled_write_s
        self._write_started: float | None = None
        metrics.deadletter_write_pending.set_function(self.pending_s)

    def pending_s(self) -> float:
        """Seconds the write in progress has taken so far (0.0 when none is)."""
        started = self._write_started
        return 0.0 if started is None else time.monotonic() - started

    async def put(self, entry: DeadLetter, pendings: list[Pending]) -> None:
        """Queue an entry; each of ``pendings`` is completed by one unit once it is on disk."""
        await self._queue.put((entry, pendings))

    async def put_item(self, item: Item, pendings: list[Pending], reason: str) -> None:
        """Dead-letter an item the writer could not write (completes every waiting message)."""
        topic = pendings[0].topic if pendings else ""
        entry = DeadLetter(int(time.time() * 1000), "write", reason, topic, _reading_payload(item))
        await self._queue.put((entry, pendings))

    def _path(self, time_ms: int) -> Path:
        day = time.strftime("%Y-%m-%d", time.gmtime(time_ms // 1000))
        return self.directory / f"deadletters-{day}.jsonl"

    def _append(self, entries: list[DeadLetter]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        by_path: dict[Path, list[bytes]] = {}
        for e in entries:
            by_path.setdefault(self._path(e.time_ms), []).append(e.to_json() + b"\n")
        for path, lines in by_path.items():
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                data = b"".join(lines)
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)

    async def _write(self, entries: list[DeadLetter]) -> None:
        """Append and fsync ``entries`` in a thread, watching how long the disk takes.

        Returns once they are on disk (raises the disk's ``OSError``); the caller
        completes their messages only then, however long that is.
        """
        started = self._write_started = time.monotonic()
        append = asyncio.create_task(
            asyncio.to_thread(self._append, entries), name="deadletter-append"
        )
        try:
            # Wake at the two thresholds only, then wait for the disk without polling.
            for threshold_s in (self._slow_write_s, self._stalled_write_s, None):
                timeout_s = (
                    None
                    if threshold_s is None
                    else max(0.0, started + threshold_s - time.monotonic())
                )
                await asyncio.wait({append}, timeout=timeout_s)
                if append.done():
                    break
                elapsed = time.monotonic() - started
                if threshold_s == self._slow_write_s:
                    log.warning(
                        "dead-letter spool write slow: %.1f s so far for %d entries in %s; "
                        "their messages stay unacknowledged until the disk returns",
                        elapsed,
                        len(entries),
                        self.directory,
                    )
                else:
                    self.healthy = False
                    self.last_error = (
                        f"{self.directory}: write + fsync pending for {elapsed:.1f} s "
                        f"(stall limit {self._stalled_write_s:g} s): the disk is too slow"
                    )
                    log.error(
                        "dead-letter spool stalled: %s; not ready until it returns",
                        self.last_error,
                    )
            append.result()
        finally:
            if not append.done():  # cancelled: the thread finishes on its own, nothing is acked
                append.cancel()
            elapsed = time.monotonic() - started
            self._write_started = None
            self._m.deadletter_write_seconds.observe(elapsed)
        if elapsed >= self._slow_write_s:
            log.warning(
                "dead-letter spool write took %.1f s for %d entries in %s",
                elapsed,
                len(entries),
                self.directory,
            )

    async def run(self) -> None:
        """The spool task: append queued entries in groups, fsync, then complete messages."""
        attempt = 0
        while True:
            first = await self._queue.get()
            group = [first]
            while not self._queue.empty() and len(group) < 1000:
                group.append(self._queue.get_nowait())
            entries = [e for e, _ in group]
            while True:
                try:
                    await self._write(entries)
                except OSError as exc:
                    self.healthy = False
                    self.last_error = f"{self.directory}: {exc}"
                    self._m.deadletter_errors.inc()
                    log.error(
                        "dead-letter spool cannot write (%s); not acknowledging, retrying", exc
                    )
                    await asyncio.sleep(min(5.0, 0.1 * 2**attempt))
                    attempt += 1
                    continue
                break
            if not self.healthy:
                log.warning("dead-letter spool writable again")
            self.healthy, self.last_error, attempt = True, None, 0
            done: list[Pending] = []
            for entry, pendings in group:
                self._m.dead_letters.labels(entry.stage).inc()
                done += pendings
            for _ in group:
                self._queue.task_done()
            if done:
                self._acks.done(done)
            if self._on_kept is not None:
                self._on_kept(entries)

    async def drain(self) -> None:
        """Wait until every queued entry is on disk."""
        await self._queue.join()


def iter_dead_letters(directory: Path) -> Iterator[tuple[Path, DeadLetter]]:
    """Every dead letter in the spool, oldest file first."""
    for path in sorted(directory.glob("deadletters-*.jsonl")):
        with path.open("rb") as f:
            for line in f:
                if line.strip():
                    yield path, DeadLetter.from_json(line)


async def replay(
    directory: Path,
    settings: MqttSettings,
    *,
    reason_filter: str | None = None,
    topic_override: str | None = None,
    dry_run: bool = False,
) -> int:
    """Re-publish dead letters (QoS 1, waiting for each PUBACK) to the broker.

    A file whose letters were all replayed is renamed ``*.jsonl.replayed``, so
    a second replay does not send them again; filtered-out letters stay.
    Returns the number of letters (that would be) re-published.
    """
    from .mqttclient import MqttConnection

    files = await asyncio.to_thread(lambda: sorted(directory.glob("deadletters-*.jsonl")))
    count = 0
    conn = None if dry_run else MqttConnection(settings)
    try:
        if conn is not None:
            await conn.open()
        for path in files:
            kept: list[bytes] = []
            raw = await asyncio.to_thread(path.read_bytes)
            for line in raw.splitlines():
                if not line.strip():
                    continue
                dl = DeadLetter.from_json(line)
                if reason_filter and reason_filter not in dl.reason:
                    kept.append(line)
                    continue
                count += 1
                if conn is not None:
                    await conn.publish(topic_override or dl.topic, dl.payload, qos=1)
            if conn is None:
                continue
            done_path = path.with_suffix(".jsonl.replayed")
            await asyncio.to_thread(path.rename, done_path)
            if kept:
                await asyncio.to_thread(path.write_bytes, b"\n".join(kept) + b"\n")
    finally:
        if conn is not None:
            await conn.close()
    return count
