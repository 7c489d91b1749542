"""Tiered reads on moto DynamoDB + moto S3: archived buckets come back from S3, merged with hot.

A sensor's buckets are archived with the archiver (a fixed clock: real now, rounded
to a bucket), then some archived items are deleted from DynamoDB (a TTL-expiry
simulation: moto never expires items), some are rewritten with a past TTL
(expired, not yet deleted) and one is changed after archival (the hot value must
win). The API serving the table with ``s3_bucket`` must answer exactly like the
API serving a reference table that never lost anything.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from bench.servers import MotoServer
from ingest.aws.settings import AwsSettings
from ingest.storage.layout import Item, Reading
from queries.api.app import create_app
from queries.api.server import ApiServer
from queries.api.settings import ServeSettings
from queries.read.pages import read_page
from queries.read.reader import TableReader
from tests.archive.conftest import BUCKET_MS, HOUR_MS, LAYOUT, ArchiveEnv, open_archive_env
from tests.queries.harness import RecordingClient

CREDS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
NOW_MS = (time.time_ns() // 1_000_000) // BUCKET_MS * BUCKET_MS
FIRST = NOW_MS - 39 * HOUR_MS  # 13 buckets back; horizon 1 day: 5 buckets archivable
A0, A1, A2, A3, A4 = (FIRST + i * BUCKET_MS for i in range(5))
START = NOW_MS - 40 * HOUR_MS
END = NOW_MS - 1
SENSORS = ("tier-a", "tier-b")
AGGS = "count,sum,avg,min,max,first,last"


def make_readings(seed: int = 7) -> list[Reading]:
    rng = random.Random(seed)
    out: list[Reading] = []
    for sid in SENSORS:
        for bucket in range(FIRST, NOW_MS, BUCKET_MS):
            for ts in sorted(rng.sample(range(bucket, bucket + BUCKET_MS), 12)):
                metrics: dict[str, float | int] = {"temp": round(rng.uniform(-20, 40), 3)}
                if rng.random() < 0.5:
                    metrics["hum"] = rng.randrange(0, 100)
                out.append(Reading(sensor_id=sid, ts_ms=ts, metrics=metrics))
    return out


def in_bucket(r: Reading, sid: str, bucket: int) -> bool:
    return r.sensor_id == sid and bucket <= r.ts_ms < bucket + BUCKET_MS


@dataclass
class Server:
    url: str
    session: aiohttp.ClientSession

    async def get(self, path: str, **params: Any) -> tuple[Any, Any]:
        query = {k: str(v) for k, v in params.items()}
        async with self.session.get(self.url + path, params=query) as resp:
            body = await resp.json()
            assert resp.status == 200, body
            return resp.headers, body


@dataclass
class Tiered:
    env: ArchiveEnv
    archived: Server  # the table that lost archived items, served with the archive
    reference: Server  # a table that never expired anything, served without S3
    readings: list[Reading]  # what the reference holds


async def _delete(env: ArchiveEnv, readings: list[Reading]) -> None:
    for r in readings:
        item = env.layout.to_item(r)
        await env.dynamo.call(
            "delete_item", TableName=env.dynamo.table, Key={"pk": item["pk"], "sk": item["sk"]}
        )


def _expired(env: ArchiveEnv, r: Reading) -> Item:
    return {**env.layout.to_item(r), "ttl": {"N": str(int(time.time()) - 3600)}}


@pytest_asyncio.fixture
async def archive_env(moto_server: MotoServer, unique_name: str) -> AsyncIterator[ArchiveEnv]:
    """A table (3-hour buckets, 4 shards, 2 days' retention) and its archive bucket."""
    async with open_archive_env(moto_server.endpoint_url, unique_name, LAYOUT) as env:
        yield env


@pytest_asyncio.fixture
async def tiered(
    archive_env: ArchiveEnv, moto_server: MotoServer, unique_name: str
) -> AsyncIterator[Tiered]:
    env = archive_env
    readings = make_readings()
    await env.put(readings)
    report = await env.archiver(now_ms=NOW_MS).run_once()
    assert not report.failed
    # TTL simulation on the archived buckets of tier-a: A0 and A3 gone, A1 half gone and
    # one reading changed after archival, A2 untouched, A4 expired but not yet deleted.
    a = [r for r in readings if r.sensor_id == "tier-a"]
    await _delete(env, [r for r in a if in_bucket(r, "tier-a", A0) or in_bucket(r, "tier-a", A3)])
    a1 = [r for r in a if in_bucket(r, "tier-a", A1)]
    await _delete(env, a1[::2])
    changed = Reading("tier-a", a1[1].ts_ms, {"temp": 99.5, "hum": 1})
    readings[readings.index(a1[1])] = changed
    await env.put([changed])
    await env.dynamo.batch_write([_expired(env, r) for r in a if in_bucket(r, "tier-a", A4)])
    # tier-b: every archived item gone.
    await _delete(
        env, [r for r in readings if r.sensor_id == "tier-b" and r.ts_ms < A4 + BUCKET_MS]
    )

    async with contextlib.AsyncExitStack() as stack:
        ref = await stack.enter_async_context(
            open_archive_env(moto_server.endpoint_url, f"{unique_name}-ref", LAYOUT)
        )
        await ref.put(readings)  # the reference: nothing ever expired
        yield await serve_tiered(stack, moto_server.endpoint_url, env, ref, readings)


async def serve_tiered(
    stack: contextlib.AsyncExitStack,
    endpoint: str,
    env: ArchiveEnv,
    ref: ArchiveEnv,
    readings: list[Reading],
) -> Tiered:
    """The API over ``env``'s table with its archive, and over ``ref``'s table alone, both
    at ``endpoint`` (servers and session closed with ``stack``)."""
    session = await stack.enter_async_context(aiohttp.ClientSession())
    servers = []
    for settings in (
        ServeSettings(
            table=env.dynamo.table,
            endpoint_url=endpoint,
            s3_bucket=env.store.bucket,
            s3_endpoint=endpoint,
            s3_prefix=env.store.prefix,
            **CREDS,
        ),
        ServeSettings(table=ref.dynamo.table, endpoint_url=endpoint, **CREDS),
    ):
        server = await stack.enter_async_context(ApiServer(create_app(settings)))
        servers.append(Server(server.url, session))
    return Tiered(env, servers[0], servers[1], readings)


def _expected(readings: list[Reading], sid: str, lo: int, hi: int) -> list[dict[str, Any]]:
    return [
        {"ts": r.ts_ms, **r.metrics}
        for r in sorted(readings, key=lambda r: r.ts_ms)
        if r.sensor_id == sid and lo <= r.ts_ms <= hi
    ]


def _tiers(lo: int, hi: int) -> list[dict[str, Any]]:
    special = {A0: "cold", A1: "hot+cold", A2: "hot", A3: "cold", A4: "cold"}
    first = lo - lo % BUCKET_MS
    return [
        {"bucket_start": b, "tier": special.get(b, "hot")} for b in range(first, hi + 1, BUCKET_MS)
    ]


async def test_raw_range_across_the_boundary_equals_a_table_that_never_expired(
    tiered: Tiered,
) -> None:
    headers, body = await tiered.archived.get(
        "/v1/sensors/tier-a/readings", start=START, end=END, limit=10_000
    )
    ref_headers, ref = await tiered.reference.get(
        "/v1/sensors/tier-a/readings", start=START, end=END, limit=10_000
    )
    expected = _expected(tiered.readings, "tier-a", START, END)
    assert ref["readings"] == expected
    assert body["readings"] == expected  # no duplicates, nothing lost, the hot value won
    assert {r["ts"]: r for r in body["readings"]}[tiered.readings[0].ts_ms] == expected[0]
    assert any(r == {"ts": r["ts"], "temp": 99.5, "hum": 1} for r in body["readings"])
    assert body["count"] == len(expected) and body["next_cursor"] is None
    assert body["tiers"] == _tiers(START, END)
    assert headers["X-Cold-Objects"] == "4"  # A0, A1, A3, A4; A2 is complete in DynamoDB
    # Without an archive, the response and headers are as before.
    assert "tiers" not in ref and "X-Cold-Objects" not in ref_headers
    assert set(body) - set(ref) == {"tiers"}

    # Descending and projected too.
    _, desc = await tiered.archived.get(
        "/v1/sensors/tier-a/readings",
        start=START,
        end=END,
        limit=10_000,
        order="desc",
        fields="hum",
    )
    _, ref_desc = await tiered.reference.get(
        "/v1/sensors/tier-a/readings",
        start=START,
        end=END,
        limit=10_000,
        order="desc",
        fields="hum",
    )
    assert desc["readings"] == ref_desc["readings"]
    assert [t["bucket_start"] for t in desc["tiers"]] == [
        t["bucket_start"] for t in reversed(_tiers(START, END))
    ]


@pytest.mark.parametrize(("order", "limit"), [("asc", 7), ("desc", 13), ("asc", 12)])
async def test_pages_across_the_boundary_give_every_reading_exactly_once(
    tiered: Tiered, order: str, limit: int
) -> None:
    expected = _expected(tiered.readings, "tier-a", START, END)
    if order == "desc":
        expected.reverse()
    seen: list[dict[str, Any]] = []
    covered: set[int] = set()
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"start": START, "end": END, "order": order, "limit": limit}
        if cursor:
            params["cursor"] = cursor
        _, body = await tiered.archived.get("/v1/sensors/tier-a/readings", **params)
        pages += 1
        assert len(body["readings"]) <= limit
        seen += body["readings"]
        tiers = {t["bucket_start"]: t["tier"] for t in body["tiers"]}
        for r in body["readings"]:  # every reading's bucket is in the page's tiers
            assert r["ts"] - r["ts"] % BUCKET_MS in tiers
        covered |= set(tiers)
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == expected
    assert pages >= len(expected) // limit
    assert {A0, A1, A2, A3, A4} <= covered


