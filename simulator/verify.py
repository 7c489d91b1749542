"""Verify a table against a run manifest: does it hold exactly the valid readings?

For each sensor of the manifest, every shard partition of every bucket its
readings may fall in is read with Query (never Scan); the items are mapped
back to readings with :class:`ingest.storage.layout.TableLayout` and summarised like
the manifest (count, first and last timestamp, checksum of digests). Any
difference fails the check. Manifests written with ``--manifest-readings``
also let verify name the exact timestamps missing, unexpected or changed.
With ``check_registry`` the sensor registry is listed (Query as well) and
sensors the run did not send are reported.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from ingest.storage.items import ReadingItem
from ingest.storage.layout import LAYOUT_PK, TableLayout, registry_partition_keys
from ingest.storage.reads import query_pages, read_packed
from ingest.storage.windows import WindowScheme
from simulator.errors import SimulatorError
from simulator.manifest import Manifest, reading_digest

__all__ = ["SensorDiff", "VerifyError", "VerifyReport", "format_report", "verify_table"]

log = logging.getLogger(__name__)

_MASK = 0xFFFFFFFFFFFFFFFF
_MAX_LISTED = 20


class VerifyError(SimulatorError):
    """The table cannot be read (missing, unreachable, no permission)."""


@dataclass(slots=True)
class _Found:
    count: int = 0
    first_ts: int | None = None
    last_ts: int | None = None
    checksum: int = 0
    digests: dict[int, int] = field(default_factory=dict)
    expired: int = 0

    def add(self, ts: int, digest: int) -> None:
        self.count += 1
        self.first_ts = ts if self.first_ts is None else min(self.first_ts, ts)
        self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)
        self.checksum = (self.checksum + digest) & _MASK
        self.digests[ts] = digest


@dataclass(frozen=True, slots=True)
class SensorDiff:
    """How one sensor's items differ from the manifest."""

    sensor_id: str
    problems: list[str]
    expected_count: int
    found_count: int
    missing_ts: list[int] = field(default_factory=list)
    extra_ts: list[int] = field(default_factory=list)
    changed_ts: list[int] = field(default_factory=list)


@dataclass(slots=True)
class VerifyReport:
    """The outcome of a verification."""

    table: str
    sensors_checked: int
    readings_expected: int
    readings_found: int
    queries: int
    layout: dict[str, int]
    diffs: list[SensorDiff] = field(default_factory=list)
    unknown_sensors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dead_letters_expected: int | None = None
    dead_letters_found: int | None = None

    @property
    def ok(self) -> bool:
        return (
            not self.diffs
            and not self.unknown_sensors
            and self.dead_letters_expected == self.dead_letters_found
        )

    def check_dead_letters(self, manifest: Manifest, directory: Path) -> None:
        """Compare the run's invalid messages with the decode-stage dead letters in ``directory``.

        Point it at the spool of the run (``{data_dir}/deadletters``): letters from
        other runs there would count too.
        """
        from ingest.storage.spool import iter_dead_letters

        self.dead_letters_expected = int(manifest["invalid"].get("messages", 0))
        self.dead_letters_found = sum(
            1 for _, dl in iter_dead_letters(directory) if dl.stage == "decode"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


@asynccontextmanager
async def _client(endpoint_url: str | None, region: str) -> AsyncIterator[Any]:
    session = get_session()
    creds: dict[str, str] = {}
    if endpoint_url and await session.get_credentials() is None:
        # Local DynamoDB-API servers (moto, dynalite) accept any credentials.
        creds = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
    config = AioConfig(
        retries={"mode": "standard", "total_max_attempts": 5}, max_pool_connections=32
    )
    async with session.create_client(
        "dynamodb", region_name=region, endpoint_url=endpoint_url, config=config, **creds
    ) as client:
        yield client


def _verify_error(table: str, exc: Exception) -> VerifyError:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "ResourceNotFoundException":
            return VerifyError(
                f"table {table!r} does not exist at this endpoint (check --table and --region)"
            )
        return VerifyError(f"reading table {table!r} failed: {code}: {exc}")
    return VerifyError(f"cannot reach DynamoDB for table {table!r}: {exc}")


class _Reader:
    def __init__(self, client: Any, table: str, concurrency: int) -> None:
        self.client = client
        self.table = table
        self.gate = asyncio.Semaphore(concurrency)
        self.queries = 0

    async def query_partition(self, pk: str) -> list[Any]:
        """Every item of partition ``pk``, of whatever kind it holds (the caller types them)."""
        items: list[Any] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": pk}},
        }
        async for page in query_pages(self.call, kwargs):
            items += page.get("Items", [])
        return items

    async def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        async with self.gate:
            self.queries += 1
            try:
                resp: dict[str, Any] = await getattr(self.client, operation)(**kwargs)
            except (ClientError, BotoCoreError) as exc:
                raise _verify_error(self.table, exc) from exc
            return resp

    async def layout(self) -> TableLayout | None:
        try:
            resp = await self.client.get_item(
                TableName=self.table,
                Key={"pk": {"S": LAYOUT_PK}, "sk": {"N": "0"}},
                ConsistentRead=True,
            )
        except (ClientError, BotoCoreError) as exc:
            raise _verify_error(self.table, exc) from exc
        item = resp.get("Item")
        return TableLayout.from_layout_item(item) if item else None


