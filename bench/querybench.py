"""Query benchmark: latency and read units of dashboard queries over 1 h and 24 h of 1 Hz data.

Fills one sensor with ``hours`` of 1 Hz readings (5 metrics, one tag) in a
table on a real DynamoDB-API server (dynalite by default: it counts read
capacity like DynamoDB; moto reports one unit per call), then asks the HTTP
API, over real HTTP, for:

- the raw readings of the last hour and of the whole day (following cursors);
- the series of the last hour and of the day downsampled to 500 points.

Each request is repeated; the report gives the median latency and the read
units from the ``X-Read-Units`` header. Latency here measures the local
server (dynalite is far slower than DynamoDB), so the read units are the
figure that carries over to AWS.

Run: ``python -m bench.querybench [--target dynalite|moto] [--hours 24] [--repeat 3]
[--layout reading|packed|both]``: a ``packed`` table holds the same readings as sealed
15-minute windows (one set each, as the write stage seals them) and, once the rollup
pass has run over the filled hours (as ``iot-ingest table compact`` would), their
minute and hour rollups: a series whose step is whole minutes reads those.

**Dashboard refresh** (``--dashboard``): the dashboard's own request
(``/v1/series?sensors=…&start=now-24h&end=now&agg=avg,min,max&max_points=266``)
every ``--interval-s`` (5 s), while the sensor keeps sending at 1 Hz (the readings of
each interval are written before the refresh), against two servers on the same
table (hour buckets, 4 shards): one without the closed-bucket cache, one with it
(``--cache-mb``, a late-readings allowance of ``--allowance-s``: the ingest's
``max_past_ms`` plus its settle time). The report gives the read units and DynamoDB
calls of each refresh, with and without the cache; with it, after the first load only
the buckets that are not closed yet are read (the open one, and the previous one while
its end is less than the allowance ago).

``python -m bench.querybench --dashboard [--refreshes 6] [--interval-s 5]``: the
dashboard refresh figure (a ``reading`` table).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson

from bench.capacity import MeteredClient
from bench.servers import DynaliteServer, MotoServer
from ingest.aws.settings import AwsSettings
from ingest.core.errors import DynamoRetriable
from ingest.core.retry import Backoff
from ingest.storage.compaction import seal_log_items
from ingest.storage.dynamo import DynamoClient, put_all
from ingest.storage.items import Item
from ingest.storage.layout import Reading, TableLayout
from ingest.storage.rollpass import rollup_pass
from ingest.storage.table import create_table
from ingest.storage.windows import WindowScheme, seal
from queries.api.app import create_app
from queries.api.server import ApiServer
from queries.api.settings import ServeSettings

__all__ = ["KEY_ID", "SECRET", "SENSOR", "main", "run_dashboard_bench", "run_query_bench"]

KEY_ID, SECRET = "bench", "bench"
SENSOR = "bench-sensor-1"


def _reading(start_ms: int, i: int) -> Reading:
    metrics: dict[str, float | int] = {
        "temperature": 20 + (i % 600) / 60,
        "humidity": 45.5,
        "pressure": 1013.2,
        "voltage": 230.1,
        "current": 1.25 + (i % 10) / 100,
    }
    return Reading(SENSOR, start_ms + i * 1000, metrics, {"site": "bench"})


def _items(layout: TableLayout, start_ms: int, n: int) -> Sequence[Item]:
    """The table's items for ``n`` readings: one each, or sealed windows (``packed``, each
    window one set, as the write stage seals them)."""
    if layout.kind == "reading":
        return [layout.to_item(_reading(start_ms, i)) for i in range(n)]
    scheme = WindowScheme(layout)
    windows: dict[int, list[Reading]] = {}
    for i in range(n):
        r = _reading(start_ms, i)
        windows.setdefault(scheme.window_start(r.ts_ms), []).append(r)
    return [scheme.part_item(p) for rs in windows.values() for p in seal(scheme, rs, start_ms)]


async def _fill(client: DynamoClient, layout: TableLayout, start_ms: int, n: int) -> None:
    sem = asyncio.Semaphore(8)
    all_items = _items(layout, start_ms, n)

    async def batch(first: int) -> None:
        items = all_items[first : first + 25]
        backoff = Backoff(base_ms=50, cap_ms=2000)
        attempt = 0
        async with sem:
            while items:
                try:
                    items = await client.batch_write(items)
                except DynamoRetriable:  # a loaded local server: back off and resend
                    await asyncio.sleep(backoff.delay_s(attempt))
                    attempt += 1

    async with asyncio.TaskGroup() as tg:
        for first in range(0, len(all_items), 25):
            tg.create_task(batch(first))


async def _roll_up(client: DynamoClient, layout: TableLayout, start_ms: int, end_ms: int) -> str:
    """Write the windows' seal log (as the write stage does) and run the rollup pass over
    the filled hours, as ``iot-ingest table compact`` would once they closed."""
    scheme = WindowScheme(layout)
    log: list[Item] = []
    for w in range(start_ms, end_ms, layout.window_ms):
        log += seal_log_items(scheme, w, "bench", w + layout.window_ms + 61_000, [SENSOR])
    await put_all(client, log)
    settle_ms = 300_000
    t0 = time.perf_counter()
    metered = MeteredClient(client)
    report = await rollup_pass(
        metered,
        scheme,
        worker="bench",
        now_ms=end_ms + settle_ms + 1,
        lookback_ms=end_ms + settle_ms + 1 - start_ms,
        settle_ms=settle_ms,
    )
    per = max(1, report.readings)
    return (
        f"{report.summary()} in {time.perf_counter() - t0:.1f} s: "
        f"{metered.write_units} write units ({metered.write_units / per:.5f} a reading), "
        f"{metered.read_units:g} read units ({metered.read_units / per:.5f} a reading), "
        "by the item-size rules of bench.capacity"
    )


async def _timed(
    http: aiohttp.ClientSession, url: str, *, follow: bool
) -> tuple[float, float, int]:
    """(seconds, read units, items) for one request, following cursors when asked."""
    units = 0.0
    items = 0
    t0 = time.perf_counter()
    next_url: str | None = url
    while next_url:
        async with http.get(next_url) as r:
            body: dict[str, Any] = orjson.loads(await r.read())
            if r.status != 200:
                raise RuntimeError(f"{url}: HTTP {r.status}: {body}")
            units += float(r.headers.get("X-Read-Units", "0"))
        items += len(body.get("readings", body.get("ts", [])))  # readings, or series windows
        cursor = body.get("next_cursor")
        next_url = f"{url}&cursor={cursor}" if follow and cursor else None
    return time.perf_counter() - t0, units, items


async def _new_table(
    stack: contextlib.AsyncExitStack, endpoint: str, table: str, layout: TableLayout
) -> DynamoClient:
    """A client of a new table of ``layout`` at ``endpoint``, open on ``stack``."""
    client = await stack.enter_async_context(
        DynamoClient(
            table=table,
            aws=AwsSettings(
                region="us-east-1",
                endpoint_url=endpoint,
                aws_access_key_id=KEY_ID,
                aws_secret_access_key=SECRET,
            ),
        )
    )
    await create_table(client, layout)
    return client


async def run_query_bench(
    target: str, hours: int, repeat: int, layout_kind: str = "reading"
) -> list[dict[str, Any]]:
    """Fill a table of the layout, run the queries, return one result row per query."""
    server_cls = DynaliteServer if target == "dynalite" else MotoServer
    async with server_cls() as server, contextlib.AsyncExitStack() as stack:
        layout = TableLayout(kind=layout_kind)
        table = f"querybench-{layout_kind}-{int(time.time())}"
        client = await _new_table(stack, server.endpoint_url, table, layout)
        end_ms = (int(time.time()) // 3600) * 3_600_000
        start_ms = end_ms - hours * 3_600_000
        t0 = time.perf_counter()
        await _fill(client, layout, start_ms, hours * 3600)
        print(
            f"filled {hours * 3600} readings in {time.perf_counter() - t0:.1f} s", file=sys.stderr
        )
        if layout.kind == "packed":
            print(await _roll_up(client, layout, start_ms, end_ms), file=sys.stderr)
        settings = ServeSettings(
            table=table,
            endpoint_url=server.endpoint_url,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
        )
        api = await stack.enter_async_context(ApiServer(create_app(settings), port=0))
        base = f"{api.url}/v1/sensors/{SENSOR}"
        hour = f"start={end_ms - 3_600_000}&end={end_ms - 1}"
        day = f"start={start_ms}&end={end_ms - 1}"
        queries = [
            ("raw 1 h", f"{base}/readings?{hour}&limit=10000", True),
            ("series 1 h, 500 points", f"{base}/series?{hour}&max_points=500", False),
            (f"raw {hours} h (pages of 10,000)", f"{base}/readings?{day}&limit=10000", True),
            (f"series {hours} h, 500 points", f"{base}/series?{day}&max_points=500", False),
            (f"series {hours} h, 1 h step", f"{base}/series?{day}&step=1h", False),
        ]
        rows = []
        async with aiohttp.ClientSession() as http:
            for name, url, follow in queries:
                runs = [await _timed(http, url, follow=follow) for _ in range(repeat)]
                rows.append(
                    {
                        "query": name,
                        "latency_s": statistics.median(r[0] for r in runs),
                        "read_units": runs[-1][1],
                        "items": runs[-1][2],
                        "target": target,
                        "layout": layout_kind,
                    }
                )
        return rows


_HOUR_MS = 3_600_000


async def _refresh(http: aiohttp.ClientSession, url: str) -> tuple[float, int, float, int]:
    """(read units, DynamoDB calls, seconds, retries) of one dashboard refresh; a 503 (the
    local server dropped a connection) is retried after a second, as the page would on its
    next refresh, up to 3 times."""
    t0 = time.perf_counter()
    for attempt in range(4):
        async with http.get(url) as r:
            body = await r.read()
            if r.status == 503 and attempt < 3:
                await asyncio.sleep(1.0)
                continue
            if r.status != 200:
                raise RuntimeError(f"{url}: HTTP {r.status}: {body[:200]!r}")
            return (
                float(r.headers["X-Read-Units"]),
                int(r.headers["X-DynamoDB-Calls"]),
                time.perf_counter() - t0,
                attempt,
            )
    raise AssertionError("unreachable")


async def run_dashboard_bench(
    target: str,
    *,
    hours: int = 24,
    refreshes: int = 6,
    interval_s: float = 5.0,
    cache_mb: float = 64.0,
    allowance_s: float = 1020.0,
) -> list[dict[str, Any]]:
    """Fill ``hours`` of 1 Hz readings up to now, then refresh the dashboard's 24 h chart
    ``refreshes`` times, every ``interval_s``, on a server without and one with the cache;
    one row per refresh."""
    server_cls = DynaliteServer if target == "dynalite" else MotoServer
    async with server_cls() as server, contextlib.AsyncExitStack() as stack:
        layout = TableLayout(bucket_ms=_HOUR_MS, shards=4)
        table = f"dashbench-{int(time.time())}"
        client = await _new_table(stack, server.endpoint_url, table, layout)
        now_ms = time.time_ns() // 1_000_000
        first_ms = now_ms - now_ms % 1000 - hours * 3_600_000
        t0 = time.perf_counter()
        written = hours * 3600
        await _fill(client, layout, first_ms, written)
        print(f"filled {written} readings in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        urls = []
        for cache_bytes in (0, int(cache_mb * 1024 * 1024)):
            settings = ServeSettings(
                table=table,
                endpoint_url=server.endpoint_url,
                aws_access_key_id=KEY_ID,
                aws_secret_access_key=SECRET,
                cache_max_bytes=cache_bytes,
                cache_late_allowance_ms=int(allowance_s * 1000),
            )
            api = await stack.enter_async_context(ApiServer(create_app(settings), port=0))
            urls.append(
                f"{api.url}/v1/series?sensors={SENSOR}&start=now-{hours * 3600}s&end=now"
                "&agg=avg,min,max&max_points=266"
            )
        rows = []
        async with aiohttp.ClientSession() as http:
            for i in range(refreshes):
                if i:
                    await asyncio.sleep(interval_s)
                # The live sensor: its readings since the last refresh, then the refresh.
                upto = (time.time_ns() // 1_000_000 - first_ms) // 1000 + 1
                await _fill_range(client, layout, first_ms, written, upto)
                written = max(written, upto)
                plain = await _refresh(http, urls[0])
                cached = await _refresh(http, urls[1])
                rows.append(
                    {
                        "refresh": i + 1,
                        "units_without_cache": plain[0],
                        "calls_without_cache": plain[1],
                        "units_with_cache": cached[0],
                        "calls_with_cache": cached[1],
                        "latency_without_s": plain[2],
                        "latency_with_s": cached[2],
                        "retries": plain[3] + cached[3],
                        "target": target,
                    }
                )
        return rows


async def _fill_range(
    client: DynamoClient, layout: TableLayout, start_ms: int, first: int, upto: int
) -> None:
    items: list[Item] = [layout.to_item(_reading(start_ms, i)) for i in range(first, upto)]
    while items:
        items = await client.batch_write(items[:25]) + items[25:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--target", choices=["dynalite", "moto"], default="dynalite")
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON object per query")
    parser.add_argument(
        "--layout",
        choices=["reading", "packed", "both"],
        default="reading",
        help="table layout (both: one table each, the same readings)",
    )
    parser.add_argument(
        "--dashboard",
        action="store_true",
        help="the dashboard refresh figure: a 24 h chart refreshed every --interval-s, read "
        "units with and without the closed-bucket cache",
    )
    parser.add_argument("--refreshes", type=int, default=6)
    parser.add_argument("--interval-s", type=float, default=5.0)
    parser.add_argument("--cache-mb", type=float, default=64.0)
    parser.add_argument(
        "--allowance-s",
        type=float,
        default=1020.0,
        help="late-readings allowance of the cache: the ingest's max_past_ms plus its settle "
        "time (default 1020: max_past_ms of 10 minutes and the default settle time, 380 s, "
        "rounded up to 7 minutes)",
    )
    args = parser.parse_args(argv)
    if args.dashboard:
        return _dashboard_main(args)
    kinds = ["reading", "packed"] if args.layout == "both" else [args.layout]
    rows = [
        row
        for kind in kinds
        for row in asyncio.run(run_query_bench(args.target, args.hours, args.repeat, kind))
    ]
    if args.json:
        for row in rows:
            print(orjson.dumps(row).decode())
    else:
        print(f"| query ({args.target}) | layout | items | median latency | read units |")
        print("| --- | --- | ---: | ---: | ---: |")
        for r in rows:
            print(
                f"| {r['query']} | {r['layout']} | {r['items']} | {r['latency_s']:.2f} s "
                f"| {r['read_units']:g} |"
            )
    return 0


def _dashboard_main(args: argparse.Namespace) -> int:
    rows = asyncio.run(
        run_dashboard_bench(
            args.target,
            hours=args.hours,
            refreshes=args.refreshes,
            interval_s=args.interval_s,
            cache_mb=args.cache_mb,
            allowance_s=args.allowance_s,
        )
    )
    if args.json:
        for row in rows:
            print(orjson.dumps(row).decode())
        return 0
    print(
        f"| refresh ({args.target}, {args.hours} h, every {args.interval_s:g} s) "
        "| read units, no cache | calls | read units, cache | calls |"
    )
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['refresh']} | {r['units_without_cache']:g} | {r['calls_without_cache']} "
            f"| {r['units_with_cache']:g} | {r['calls_with_cache']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