async def test_partial_buckets_and_a_range_inside_the_archive(tiered: Tiered) -> None:
    lo, hi = A1 + HOUR_MS + 17, A3 + 2 * HOUR_MS  # starts inside the half-deleted bucket
    _, body = await tiered.archived.get("/v1/sensors/tier-a/readings", start=lo, end=hi)
    assert body["readings"] == _expected(tiered.readings, "tier-a", lo, hi)
    assert body["tiers"] == _tiers(lo, hi)
    # Inside A2, which DynamoDB still holds completely: no S3 read.
    headers, body = await tiered.archived.get(
        "/v1/sensors/tier-a/readings", start=A2 + 1, end=A2 + HOUR_MS
    )
    assert body["readings"] == _expected(tiered.readings, "tier-a", A2 + 1, A2 + HOUR_MS)
    assert body["tiers"] == [{"bucket_start": A2, "tier": "hot"}]
    assert headers["X-Cold-Objects"] == "0"


def _same_metrics(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got.keys() == want.keys()
    for name, aggs in want.items():
        assert got[name].keys() == aggs.keys()
        for agg, values in aggs.items():
            for g, w in zip(got[name][agg], values, strict=True):
                if w is None:
                    assert g is None, (name, agg)
                else:
                    assert g == pytest.approx(w, rel=1e-12), (name, agg)


@pytest.mark.parametrize(("step", "start"), [("1h", START), ("3h", START), ("1h", A1 + HOUR_MS)])
async def test_series_across_the_boundary_equals_a_table_that_never_expired(
    tiered: Tiered, step: str, start: int
) -> None:
    params = {"start": start, "end": END, "step": step, "agg": AGGS}
    headers, body = await tiered.archived.get("/v1/sensors/tier-a/series", **params)
    _, ref = await tiered.reference.get("/v1/sensors/tier-a/series", **params)
    assert body["ts"] == ref["ts"]
    _same_metrics(body["metrics"], ref["metrics"])
    counts = body["metrics"]["temp"]["count"]
    assert sum(counts) == len(_expected(tiered.readings, "tier-a", body["ts"][0], END))
    assert body["tiers"] == _tiers(body["ts"][0], END)
    assert "tiers" not in ref
    cold = [t for t in body["tiers"] if t["tier"] != "hot"]
    assert int(headers["X-Cold-Objects"]) == len(cold) == (4 if start == START else 3)

    multi = {**params, "sensors": "tier-a,tier-b"}
    _, body = await tiered.archived.get("/v1/series", **multi)
    _, ref = await tiered.reference.get("/v1/series", **multi)
    for got, want in zip(body["sensors"], ref["sensors"], strict=True):
        assert got["sensor_id"] == want["sensor_id"]
        _same_metrics(got["metrics"], want["metrics"])
        assert "tiers" not in want
    b_tiers = {t["bucket_start"]: t["tier"] for t in body["sensors"][1]["tiers"]}
    assert {b_tiers[b] for b in (A1, A2, A3, A4)} == {"cold"}
    assert math.isfinite(body["sensors"][1]["metrics"]["temp"]["avg"][-1] or 0.0)


def test_serve_takes_the_archive_options_of_iot_ingest_archive() -> None:
    from ingest.cli.main import build_parser
    from ingest.config import Config
    from queries.cli import _settings

    cfg = Config.model_validate({"table": "tbl", "region": "us-east-1"})
    argv = ["serve", "--table", "tbl", "--no-auth"]
    args = build_parser().parse_args(argv)
    plain = _settings(cfg, args, {})
    assert (plain.table, plain.region, plain.endpoint_url) == ("tbl", "us-east-1", None)
    assert (plain.s3_bucket, plain.s3_endpoint, plain.s3_prefix) == (None, None, None)
    s3 = ["--s3-bucket", "arch", "--s3-endpoint", "http://127.0.0.1:9", "--s3-prefix", "p"]
    settings = _settings(cfg, build_parser().parse_args(argv + s3), {})
    assert (settings.s3_bucket, settings.s3_endpoint, settings.s3_prefix) == (
        "arch",
        "http://127.0.0.1:9",
        "p",
    )
    with pytest.raises(ValueError, match="need s3_bucket"):
        ServeSettings(table="t", s3_endpoint="http://127.0.0.1:9")


async def test_an_unreadable_archive_object_is_a_clear_502(tiered: Tiered) -> None:
    env = tiered.env
    prefix = f"{env.store.prefix}/sensor_id=tier-a/"
    keys = [k async for k in env.store.keys(prefix)]
    key = next(k for k in keys if k.endswith(".parquet"))  # A0's object: the first bucket
    await env.store.put(key, b"not parquet", content_type="application/octet-stream")
    async with tiered.archived.session.get(
        tiered.archived.url + "/v1/sensors/tier-a/readings",
        params={"start": str(A0), "end": str(A0 + BUCKET_MS - 1)},
    ) as resp:
        body = await resp.json()
        assert resp.status == 502, body
        assert body["error"]["code"] == "archive_error"
        assert "re-run `iot-ingest archive`" in body["error"]["message"]
        assert resp.headers["X-Cold-Objects"] == "1"


async def test_every_dynamodb_call_of_a_tiered_read_goes_through_the_reader(
    archive_env: ArchiveEnv, moto_server: MotoServer
) -> None:
    """The marker Query too: its read units are reported, and it counts against the cap."""
    env = archive_env
    await env.put(make_readings())
    assert not (await env.archiver(now_ms=NOW_MS).run_once()).failed
    settings = {
        "table": env.dynamo.table,
        "endpoint_url": moto_server.endpoint_url,
        "s3_bucket": env.store.bucket,
        "s3_endpoint": moto_server.endpoint_url,
        "s3_prefix": env.store.prefix,
        **CREDS,
    }
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            RecordingClient(
                table=env.dynamo.table,
                aws=AwsSettings(region="us-east-1", endpoint_url=moto_server.endpoint_url, **CREDS),
            )
        )
        session = await stack.enter_async_context(aiohttp.ClientSession())
        servers = []
        for cap in (None, 1):
            reader = await TableReader.load(client)
            app = create_app(ServeSettings(**settings, max_calls_per_sensor=cap), reader=reader)
            servers.append(await stack.enter_async_context(ApiServer(app)))
        client.responses.clear()
        async with session.get(
            servers[0].url + "/v1/sensors/tier-a/readings",
            params={"start": str(START), "end": str(END), "limit": "10000"},
        ) as resp:
            assert resp.status == 200
            headers = resp.headers
        ops = [kwargs for _, kwargs in client.responses]
        assert int(headers["X-DynamoDB-Calls"]) == len(ops) > 1
        # Every response carries its consumed capacity: every call went through
        # TableReader.call (which asks for it), the marker Query included.
        assert all("ConsumedCapacity" in resp for resp in ops)
        units = sum(resp["ConsumedCapacity"]["CapacityUnits"] for resp in ops)
        assert float(headers["X-Read-Units"]) == pytest.approx(units, abs=1e-4)

        # A cap of one call: the marker Query is that call.
        client.responses.clear()
        async with session.get(
            servers[1].url + "/v1/sensors/tier-a/readings",
            params={"start": str(START), "end": str(END)},
        ) as resp:
            body = await resp.json()
            assert resp.status == 422, body
            assert body["error"]["code"] == "too_many_calls"
            assert resp.headers["X-DynamoDB-Calls"] == "1"
        assert len(client.responses) == 1


