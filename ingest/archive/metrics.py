"""Prometheus metrics of the archive (``iot_archive_*``) and their HTTP endpoint.

One :class:`ArchiveMetrics` per archiver process, with its own registry (tests
run several side by side). The :class:`~.archiver.Archiver` records each pass
(buckets by outcome, readings, bytes, early deletes, duration, last success);
the :class:`~.streams.StreamArchiver` its polls. :func:`serve_metrics` serves
them with the ingest service's :class:`~ingest.core.metrics.HealthServer`
(``/metrics``, ``/healthz``, ``/readyz``) when ``iot-ingest archive --every …
--metrics-port P`` runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ingest.core.metrics import HealthServer

__all__ = ["BUCKET_OUTCOMES", "ArchiveMetrics", "ArchiveReport", "serve_metrics"]

BUCKET_OUTCOMES = ("archived", "rearchived", "empty", "skipped", "failed")
_PASS_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200)


class ArchiveMetrics:
    """All metrics of one archiver process (batch archiver and Streams consumer).

    Readiness (``/readyz``): ready once a pass (or poll) has finished, and as long as
    the last one did not stop with an error (missing bucket, DynamoDB unreachable…).
    A pass in which some buckets failed still counts as finished: those show in
    ``iot_archive_buckets_total{outcome="failed"}``.
    """

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "iot_archive_"
        self.buckets = Counter(
            p + "buckets",
            "Buckets looked at by outcome: archived (verified and marked), rearchived (archived "
            "again with late readings, or replacing a corrupt object), empty (marked, no "
            "object), skipped (already archived), failed (left unmarked)",
            ["outcome"],
            registry=r,
        )
        for outcome in BUCKET_OUTCOMES:
            self.buckets.labels(outcome)
        self.rows = Counter(p + "rows", "Readings archived (verified)", registry=r)
        self.bytes = Counter(p + "bytes", "Parquet bytes archived (verified objects)", registry=r)
        self.items_deleted = Counter(
            p + "items_deleted", "Items deleted early from DynamoDB after verification", registry=r
        )
        self.late_cleared = Counter(
            p + "late_marks_cleared",
            "Late marks handled (their bucket archived again) and cleared",
            registry=r,
        )
        self.late_waiting = Gauge(
            p + "late_marks_waiting",
            "Late marks left for a later pass at the last pass (younger than the settle time, "
            "marked again meanwhile, or their bucket not archivable yet)",
            registry=r,
        )
        self.corrupt_objects = Counter(
            p + "corrupt_objects",
            "Objects that failed verification (each was archived again)",
            registry=r,
        )
        self.passes = Counter(
            p + "passes",
            "Passes by result: ok, failed (some bucket failed), error (the pass could not go "
            "on), stopped (shutdown during the pass)",
            ["result"],
            registry=r,
        )
        for result in ("ok", "failed", "error", "stopped"):
            self.passes.labels(result)
        self.pass_seconds = Histogram(
            p + "pass_seconds", "Duration of a pass", buckets=_PASS_BUCKETS, registry=r
        )
        self.last_pass_seconds = Gauge(
            p + "last_pass_duration_seconds", "Duration of the last pass", registry=r
        )
        self.last_success = Gauge(
            p + "last_success_timestamp_seconds",
            "When the last complete pass in which no bucket failed ended (Unix time; 0: none)",
            registry=r,
        )
        self.sensors = Gauge(p + "sensors", "Sensors in the registry at the last pass", registry=r)
        self.stream_readings = Counter(
            p + "stream_readings",
            "TTL-deleted readings archived by the Streams consumer (verified)",
            registry=r,
        )
        self.stream_polls = Counter(
            p + "stream_polls",
            "Streams consumer polls by result: ok, error",
            ["result"],
            registry=r,
        )
        for result in ("ok", "error"):
            self.stream_polls.labels(result)
        self._finished = False
        self._last_error: str | None = None

    def observe_pass(self, report: ArchiveReport, seconds: float) -> None:
        """Record a pass that ran to its end (some buckets may have failed) or was stopped."""
        self.buckets.labels("archived").inc(report.archived)
        self.buckets.labels("rearchived").inc(report.rearchived)
        self.late_cleared.inc(report.late)
        self.late_waiting.set(report.late_waiting)
        self.buckets.labels("empty").inc(report.empty)
        self.buckets.labels("skipped").inc(report.skipped)
        self.buckets.labels("failed").inc(len(report.failed))
        self.rows.inc(report.rows)
        self.bytes.inc(report.bytes)
        self.items_deleted.inc(report.deleted)
        self.corrupt_objects.inc(len(report.corrupt))
        self.sensors.set(report.sensors)
        self._timed(seconds)
        result = "failed" if not report.ok else "stopped" if report.stopped else "ok"
        self.passes.labels(result).inc()
        if result == "ok":
            self.last_success.set(time.time())
        self._finished, self._last_error = True, None

    def observe_error(self, error: BaseException, seconds: float) -> None:
        """Record a pass that stopped with ``error``."""
        self._timed(seconds)
        self.passes.labels("error").inc()
        self._last_error = str(error)

    def observe_poll(self, readings: int | None, error: BaseException | None = None) -> None:
        """Record a Streams consumer poll (``readings`` archived, or its ``error``)."""
        if error is not None:
            self.stream_polls.labels("error").inc()
            self._last_error = str(error)
            return
        self.stream_polls.labels("ok").inc()
        self.stream_readings.inc(readings or 0)
        self.last_success.set(time.time())
        self._finished, self._last_error = True, None

    def _timed(self, seconds: float) -> None:
        self.pass_seconds.observe(seconds)
        self.last_pass_seconds.set(seconds)

    def health(self) -> tuple[bool, list[str]]:
        """(ready, reasons not ready), for ``/readyz``."""
        if self._last_error is not None:
            return False, [f"last pass stopped: {self._last_error}"]
        if not self._finished:
            return False, ["no pass has finished yet"]
        return True, []

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


def serve_metrics(metrics: ArchiveMetrics, *, host: str, port: int) -> HealthServer:
    """``/metrics``, ``/healthz``, ``/readyz`` for the archive (an async context manager),
    on the ingest service's server."""
    return HealthServer(metrics, metrics.health, host=host, port=port)