async def _read_sensor(
    reader: _Reader, layout: TableLayout, sensor_id: str, span: list[int], detail: bool
) -> _Found:
    found = _Found()
    if layout.kind == "packed":
        # Each timestamp once: a reading stored twice (two sets, staging) is one reading.
        for r in await read_packed(
            reader.call, reader.table, WindowScheme(layout), sensor_id, span[0], span[1]
        ):
            found.add(r.ts_ms, reading_digest(r.sensor_id, r.ts_ms, r.metrics, r.tags))
        if not detail:
            found.digests.clear()
        return found
    pks = [
        pk
        for bucket in layout.bucket_starts(span[0], span[1])
        for pk in layout.partition_keys(sensor_id, bucket)
    ]
    pages: list[list[ReadingItem]] = await asyncio.gather(
        *(reader.query_partition(pk) for pk in pks)
    )
    for items in pages:
        for item in items:
            r = TableLayout.from_item(item)
            found.add(r.ts_ms, reading_digest(r.sensor_id, r.ts_ms, r.metrics, r.tags))
            if TableLayout.is_expired(item):
                found.expired += 1
    if not detail:
        found.digests.clear()
    return found


def _compare(
    sensor_id: str, expected: dict[str, Any], found: _Found, detail: list[list[Any]] | None
) -> SensorDiff | None:
    problems: list[str] = []
    if found.count != expected["count"]:
        problems.append(f"count {found.count}, expected {expected['count']}")
    if expected["count"] and found.count:
        if found.first_ts != expected["first_ts"]:
            problems.append(f"first ts {found.first_ts}, expected {expected['first_ts']}")
        if found.last_ts != expected["last_ts"]:
            problems.append(f"last ts {found.last_ts}, expected {expected['last_ts']}")
    if f"{found.checksum:016x}" != expected["checksum"]:
        problems.append(f"checksum {found.checksum:016x}, expected {expected['checksum']}")
    if not problems:
        return None
    missing: list[int] = []
    extra: list[int] = []
    changed: list[int] = []
    if detail is not None:
        want = {int(ts): int(d, 16) for ts, d in detail}
        missing = sorted(set(want) - set(found.digests))
        extra = sorted(set(found.digests) - set(want))
        changed = sorted(
            ts for ts in set(want) & set(found.digests) if want[ts] != found.digests[ts]
        )
    return SensorDiff(
        sensor_id=sensor_id,
        problems=problems,
        expected_count=expected["count"],
        found_count=found.count,
        missing_ts=missing,
        extra_ts=extra,
        changed_ts=changed,
    )