# Values a number string could bend: shortest-repr floats, a tiny one, integers above
# 2**53 (the archive holds float64: 2**60 exactly, 2**53 + 1 as 2**53), an integral float.
EXACT = {"sum": 0.1 + 0.2, "tiny": 1e-7, "big": 2**60, "odd": 2**53 + 1, "whole": 22.0}
# As the archive holds them, and as the hot tier gives back an integral float (an int).
ARCHIVED = {"big": float(2**60), "odd": float(2**53), "sum": 0.1 + 0.2, "tiny": 1e-7, "whole": 22}


async def _archived_cold(env: ArchiveEnv, sid: str) -> list[Reading]:
    """Readings of ``sid`` in bucket A0, archived, then deleted from DynamoDB (cold only)."""
    readings = [Reading(sid, A0 + 1_000 * (i + 1), dict(EXACT)) for i in range(3)]
    await env.put(readings)
    assert not (await env.archiver(now_ms=NOW_MS).run_once()).failed
    await _delete(env, readings)
    return readings


async def test_read_page_gives_archived_readings_as_readings_with_their_stored_numbers(
    archive_env: ArchiveEnv,
) -> None:
    env = archive_env
    readings = await _archived_cold(env, "tier-n")
    reader = TableReader(env.dynamo, env.layout, cold=env.store)
    page = await read_page(
        reader, "tier-n", A0, A0 + BUCKET_MS - 1, limit=10, stats=reader.new_stats()
    )
    assert page.tiers == [(A0, "cold")]
    assert page.items == [Reading("tier-n", r.ts_ms, ARCHIVED) for r in readings]
    for r in page.items:
        assert [(k, type(v)) for k, v in r.metrics.items()] == [
            (k, type(v)) for k, v in ARCHIVED.items()
        ]

    projected = await read_page(
        reader,
        "tier-n",
        A0,
        A0 + BUCKET_MS - 1,
        limit=10,
        fields=("whole", "sum"),
        stats=reader.new_stats(),
    )
    assert [r.metrics for r in projected.items] == [{"whole": 22, "sum": 0.1 + 0.2}] * 3