@dataclass(slots=True)
class ArchiveReport:
    """What one pass did.

    Attributes:
        sensors: Sensors looked at.
        archived: Buckets archived and verified in this pass.
        rearchived: Archived buckets written again (late readings merged in, or a
            corrupt object replaced), verified.
        empty: Buckets found empty (marked, no object).
        skipped: Buckets already archived.
        rows: Readings added to the archive in this pass.
        bytes: Parquet bytes written in this pass (verified objects).
        deleted: Items deleted early in this pass.
        late: Late marks handled and cleared.
        late_waiting: Late marks left for a later pass (younger than the settle time, or
            their bucket not archivable yet).
        corrupt: Verification failures found (each was archived again).
        failed: Buckets that could not be archived, with the reason (left unmarked).
        stopped: The pass was stopped before it looked at every bucket (the rest is
            done by the next one).
    """

    sensors: int = 0
    archived: int = 0
    rearchived: int = 0
    empty: int = 0
    skipped: int = 0
    rows: int = 0
    bytes: int = 0
    deleted: int = 0
    late: int = 0
    late_waiting: int = 0
    corrupt: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stopped: bool = False

    @property
    def ok(self) -> bool:
        """True when no bucket failed."""
        return not self.failed

    def summary(self) -> str:
        """One line for logs and the CLI."""
        return (
            f"{self.sensors} sensors: {self.archived} buckets archived ({self.rows} readings), "
            f"{self.rearchived} re-archived, {self.empty} empty, {self.skipped} already "
            f"archived, {self.deleted} items deleted, {self.late} late marks cleared "
            f"({self.late_waiting} waiting), {len(self.corrupt)} corrupt objects re-archived, "
            f"{len(self.failed)} failed" + (" (stopped early)" if self.stopped else "")
        )