async def verify_table(
    manifest: Manifest,
    *,
    table: str,
    endpoint_url: str | None,
    region: str = "us-east-1",
    concurrency: int = 16,
    check_registry: bool = True,
    default_layout: TableLayout | None = None,
) -> VerifyReport:
    """Check that ``table`` holds exactly the valid readings recorded in ``manifest``.

    Args:
        manifest: A run manifest (:func:`simulator.manifest.load_manifest`).
        table: Table name.
        endpoint_url: DynamoDB-API endpoint (None: AWS's, from the region).
        region: AWS region.
        concurrency: Queries in flight at once.
        check_registry: Also report registry sensors that the run did not send.
        default_layout: Layout to assume when the table has no layout item.

    Raises:
        VerifyError: The table is missing or cannot be read.
    """
    detail = manifest.get("readings")
    async with _client(endpoint_url, region) as client:
        reader = _Reader(client, table, concurrency)
        warnings: list[str] = []
        layout = await reader.layout()
        if layout is None:
            layout = default_layout or TableLayout()
            warnings.append(
                f"table {table!r} has no layout item (pk={LAYOUT_PK!r}); assuming "
                f"bucket_ms={layout.bucket_ms}, shards={layout.shards}"
            )
        if not manifest.get("complete", True):
            warnings.append(
                "the manifest is incomplete: some messages were never acknowledged by the broker"
            )
        sensors = manifest["sensors"]
        # Bounded fan-out: a few sensors at a time, each querying its partitions concurrently.
        sensor_gate = asyncio.Semaphore(max(1, concurrency // 2))

        async def one(sid: str, rec: dict[str, Any]) -> tuple[str, _Found]:
            async with sensor_gate:
                span = rec.get("span")
                if span is None:
                    return sid, _Found()
                return sid, await _read_sensor(reader, layout, sid, span, detail is not None)

        results = await asyncio.gather(*(one(sid, dict(rec)) for sid, rec in sensors.items()))
        unknown: list[str] = []
        if check_registry:
            pages = await asyncio.gather(
                *(reader.query_partition(pk) for pk in registry_partition_keys())
            )
            registered = {item["sid"]["S"] for items in pages for item in items if "sid" in item}
            unknown = sorted(registered - set(sensors))
    diffs: list[SensorDiff] = []
    expired = 0
    for sid, found in results:
        expired += found.expired
        diff = _compare(
            sid, dict(sensors[sid]), found, detail.get(sid, []) if detail is not None else None
        )
        if diff is not None:
            diffs.append(diff)
    if expired:
        warnings.append(
            f"{expired} item(s) have an expired TTL (still counted: they are in the table)"
        )
    return VerifyReport(
        table=table,
        sensors_checked=len(sensors),
        readings_expected=sum(rec["count"] for rec in sensors.values()),
        readings_found=sum(f.count for _, f in results),
        queries=reader.queries,
        layout={"bucket_ms": layout.bucket_ms, "shards": layout.shards},
        diffs=diffs,
        unknown_sensors=unknown,
        warnings=warnings,
    )


def format_report(report: VerifyReport) -> list[str]:
    """The report as lines of text (for the CLI)."""
    lines: list[str] = []
    r = report
    head = (
        f"{r.sensors_checked} sensors, {r.readings_expected:,} readings expected, "
        f"{r.readings_found:,} found ({r.queries} queries, {r.layout['shards']} shards, "
        f"bucket {r.layout['bucket_ms'] // 60_000} min)"
    )
    lines.append(("PASS: " if r.ok else "FAIL: ") + head)
    lines.extend(f"warning: {w}" for w in r.warnings)
    if r.diffs:
        lines.append(f"{len(r.diffs)} sensor(s) differ:")
        for d in r.diffs[:_MAX_LISTED]:
            lines.append(f"  {d.sensor_id}: " + "; ".join(d.problems))
            for label, values in (
                ("missing", d.missing_ts),
                ("unexpected", d.extra_ts),
                ("changed", d.changed_ts),
            ):
                if values:
                    shown = ", ".join(str(v) for v in values[:10])
                    more = f" … (+{len(values) - 10})" if len(values) > 10 else ""
                    lines.append(f"    {label} ts: {shown}{more}")
        if len(r.diffs) > _MAX_LISTED:
            lines.append(f"  … and {len(r.diffs) - _MAX_LISTED} more")
    if r.dead_letters_expected is not None:
        same = r.dead_letters_expected == r.dead_letters_found
        lines.append(
            f"dead letters: {r.dead_letters_found} found, {r.dead_letters_expected} invalid "
            f"messages sent{'' if same else ' — MISMATCH'}"
        )
    if r.unknown_sensors:
        shown = ", ".join(r.unknown_sensors[:_MAX_LISTED])
        lines.append(
            f"{len(r.unknown_sensors)} sensor(s) in the registry that this run "
            f"did not send: {shown}"
        )
    return lines