async def test_archived_numbers_come_out_of_the_api_exactly_as_stored(
    archive_env: ArchiveEnv, moto_server: MotoServer
) -> None:
    env = archive_env
    readings = await _archived_cold(env, "tier-n")
    settings = ServeSettings(
        table=env.dynamo.table,
        endpoint_url=moto_server.endpoint_url,
        s3_bucket=env.store.bucket,
        s3_endpoint=moto_server.endpoint_url,
        s3_prefix=env.store.prefix,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    async with ApiServer(create_app(settings)) as server, aiohttp.ClientSession() as session:
        url = server.url + "/v1/sensors/tier-n/readings"
        params = {"start": str(A0), "end": str(A0 + BUCKET_MS - 1)}
        async with session.get(url, params=params) as resp:
            assert resp.status == 200
            raw = await resp.read()
            assert resp.headers["X-Cold-Objects"] == "1"
        body = json.loads(raw)
        assert body["readings"] == [{"ts": r.ts_ms, **ARCHIVED} for r in readings]
        for got in body["readings"]:
            assert {k: type(v) for k, v in got.items()} == {
                "ts": int,
                **{k: type(v) for k, v in ARCHIVED.items()},
            }
        first = raw.split(b'"readings":[', 1)[1].split(b"}", 1)[0] + b"}"
        assert first == (
            b'{"ts":%d,"big":1.152921504606847e+18,"odd":9007199254740992.0,'
            b'"sum":0.30000000000000004,"tiny":1e-7,"whole":22}' % readings[0].ts_ms
        )

        # A series of one window over the bucket: sums and extremes of the exact values.
        series = {**params, "step": "3h", "agg": "sum,min,max,last"}
        async with session.get(server.url + "/v1/sensors/tier-n/series", params=series) as resp:
            assert resp.status == 200
            metrics = json.loads(await resp.read())["metrics"]
        for name, value in ARCHIVED.items():
            assert metrics[name]["sum"] == [float(value) * 3], name
            assert metrics[name]["min"] == metrics[name]["max"] == [float(value)], name
            assert metrics[name]["last"] == [float(value)], name


class _KeyRecordingClient(RecordingClient):
    """Also keeps the partition key each Query asked for."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.queried: list[str] = []

    async def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        if operation == "query":
            self.queried.append(kwargs["ExpressionAttributeValues"][":pk"]["S"])
        return await super().call(operation, **kwargs)


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ("/v1/sensors/tier-a/series", {"step": "3h", "agg": "avg"}),
        ("/v1/series", {"sensors": "tier-a", "step": "3h", "agg": "avg"}),
    ],
)
async def test_a_series_counts_and_caps_its_marker_query_like_every_other_read(
    archive_env: ArchiveEnv, moto_server: MotoServer, path: str, extra: dict[str, str]
) -> None:
    env = archive_env
    await env.put(make_readings())
    assert not (await env.archiver(now_ms=NOW_MS).run_once()).failed
    endpoint = moto_server.endpoint_url
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            _KeyRecordingClient(
                table=env.dynamo.table,
                aws=AwsSettings(
                    region="us-east-1",
                    endpoint_url=endpoint,
                    aws_access_key_id="test",
                    aws_secret_access_key="test",
                ),
            )
        )
        session = await stack.enter_async_context(aiohttp.ClientSession())
        urls = []
        for cap in (None, 1):
            settings = ServeSettings(
                table=env.dynamo.table,
                endpoint_url=endpoint,
                s3_bucket=env.store.bucket,
                s3_endpoint=endpoint,
                s3_prefix=env.store.prefix,
                aws_access_key_id="test",
                aws_secret_access_key="test",
                max_calls_per_sensor=cap,
            )
            app = create_app(settings, reader=await TableReader.load(client))
            urls.append((await stack.enter_async_context(ApiServer(app))).url + path)
        params = {"start": str(START), "end": str(END), **extra}

        client.responses.clear()
        client.queried.clear()
        async with session.get(urls[0], params=params) as resp:
            assert resp.status == 200, await resp.text()
            headers = resp.headers
        assert client.queried.count("#archive#tier-a") == 1
        assert int(headers["X-DynamoDB-Calls"]) == len(client.responses) > 1
        units = sum(r["ConsumedCapacity"]["CapacityUnits"] for _, r in client.responses)
        assert float(headers["X-Read-Units"]) == pytest.approx(units, abs=1e-4)

        client.responses.clear()
        client.queried.clear()
        async with session.get(urls[1], params=params) as resp:
            body = await resp.json()
            assert resp.status == 422, body
            assert body["error"]["code"] == "too_many_calls"
            assert resp.headers["X-DynamoDB-Calls"] == "1"
        assert client.queried == ["#archive#tier-a"]  # the one call the cap allows


async def test_closed_archived_buckets_are_cached_with_their_tiers(
    tiered: Tiered, moto_server: MotoServer
) -> None:
    """With the cache, the archived (and every other closed) bucket is read once, hot and
    cold merged: the next identical request makes no DynamoDB call and fetches no object,
    and answers the same, tiers included."""
    env = tiered.env
    endpoint = moto_server.endpoint_url
    settings = ServeSettings(
        table=env.dynamo.table,
        endpoint_url=endpoint,
        s3_bucket=env.store.bucket,
        s3_endpoint=endpoint,
        s3_prefix=env.store.prefix,
        cache_max_bytes=1 << 24,
        cache_late_allowance_ms=0,  # every bucket that ended is closed (no ingest here)
        **CREDS,
    )
    async with (
        ApiServer(create_app(settings)) as server,
        aiohttp.ClientSession() as session,
    ):
        cached = Server(server.url, session)
        end = NOW_MS - 1  # the buckets before the current one: all closed
        lo = START - START % BUCKET_MS  # pages keep only buckets they read from end to end
        for path, params in (
            ("/v1/sensors/tier-a/readings", {"start": lo, "end": end, "limit": 10_000}),
            ("/v1/sensors/tier-a/series", {"start": START, "end": end, "step": "1h", "agg": AGGS}),
            (
                "/v1/sensors/tier-b/readings",
                {"start": lo, "end": end, "order": "desc", "fields": "hum"},
            ),
        ):
            h1, first = await cached.get(path, **params)
            # The series shares the raw page's entries (no projection): no read at all.
            assert (float(h1["X-Read-Units"]) > 0) == ("readings" in path)
            h2, again = await cached.get(path, **params)
            assert again == first
            assert (h2["X-Read-Units"], h2["X-DynamoDB-Calls"], h2["X-Cold-Objects"]) == (
                "0",
                "0",
                "0",
            )
            _, plain = await tiered.archived.get(path, **params)
            if "readings" in path:
                assert first == plain
            else:
                assert first["tiers"] == plain["tiers"]
                assert first["metrics"]["temp"]["count"] == plain["metrics"]["temp"]["count"]
        assert "cold" in {t["tier"] for t in first["tiers"]}  # tier-b's archived buckets
        assert int(h1["X-Cold-Objects"]) > 0
