"""Capacity and cost plan of a sensor fleet: pure arithmetic, no I/O.

``iot-ingest plan`` (``bench.plancmd``) reads the flags (and any bench result files),
calls :func:`make_plan` once per layout and prints :func:`render_table` or
:func:`plan_to_json`. Every input figure is a :class:`Figure` that says where it comes
from, so the output can tell a measured number from a computed or a modelled one:

``measured``
    The bench's own figures (docs/performance.md, 22 November 2026, or a
    ``result.json`` given with ``--bench``): CPU per reading, publish → durable latency,
    Parquet bytes per reading of the archive.
``computed``
    From the project's code and DynamoDB's documented rules: the ``reading`` layout's
    item size is :func:`bench.capacity.item_size_bytes` of the item
    :meth:`ingest.storage.layout.TableLayout.to_item` makes of a reading of M metrics;
    one write unit per started KB; the registry's one UpdateItem per sensor per
    ``registry_refresh_s``.
``modelled``
    The ``packed`` layout, which is not built yet: decision 0008's cost model
    (docs/decisions/0008-packed-layout.md, "Cost model"), per-reading byte figures of
    its journal, staging and sealed windows, scaled to M metrics, with each item
    rounded to whole write units. Replaced by ``measured`` when a bench result of a
    packed run is given.
``flag``
    Given on the command line.

DynamoDB's rules used (Amazon DynamoDB Developer Guide): a write unit per started
1 KB of an item; a read of 4 KB is 1 read unit strongly consistent and 0.5 eventually
consistent (a Query sums the sizes of the items it returns, then rounds up once);
storage is the items' bytes plus 100 bytes per item; a partition serves at most 1,000
write units and 3,000 read units per second and holds at most 10 GB. A month is 30
days, a GB 10⁹ bytes (as docs/operations.md); the free 25 GB of storage are left out.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from bench.capacity import US_EAST_1_USD_PER_MILLION_WRU, item_size_bytes, write_units
from ingest.config import PipelineConfig
from ingest.storage.layout import REGISTRY_PARTITIONS, Reading, TableLayout
from ingest.storage.windows import SEAL_GRACE_MS, STAGE_TTL_S

__all__ = [
    "BROKERS",
    "DAY_S",
    "GB",
    "ITEM_OVERHEAD_BYTES",
    "MEASURED_CPU_US_PER_MESSAGE_SINGLE",
    "MEASURED_CPU_US_PER_READING_BATCHED",
    "MEASURED_LATENCY_P99_MS",
    "MEASURED_PARQUET_BYTES_PER_METRIC",
    "MONTH_S",
    "PACKED_MODEL",
    "PARTITION_BYTES",
    "PARTITION_RCU",
    "PARTITION_WCU",
    "READ_UNIT_BYTES",
    "Broker",
    "Dashboards",
    "Figure",
    "Fleet",
    "LayoutFigures",
    "PackedModel",
    "Plan",
    "Prices",
    "Source",
    "default_figures",
    "make_plan",
    "plan_to_json",
    "reading_item_bytes",
    "render_table",
]

Source = Literal["measured", "computed", "modelled", "flag"]
MONTH_S = 30 * 86_400
DAY_S = 86_400
GB = 1e9
PARTITION_WCU = 1_000
PARTITION_RCU = 3_000
PARTITION_BYTES = 10 * GB
ITEM_OVERHEAD_BYTES = 100
"""DynamoDB's storage overhead per item (indexing), billed as stored bytes."""
READ_UNIT_BYTES = 4_096


@dataclass(frozen=True, slots=True)
class Figure:
    """A number and where it comes from (``source``: measured, computed, modelled, flag)."""

    value: float
    source: Source
    note: str


# -- what the bench measured (docs/performance.md, 22 November 2026, code at dc0c673) ----

MEASURED_CPU_US_PER_READING_BATCHED = Figure(
    18.6,
    "measured",
    "gateway batches at saturation (30,745 readings/s), docs/performance.md",
)
MEASURED_CPU_US_PER_MESSAGE_SINGLE = Figure(
    26.9,
    "measured",
    "one reading per message at 6,000 messages/s, acks held, docs/performance.md",
)
MEASURED_LATENCY_P99_MS = Figure(
    77.0,
    "measured",
    "publish → durable p99, gateway at 15,000/s against the bench sink, docs/performance.md",
)
MEASURED_PARQUET_BYTES_PER_METRIC = Figure(
    3.05,
    "measured",
    "the archiver's Parquet (zstd) of a day at 1 Hz of each simulator kind, bytes per "
    "metric (python -m bench.archivesize)",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class PackedModel:
    """Decision 0008's cost model: per-reading bytes at its scenario (5 metrics).

    Byte figures scale with ``(1 + metrics) / 6`` (a timestamp and the metrics; 1 at the
    decision's 5 metrics). ``item_key_bytes``: names, keys and small attributes of one
    item, added to each item before rounding to write units (modelled).
    """

    journal_bytes_per_reading: float = 22.0
    journal_flush_s: float = 0.05
    journal_ttl_days: float = 2.0
    staging_bytes_per_reading: float = 15.0
    window_bytes_per_reading: float = 6.0
    rollup_units_per_window: float = 0.27
    item_key_bytes: float = 60.0
    metrics_at: int = 5

    def scale(self, metrics: int) -> float:
        return (1 + metrics) / (1 + self.metrics_at)


PACKED_MODEL = PackedModel()


@dataclass(frozen=True, slots=True, kw_only=True)
class Fleet:
    """The traffic: ``sensors`` each sending ``rate_hz`` readings of ``metrics`` metrics,
    ``readings_per_message`` readings per MQTT message (1: a device per connection)."""

    sensors: int
    rate_hz: float
    metrics: int
    readings_per_message: int = 1

    @property
    def readings_per_s(self) -> float:
        return self.sensors * self.rate_hz

    @property
    def messages_per_s(self) -> float:
        return self.readings_per_s / self.readings_per_message


@dataclass(frozen=True, slots=True, kw_only=True)
class Dashboards:
    """The read model: ``count`` dashboards open at once, each showing ``sensors``
    sensors over the last ``window_s`` seconds, read again (whole, eventually
    consistent Queries) every ``refresh_s`` seconds."""

    count: int = 10
    sensors: int = 10
    window_s: float = 3_600.0
    refresh_s: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Broker:
    """A broker's limits on one subscribing connection."""

    name: str
    inflight: int
    msgs_per_s: float | None
    note: str


BROKERS: dict[str, Broker] = {
    "iot-core": Broker(
        name="AWS IoT Core",
        inflight=100,
        msgs_per_s=100.0,
        note="100 unacknowledged QoS 1 messages per connection (hard limit); "
        "100 publishes per second per connection (docs/brokers.md)",
    ),
    "mosquitto": Broker(
        name="Mosquitto",
        inflight=20,
        msgs_per_s=None,
        note="max_inflight_messages 20 by default (deploy/mosquitto.conf raises it to 1000)",
    ),
    "emqx": Broker(
        name="EMQX", inflight=32, msgs_per_s=None, note="mqtt.max_inflight 32 by default"
    ),
    "vernemq": Broker(
        name="VerneMQ", inflight=20, msgs_per_s=None, note="max_inflight_messages 20 by default"
    ),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Prices:
    """USD prices, on-demand; defaults: us-east-1, Standard table class (docs/operations.md)."""

    wru_per_million: float = US_EAST_1_USD_PER_MILLION_WRU
    rru_per_million: float = 0.125
    storage_gb_month: float = 0.25
    rwru_per_million: float = US_EAST_1_USD_PER_MILLION_WRU
    s3_gb_month: float = 0.023

    @classmethod
    def for_table_class(cls, table_class: str) -> Prices:
        """Standard, or Standard-IA: requests × 1.25, storage × 0.4 (docs/operations.md)."""
        if table_class == "standard":
            return cls()
        if table_class == "standard-ia":
            return cls(
                wru_per_million=0.78125,
                rru_per_million=0.15625,
                storage_gb_month=0.10,
                rwru_per_million=0.78125,
            )
        raise ValueError(f"table class must be standard or standard-ia, got {table_class!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class LayoutFigures:
    """The per-reading figures a plan starts from, for one layout.

    ``write_units_per_reading`` and ``stored_bytes_per_reading``: None means "compute
    from the layout" (the ``reading`` item, or the packed model); a Figure overrides.
    """

    cpu_us_per_reading: Figure
    latency_p99_ms: Figure
    item_bytes: Figure | None = None
    write_units_per_reading: Figure | None = None
    stored_bytes_per_reading: Figure | None = None
    archive_bytes_per_reading: Figure | None = None
    from_packed_run: bool = False
    """The figures were measured on a ``packed`` table (else the ``reading`` layout's CPU and
    latency stand in for the packed layout, the latency plus one journal flush)."""


def reading_item_bytes(metrics: int, layout: TableLayout | None = None) -> int:
    """Size by DynamoDB's rules of the ``reading`` layout's item for a reading of
    ``metrics`` metrics: a gateway-style sensor id of 17 characters
    (``gw-0001:dev-00001``), metric names of 8 characters, values of 4 significant
    digits, no tags."""
    lay = layout or TableLayout()
    reading = Reading(
        "gw-0001:dev-00001",
        1_795_000_000_123,
        {f"metric{i:02d}": 22.54 + i for i in range(metrics)},
    )
    return item_size_bytes(lay.to_item(reading))


def default_figures(fleet: Fleet) -> LayoutFigures:
    """The bench's measured figures for this traffic (docs/performance.md)."""
    cpu = (
        MEASURED_CPU_US_PER_MESSAGE_SINGLE
        if fleet.readings_per_message == 1
        else MEASURED_CPU_US_PER_READING_BATCHED
    )
    return LayoutFigures(cpu_us_per_reading=cpu, latency_p99_ms=MEASURED_LATENCY_P99_MS)


@dataclass(slots=True, kw_only=True)
class Plan:
    """Everything ``iot-ingest plan`` prints for one layout."""

    layout: str
    fleet: dict[str, Any]
    readings_per_s: float
    messages_per_s: float
    write_units_per_reading: Figure
    write_parts: dict[str, float]
    wcu_per_s: float
    rcu_per_s: float
    read_units_per_refresh_per_sensor: float
    item_bytes: Figure | None
    stored_bytes_per_reading: Figure
    storage_gb_per_day: float
    storage_gb_per_month: float
    table_gb: float
    partitions: int
    partitions_by: dict[str, int]
    hottest_key: str
    hottest_key_wcu_per_s: float
    hottest_key_ok: bool
    cpu_us_per_reading: Figure
    latency_ms: Figure
    broker: str
    inflight_limit: int
    inflight_messages: float
    workers: int
    workers_for_cpu: int
    workers_for_connections: int
    readings_per_s_per_worker: float
    archive_bytes_per_reading: Figure
    archive_gb_per_month: float
    archive_gb_held: float
    monthly_usd: dict[str, float]
    notes: list[str] = field(default_factory=list)

    @property
    def monthly_total_usd(self) -> float:
        return sum(self.monthly_usd.values())


def _ceil(x: float) -> int:
    """``math.ceil`` that ignores float noise (31.000000000000004 is 31)."""
    return math.ceil(round(x, 9))


def _units(nbytes: float) -> int:
    """Write units of one item of ``nbytes`` bytes (1 per started KB, at least 1)."""
    return write_units(math.ceil(nbytes))


def _query_rru(nbytes: float) -> float:
    """Read units of one eventually consistent Query returning ``nbytes`` (≥ one 4 KB)."""
    return 0.5 * max(1, math.ceil(nbytes / READ_UNIT_BYTES))


def make_plan(
    *,
    fleet: Fleet,
    layout: TableLayout,
    figures: LayoutFigures,
    dashboards: Dashboards,
    broker: Broker,
    prices: Prices,
    replica_regions: int = 0,
    archive_months: int = 12,
    worker_utilization: float = 0.6,
    inflight_limit: int | None = None,
    model: PackedModel = PACKED_MODEL,
) -> Plan:
    """The plan of ``fleet`` on a table of ``layout`` (its ``kind``: reading or packed).

    Args:
        fleet: The traffic.
        layout: Key scheme and retention; ``kind`` chooses the layout planned.
        figures: Per-reading inputs (:func:`default_figures`, or a bench result's).
        dashboards: The read model.
        broker: Its in-flight window (``inflight_limit`` overrides) and message rate per
            subscribing connection.
        prices: USD per line.
        replica_regions: Global Tables replicas besides the table's own region.
        archive_months: Months of readings the S3 archive holds (0: no archive).
        worker_utilization: The share of one core a worker is planned to use (0 < u ≤ 1).
        model: The packed layout's modelled figures.
    """
    if not 0 < worker_utilization <= 1:
        raise ValueError(f"worker utilization must be in (0, 1], got {worker_utilization}")
    packed = layout.kind == "packed"
    rate = fleet.readings_per_s
    notes: list[str] = []

    # -- ingest workers and broker connections (the same for both layouts) ----------
    cpu = figures.cpu_us_per_reading
    latency = figures.latency_p99_ms
    if packed and not figures.from_packed_run:
        if cpu.source != "flag":
            cpu = Figure(
                cpu.value,
                "modelled",
                f"the reading layout's {cpu.value:g} µs ({cpu.note}) assumed for packed",
            )
        if latency.source != "flag":
            latency = Figure(
                latency.value + model.journal_flush_s * 1000,
                "modelled",
                f"the reading layout's {latency.value:g} ms ({latency.note}) + one journal "
                f"flush interval ({model.journal_flush_s * 1000:g} ms): acks wait for it",
            )
    per_worker = worker_utilization * 1e6 / cpu.value
    workers_cpu = max(1, _ceil(rate / per_worker))
    limit = inflight_limit if inflight_limit is not None else broker.inflight
    inflight = fleet.messages_per_s * latency.value / 1000  # Little's law
    by_window = inflight / limit
    by_rate = fleet.messages_per_s / broker.msgs_per_s if broker.msgs_per_s else 0.0
    workers_conn = max(1, _ceil(max(by_window, by_rate)))
    workers = max(workers_cpu, workers_conn)

    # -- writes -----------------------------------------------------------------------
    scale = model.scale(fleet.metrics)
    parts: dict[str, float] = {}
    item_bytes: Figure | None = None
    hot: list[tuple[str, float]] = []
    items_per_reading: float
    rpw = max(1.0, fleet.rate_hz * layout.window_ms / 1000)  # readings per sealed window
    stage_s = layout.stage_ms / 1000
    if not packed:
        item_bytes = figures.item_bytes or Figure(
            reading_item_bytes(fleet.metrics, layout),
            "computed",
            f"the layout's item for {fleet.metrics} metrics by DynamoDB's size rules",
        )
        item_units = _units(item_bytes.value)
        parts["reading items"] = float(item_units)
        items_per_reading = 1.0
        hot.append(
            (
                "one sensor's bucket shard ({sensor}#{bucket}#{shard})",
                fleet.rate_hz / layout.shards * item_units,
            )
        )
    else:
        per_worker_rate = rate / workers
        # A worker writes its journal every journal_flush_s when it holds a reading, and a
        # staging item per group it holds readings of every stage_s: expected counts of
        # readings arriving at random (Poisson).
        flush_s = model.journal_flush_s
        flushes_per_s = -math.expm1(-per_worker_rate * flush_s) / flush_s
        flush_readings = per_worker_rate / flushes_per_s
        journal_item = flush_readings * model.journal_bytes_per_reading * scale
        journal_units = _units(journal_item + model.item_key_bytes)
        parts["journal"] = journal_units * flushes_per_s * workers / rate
        groups_live = min(layout.groups, fleet.sensors)
        per_interval = per_worker_rate * stage_s
        groups_touched = groups_live * -math.expm1(-per_interval / groups_live)
        stage_readings = per_interval / groups_touched
        stage_item = stage_readings * model.staging_bytes_per_reading * scale
        stage_units = _units(stage_item + model.item_key_bytes)
        stage_items_per_s = workers * groups_touched / stage_s
        parts["staging"] = stage_units * stage_items_per_s / rate
        window_item = rpw * model.window_bytes_per_reading * scale
        window_units = _units(window_item + model.item_key_bytes)
        parts["sealed windows"] = window_units / rpw
        parts["rollups"] = model.rollup_units_per_window / rpw
        items_per_reading = flushes_per_s * workers / rate + stage_items_per_s / rate + 1 / rpw
        hot += [
            ("one worker's journal (#journal#{worker})", journal_units * flushes_per_s),
            (
                "one staging group (#stage#{group}#{hour})",
                stage_units * stage_items_per_s / groups_live,
            ),
            (
                "one sensor's sealed windows ({sensor}#{bucket})",
                (window_units + model.rollup_units_per_window) / (layout.window_ms / 1000),
            ),
        ]
        if window_item > 350 * 1024:
            notes.append(
                "a sealed window exceeds 350 KB: it is split into parts (more items, same bytes)"
            )
    # The registry (the service's, whatever the layout): one UpdateItem of a small item per
    # sensor per registry_refresh_s, spread over REGISTRY_PARTITIONS keys.
    refresh = float(PipelineConfig.model_fields["registry_refresh_s"].default)
    registry_per_s = fleet.sensors * (
        min(fleet.rate_hz, 1 / refresh) if refresh > 0 else fleet.rate_hz
    )
    parts["registry"] = registry_per_s / rate
    hot.append(
        (
            f"a registry partition (#sensors#{{p}}, {REGISTRY_PARTITIONS} of them)",
            registry_per_s / REGISTRY_PARTITIONS,
        )
    )
    wu = figures.write_units_per_reading or Figure(
        sum(parts.values()),
        "modelled" if packed else "computed",
        "decision 0008's cost model, items rounded to whole write units, + the registry's "
        "UpdateItem per sensor per registry_refresh_s"
        if packed
        else "1 unit per started KB of the item + the registry's UpdateItem per sensor "
        "per registry_refresh_s",
    )
    wcu = rate * wu.value
    hottest_key, hottest_wcu = max(hot, key=lambda kv: kv[1])

    # -- reads (dashboards) -----------------------------------------------------------
    window_s = dashboards.window_s
    if not packed:
        assert item_bytes is not None
        per_shard = fleet.rate_hz * window_s / layout.shards * item_bytes.value
        per_sensor = layout.shards * _query_rru(per_shard)
    else:
        windows_bytes = (
            fleet.rate_hz * window_s * model.window_bytes_per_reading * scale
            + (math.ceil(window_s * 1000 / layout.window_ms) + 1) * model.item_key_bytes
        )
        unsealed_s = layout.window_ms / 1000 + SEAL_GRACE_MS / 1000 + stage_s
        staging_bytes = (
            fleet.sensors / layout.groups
        ) * fleet.rate_hz * unsealed_s * model.staging_bytes_per_reading * scale + (
            workers * unsealed_s / stage_s
        ) * model.item_key_bytes
        per_sensor = _query_rru(windows_bytes) + _query_rru(staging_bytes)
    rcu = dashboards.count * dashboards.sensors * per_sensor / dashboards.refresh_s

    # -- storage --------------------------------------------------------------------
    if figures.stored_bytes_per_reading is not None:
        stored = figures.stored_bytes_per_reading
    elif not packed:
        assert item_bytes is not None
        stored = Figure(
            item_bytes.value + ITEM_OVERHEAD_BYTES,
            item_bytes.source,
            "the item + DynamoDB's 100 bytes per item",
        )
    else:
        days = layout.retention_days
        windows_b = (rpw * model.window_bytes_per_reading * scale + model.item_key_bytes) / rpw
        windows_b += ITEM_OVERHEAD_BYTES / rpw
        journal_b = (
            model.journal_bytes_per_reading * scale
            + (model.item_key_bytes + ITEM_OVERHEAD_BYTES) / flush_readings
        ) * (model.journal_ttl_days / days)
        staging_b = (
            model.staging_bytes_per_reading * scale
            + (model.item_key_bytes + ITEM_OVERHEAD_BYTES) / stage_readings
        ) * (STAGE_TTL_S / DAY_S / days)
        stored = Figure(
            windows_b + journal_b + staging_b,
            "modelled",
            "decision 0008: sealed windows + 100 B per item, the journal (2 days) and staging "
            f"(1 day) averaged over {days} days of retention; rollups left out",
        )
    per_day_gb = rate * DAY_S * stored.value / GB
    table_gb = per_day_gb * layout.retention_days
    by_partition = {
        "writes": _ceil(wcu / PARTITION_WCU),
        "reads": _ceil(rcu / PARTITION_RCU),
        "storage": _ceil(table_gb * GB / PARTITION_BYTES),
    }
    partitions = max(1, *by_partition.values())

    # -- archive --------------------------------------------------------------------
    archive = figures.archive_bytes_per_reading or Figure(
        MEASURED_PARQUET_BYTES_PER_METRIC.value * fleet.metrics,
        "measured",
        f"{MEASURED_PARQUET_BYTES_PER_METRIC.value:g} B per metric × {fleet.metrics}: "
        + MEASURED_PARQUET_BYTES_PER_METRIC.note,
    )
    archive_month_gb = rate * MONTH_S * archive.value / GB
    archive_gb = archive_month_gb * archive_months

    # -- the bill -------------------------------------------------------------------
    readings_month = rate * MONTH_S
    replicated_units = replica_regions * readings_month * (wu.value + items_per_reading)
    monthly = {
        "writes": readings_month * wu.value / 1e6 * prices.wru_per_million,
        "reads": rcu * MONTH_S / 1e6 * prices.rru_per_million,
        "storage": table_gb * prices.storage_gb_month,
        "replicated writes": replicated_units / 1e6 * prices.rwru_per_million,
        "replica storage": replica_regions * table_gb * prices.storage_gb_month,
        "S3 archive": archive_gb * prices.s3_gb_month,
    }
    if fleet.rate_hz > 1_000:
        notes.append(
            "a sensor above 1,000 readings/s: the sort key is the timestamp in ms, so a live "
            "sensor holds at most 1,000 distinct readings a second (docs/performance.md)"
        )
    if replica_regions:
        notes.append(
            f"replicated writes: {replica_regions} region(s) × (the writes + one replicated "
            "TTL delete per item once it expires)"
        )
    return Plan(
        layout=layout.kind,
        fleet=asdict(fleet),
        readings_per_s=rate,
        messages_per_s=fleet.messages_per_s,
        write_units_per_reading=wu,
        write_parts=parts,
        wcu_per_s=wcu,
        rcu_per_s=rcu,
        read_units_per_refresh_per_sensor=per_sensor,
        item_bytes=item_bytes,
        stored_bytes_per_reading=stored,
        storage_gb_per_day=per_day_gb,
        storage_gb_per_month=per_day_gb * 30,
        table_gb=table_gb,
        partitions=partitions,
        partitions_by=by_partition,
        hottest_key=hottest_key,
        hottest_key_wcu_per_s=hottest_wcu,
        hottest_key_ok=hottest_wcu <= PARTITION_WCU,
        cpu_us_per_reading=cpu,
        latency_ms=latency,
        broker=broker.name,
        inflight_limit=limit,
        inflight_messages=inflight,
        workers=workers,
        workers_for_cpu=workers_cpu,
        workers_for_connections=workers_conn,
        readings_per_s_per_worker=per_worker,
        archive_bytes_per_reading=archive,
        archive_gb_per_month=archive_month_gb,
        archive_gb_held=archive_gb,
        monthly_usd=monthly,
        notes=notes,
    )


def plan_to_json(plans: list[Plan], inputs: dict[str, Any]) -> dict[str, Any]:
    """The plans as one JSON-ready document (every Figure as value, source, note)."""
    out = []
    for p in plans:
        doc = asdict(p)
        doc["monthly_total_usd"] = p.monthly_total_usd
        out.append(doc)
    return {"inputs": inputs, "plans": out}


def _src(f: Figure | None) -> str:
    return "" if f is None else f" ({f.source})"


def _n(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def render_table(plans: list[Plan], inputs: dict[str, Any]) -> str:
    """The plans side by side as a readable table, one column per layout."""
    fleet = plans[0].fleet
    head = (
        f"{fleet['sensors']:,} sensors × {fleet['rate_hz']:g} Hz × {fleet['metrics']} metrics "
        f"= {_n(plans[0].readings_per_s)} readings/s in {_n(plans[0].messages_per_s)} "
        f"messages/s ({fleet['readings_per_message']} reading(s) per message); "
        f"retention {inputs['retention_days']} days, {inputs['replica_regions']} replica "
        f"region(s), {inputs['table_class']} table class"
    )
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, cells: list[str]) -> None:
        rows.append((label, cells))

    row(
        "write units per reading",
        [
            f"{_n(p.write_units_per_reading.value, 4)}{_src(p.write_units_per_reading)}"
            for p in plans
        ],
    )
    row("  of which", [", ".join(f"{k} {v:.4f}" for k, v in p.write_parts.items()) for p in plans])
    row("write units/s (WCU)", [_n(p.wcu_per_s) for p in plans])
    row("read units/s (RCU, dashboards)", [_n(p.rcu_per_s, 1) for p in plans])
    row(
        "stored bytes per reading",
        [
            f"{_n(p.stored_bytes_per_reading.value, 1)}{_src(p.stored_bytes_per_reading)}"
            for p in plans
        ],
    )
    row("storage growth GB/day", [_n(p.storage_gb_per_day, 2) for p in plans])
    row("storage growth GB/month", [_n(p.storage_gb_per_month, 1) for p in plans])
    row("table size GB (at retention)", [_n(p.table_gb, 1) for p in plans])
    row(
        "partitions needed",
        [
            f"{p.partitions:,} (writes {p.partitions_by['writes']:,}, reads {p.partitions_by['reads']:,}, storage {p.partitions_by['storage']:,})"
            for p in plans
        ],
    )
    row(
        "hottest key",
        [
            f"{p.hottest_key}: {_n(p.hottest_key_wcu_per_s, 1)} WCU/s{'' if p.hottest_key_ok else ' — OVER 1,000/s'}"
            for p in plans
        ],
    )
    row(
        "CPU µs per reading",
        [f"{p.cpu_us_per_reading.value:g}{_src(p.cpu_us_per_reading)}" for p in plans],
    )
    row("readings/s per worker", [_n(p.readings_per_s_per_worker) for p in plans])
    row(
        "publish → durable ms (p99)", [f"{p.latency_ms.value:g}{_src(p.latency_ms)}" for p in plans]
    )
    row(
        "messages in flight (rate × latency)",
        [
            f"{_n(p.inflight_messages, 1)} ({p.broker}: {p.inflight_limit} per connection)"
            for p in plans
        ],
    )
    row(
        "ingest workers (= connections)",
        [
            f"{p.workers:,} (CPU {p.workers_for_cpu:,}, broker {p.workers_for_connections:,})"
            for p in plans
        ],
    )
    row(
        "S3 archive bytes per reading",
        [
            f"{_n(p.archive_bytes_per_reading.value, 1)}{_src(p.archive_bytes_per_reading)}"
            for p in plans
        ],
    )
    row(
        "S3 archive GB/month, GB held",
        [f"{_n(p.archive_gb_per_month, 1)}, {_n(p.archive_gb_held, 1)}" for p in plans],
    )
    for line in plans[0].monthly_usd:
        row(f"$/month {line}", [_n(p.monthly_usd[line], 2) for p in plans])
    row("$/month total", [_n(p.monthly_total_usd, 2) for p in plans])

    width = max(len(label) for label, _ in rows)
    cols = [max(len(p.layout), *(len(cells[i]) for _, cells in rows)) for i, p in enumerate(plans)]
    lines = [head, ""]
    lines.append(
        " " * width
        + " | "
        + " | ".join(p.layout.ljust(c) for p, c in zip(plans, cols, strict=True)).rstrip()
    )
    lines.append("-" * width + "-+-" + "-+-".join("-" * c for c in cols))
    for label, cells in rows:
        lines.append(
            label.ljust(width)
            + " | "
            + " | ".join(s.ljust(c) for s, c in zip(cells, cols, strict=True)).rstrip()
        )
    lines.append("")
    notes: list[str] = []
    if any(p.layout == "packed" for p in plans):
        notes.append(
            "packed: MODELLED, not measured (the layout is not built yet): decision 0008's "
            "cost model (docs/decisions/0008-packed-layout.md)"
        )
    for p in plans:
        labelled = (
            ("write units", p.write_units_per_reading),
            ("stored bytes", p.stored_bytes_per_reading),
            ("CPU", p.cpu_us_per_reading),
            ("latency", p.latency_ms),
            ("archive bytes", p.archive_bytes_per_reading),
        )
        notes += [f"{p.layout} {name}: {f.source}, {f.note}" for name, f in labelled]
        notes += [f"{p.layout}: {n}" for n in p.notes]
    notes.append(
        "in flight: messages/s × the p99 publish → durable latency (Little's law, the p99 "
        "as a conservative hold time); one broker connection per worker"
    )
    reads = inputs["dashboards"]
    notes.append(
        f"reads: {reads['count']} dashboards × {reads['sensors']} sensors × the last "
        f"{reads['window_s']:g} s, every {reads['refresh_s']:g} s, eventually consistent"
    )
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines)
