"""Cursors as an attack surface: forged, tampered or foreign cursors are a 400 naming
``cursor`` and cost no DynamoDB call; legal paging is unchanged (test_readings.py).
A property-based test sends any cursor string (``CURSOR_FUZZ_EXAMPLES``, 150 by default).

The app runs on a loopback port against moto, its DynamoDB client recording every
response, so the tests count the calls DynamoDB saw, not only what the app reports.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.storage.layout import REGISTRY_PARTITIONS, Reading, TableLayout
from queries.api.cursor import CursorCodec, fingerprint
from tests.queries.harness import Api, RecordingClient, TestTable, ms_now


@pytest.fixture
def dynamodb_endpoint(moto_server: object) -> str:
    """One DynamoDB-API server is enough: the cursor checks are under test."""
    return moto_server.endpoint_url  # type: ignore[attr-defined, no-any-return]


def _calls(api: Api) -> int:
    client = api.reader.client
    assert isinstance(client, RecordingClient)
    return len(client.responses)


async def _refused(api: Api, path: str, **params: Any) -> dict[str, Any]:
    """GET ``path``: it must be a 400 naming ``cursor`` that cost no DynamoDB call."""
    before = _calls(api)
    status, headers, body = await api.get(path, **params)
    assert status == 400, (params.get("cursor"), status, body)
    assert body["error"]["code"] == "bad_parameter"
    assert body["error"]["parameter"] == "cursor"
    assert headers["X-DynamoDB-Calls"] == "0"
    assert _calls(api) == before
    return body


# -- the sensor list's cursor ---------------------------------------------------


KEY = b"cursor-test-key-" * 2
"""The servers' cursor key where a test signs cursors itself (as if the key leaked)."""
LEAKED = CursorCodec((KEY,))


def _sensors_cursor(position: dict[str, Any]) -> str:
    return LEAKED.encode("sensors", fingerprint("sensors"), position)


def _raw(doc: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(doc)).rstrip(b"=").decode()


async def test_every_malformed_sensor_list_cursor_is_a_400_naming_cursor(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    table = await make_table()
    readings = [Reading(f"sl-{i:02d}", ms_now() - 1000, {"v": i}) for i in range(12)]
    await table.register(readings)
    api = await serve_api(table, client_cls=RecordingClient, cursor_keys=(KEY,))
    # A legal first page, so the server is known to answer this endpoint.
    status, _, page = await api.get("/v1/sensors", limit=5)
    assert status == 200
    assert page["next_cursor"] is not None

    bad_positions: list[dict[str, Any]] = [
        {"p": REGISTRY_PARTITIONS, "s": "1"},  # one past the last partition: was a 500
        {"p": REGISTRY_PARTITIONS + 5, "s": "1"},
        {"p": -1, "s": "1"},
        {"p": True, "s": "1"},
        {"p": 1.5, "s": "1"},
        {"p": "1", "s": "1"},
        {"p": 0, "s": "-1"},
        {"p": 0, "s": "x"},
        {"p": 0, "s": "1e5"},
        {"p": 0, "s": str(2**112)},  # registry sort keys are 112-bit hashes
        {"p": 0, "s": "9" * 400},
        {"p": 0, "s": 5},
        {"p": 0},
        {"s": "1"},
    ]
    for position in bad_positions:
        await _refused(api, "/v1/sensors", cursor=_sensors_cursor(position))
    for raw in ("", "x", "%%%", "a" * 5000, _raw([1, 2]), _raw({"v": 1}), "é"):
        if raw:
            await _refused(api, "/v1/sensors", cursor=raw)


# -- the readings cursor: authenticated ---------------------------------------------

DAY_MS = 86_400_000
YEAR_MS = 365 * DAY_MS
# 30-day buckets, one shard: a cursor reaching 50 years back names ~600 partitions, so the
# attack (before the fix: one Query each) stays a few seconds on moto.
WIDE = TableLayout(bucket_ms=30 * DAY_MS, shards=1, retention_days=3650)


def _parts(cursor: str) -> tuple[dict[str, Any], str | None]:
    """A cursor's JSON document, and its authentication tag if it has one."""
    payload, _, tag = cursor.partition(".")
    doc = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert isinstance(doc, dict)
    return doc, tag or None


def _forge(cursor: str, *, keep_tag: bool, **changes: Any) -> str:
    """The cursor with fields of its document changed (the tag kept as it was, or dropped)."""
    doc, tag = _parts(cursor)
    forged = _raw({**doc, **changes})
    return f"{forged}.{tag}" if keep_tag and tag else forged


async def _first_page(api: Api, sensor: str, **params: Any) -> dict[str, Any]:
    status, _, body = await api.get(f"/v1/sensors/{sensor}/readings", **params)
    assert status == 200, body
    assert body["next_cursor"] is not None
    return body  # type: ignore[no-any-return]


async def _wide_table(make_table: Callable[..., Awaitable[TestTable]]) -> tuple[TestTable, int]:
    table = await make_table(WIDE)
    now = ms_now()
    await table.put([Reading("atk-1", now - 60_000 * i, {"v": i}) for i in range(30)])
    return table, now


async def test_a_forged_fifty_year_cursor_is_refused_before_any_read(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    table, now = await _wide_table(make_table)
    api = await serve_api(table, client_cls=RecordingClient)
    start, end = now - 3_600_000, now
    page = await _first_page(api, "atk-1", start=start, end=end, limit=5)
    path = "/v1/sensors/atk-1/readings"
    fifty_years = {"s": end - 50 * YEAR_MS, "n": end - 50 * YEAR_MS, "e": end}
    for keep_tag in (False, True):  # no tag at all, or the legal cursor's tag kept
        forged = _forge(page["next_cursor"], keep_tag=keep_tag, **fifty_years)
        await _refused(api, path, start=start, end=end, limit=5, cursor=forged)
        # ... whatever the rest of the request says.
        await _refused(api, path, start=start, end=end, limit=10_000, cursor=forged)
        await _refused(api, path, limit=5, cursor=forged)


async def test_a_cursor_with_a_tampered_position_is_refused(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    table, now = await _wide_table(make_table)
    api = await serve_api(table, client_cls=RecordingClient)
    start, end = now - 3_600_000, now
    page = await _first_page(api, "atk-1", start=start, end=end, limit=5)
    doc, _ = _parts(page["next_cursor"])
    path = "/v1/sensors/atk-1/readings"
    # Inside the query's own range, but not where the server said the next page starts:
    # back to the start (pages repeated) or forward (readings skipped).
    for change in ({"n": start}, {"n": doc["n"] + 60_000}, {"n": doc["n"] - 1}, {"e": end - 1}):
        tampered = _forge(page["next_cursor"], keep_tag=True, **change)
        await _refused(api, path, start=start, end=end, limit=5, cursor=tampered)
    # Bytes flipped in the tag itself.
    cursor: str = page["next_cursor"]
    flipped = cursor[:-2] + ("A" if cursor[-2] != "A" else "B") + cursor[-1]
    await _refused(api, path, start=start, end=end, limit=5, cursor=flipped)


async def test_a_cursor_of_another_server_key_is_refused_and_a_shared_key_pages_on(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    table, now = await _wide_table(make_table)
    start, end = now - 3_600_000, now
    params = {"start": start, "end": end, "limit": 7}
    path = "/v1/sensors/atk-1/readings"
    # Two servers with their own random key each (the default): a cursor of one is
    # refused by the other, as after a restart.
    one = await serve_api(table, client_cls=RecordingClient)
    other = await serve_api(table, client_cls=RecordingClient)
    page = await _first_page(one, "atk-1", **params)
    await _refused(other, path, **params, cursor=page["next_cursor"])

    # Replicas configured with one key (behind a load balancer) accept each other's cursors
    # and a paging session alternating between them reads every reading exactly once.
    key = b"k" * 32
    replicas = [
        await serve_api(table, client_cls=RecordingClient, cursor_keys=(key,)) for _ in range(2)
    ]
    seen: list[int] = []
    cursor = None
    for i in range(100):
        status, _, body = await replicas[i % 2].get(path, **params, cursor=cursor)
        assert status == 200, body
        seen += [r["ts"] for r in body["readings"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(now - 60_000 * i for i in range(30) if now - 60_000 * i >= start)
    await _refused(one, path, **params, cursor=page["next_cursor"] + "x")


async def test_a_cursor_of_another_query_is_refused(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    table, now = await _wide_table(make_table)
    await table.put([Reading("atk-2", now - 60_000 * i, {"v": i}) for i in range(30)])
    api = await serve_api(table, client_cls=RecordingClient)
    start, end = now - 3_600_000, now
    page = await _first_page(api, "atk-1", start=start, end=end, limit=5)
    cursor = page["next_cursor"]
    await _refused(api, "/v1/sensors/atk-2/readings", start=start, end=end, limit=5, cursor=cursor)
    await _refused(api, "/v1/sensors/atk-1/readings", start=start - 1, end=end, cursor=cursor)
    await _refused(api, "/v1/sensors/atk-1/readings", start=start, end=end + 1, cursor=cursor)
    await _refused(api, "/v1/sensors/atk-1/readings", end=end, cursor=cursor)
    await _refused(
        api, "/v1/sensors/atk-1/readings", start=start, end=end, order="desc", cursor=cursor
    )
    # A readings cursor is no sensor-list cursor, and the other way round.
    await _refused(api, "/v1/sensors", cursor=cursor)
    status, _, sensors = await api.get("/v1/sensors", limit=1)
    assert status == 200
    if sensors["next_cursor"]:
        await _refused(
            api, "/v1/sensors/atk-1/readings", start=start, end=end, cursor=sensors["next_cursor"]
        )


# -- the readings cursor: its position is checked against the request ---------------


async def test_a_signed_cursor_can_never_widen_its_request(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    """Even with the server's key (leaked), a cursor names only a range the request itself
    could have named: no extra DynamoDB call however far the position points."""
    table, now = await _wide_table(make_table)
    api = await serve_api(table, client_cls=RecordingClient, cursor_keys=(KEY,))
    path = "/v1/sensors/atk-1/readings"
    start, end = now - 3_600_000, now

    def signed(params: dict[str, Any], **position: Any) -> str:
        fp = fingerprint("readings", "atk-1", params.get("start", ""), params.get("end", ""), "asc")
        return LEAKED.encode("readings", fp, position)

    fixed = {"start": start, "end": end, "limit": 5}
    # The legal cursor is accepted, so the refusals below are about the positions.
    status, _, body = await api.get(path, **fixed, cursor=signed(fixed, s=start, e=end, n=start))
    assert status == 200, body
    assert body["count"] == 5
    bad_positions: list[tuple[dict[str, Any], dict[str, Any]]] = [
        # start and end given: the cursor's range must be exactly theirs.
        (fixed, {"s": end - 50 * YEAR_MS, "e": end, "n": end - 50 * YEAR_MS}),
        (fixed, {"s": start, "e": end + 50 * YEAR_MS, "n": end}),
        (fixed, {"s": start - 1, "e": end, "n": start}),
        (fixed, {"s": start, "e": end, "n": end + 1}),
        (fixed, {"s": start, "e": end, "n": start - 1}),
        (fixed, {"s": start, "e": end, "n": True}),
        (fixed, {"s": start, "e": end, "n": float(start)}),
        (fixed, {"s": start, "e": end, "n": str(start)}),
        (fixed, {"s": start, "e": end}),
        # end defaults to now: the cursor's end was "now" when the first page was read.
        ({"start": start}, {"s": start, "e": now + 50 * YEAR_MS, "n": now}),
        ({"start": start}, {"s": start, "e": now - 50 * YEAR_MS, "n": now - 50 * YEAR_MS}),
        # start defaults to an hour before end.
        ({"end": end}, {"s": end - 50 * YEAR_MS, "e": end, "n": end - 50 * YEAR_MS}),
        ({}, {"s": now - 50 * YEAR_MS, "e": now, "n": now - 50 * YEAR_MS}),
        ({}, {"s": now + 50 * YEAR_MS - 3_600_000, "e": now + 50 * YEAR_MS, "n": now}),
    ]
    for params, position in bad_positions:
        body = await _refused(api, path, **params, cursor=signed(params, **position))
        assert "outside" in body["error"]["message"] or "not a position" in body["error"]["message"]


async def test_paging_with_a_moving_end_reads_each_reading_once(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    """``end`` (and ``start``) left to their defaults: the cursor keeps the first page's range
    while "now" moves on, and the position check accepts it."""
    table, now = await _wide_table(make_table)
    api = await serve_api(table, client_cls=RecordingClient)
    expected = sorted(now - 60_000 * i for i in range(30))
    for params in ({}, {"start": now - 3_600_000}, {"end": now}):
        seen: list[int] = []
        cursor = None
        for _ in range(20):
            status, _, body = await api.get(
                "/v1/sensors/atk-1/readings", **params, limit=4, cursor=cursor
            )
            assert status == 200, (params, body)
            seen += [r["ts"] for r in body["readings"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == expected, params


# -- any cursor string: a 200 with exact paging, or a 400 ----------------------------


@dataclass
class Paged:
    """A served table and the legal pages of one readings query and of the sensor list."""

    api: Api
    params: dict[str, Any]
    pages: dict[str, list[int]]  # readings cursor -> the timestamps of the page it opens
    sensor_pages: dict[str, list[str]]  # sensor-list cursor -> the ids of its page
    # ("" is no cursor: the first page)


@pytest_asyncio.fixture
async def paged(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> Paged:
    table = await make_table()
    now = ms_now()
    readings = [Reading("prop-1", now - 60_000 * i, {"v": i}) for i in range(30)]
    await table.put(readings)
    await table.register([Reading(f"prop-{i}", now, {"v": i}) for i in range(2, 14)])
    api = await serve_api(table, client_cls=RecordingClient)
    params = {"start": now - 3_600_000, "end": now, "limit": 4}
    pages: dict[str, list[int]] = {}
    cursor: str | None = None
    while True:
        status, _, body = await api.get("/v1/sensors/prop-1/readings", **params, cursor=cursor)
        assert status == 200
        pages[cursor or ""] = [r["ts"] for r in body["readings"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    sensor_pages: dict[str, list[str]] = {}
    while True:
        status, _, body = await api.get("/v1/sensors", limit=3, cursor=cursor)
        assert status == 200
        sensor_pages[cursor or ""] = [s["sensor_id"] for s in body["sensors"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(pages) == 8 and len(sensor_pages) >= 4
    return Paged(api, params, pages, sensor_pages)


_B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)
_json_docs = st.dictionaries(
    st.sampled_from(["v", "k", "q", "s", "e", "n", "p"]) | st.text(max_size=4),
    _json_values,
    max_size=8,
)


def _mutations(real: list[str]) -> st.SearchStrategy[str]:
    """Real cursors, changed: a character replaced, inserted or removed, cut, extended,
    another cursor's tag, a document re-encoded with new fields and the old tag."""

    @st.composite
    def mutated(draw: st.DrawFn) -> str:
        cursor = draw(st.sampled_from(real))
        payload, _, tag = cursor.partition(".")
        how = draw(st.integers(0, 6))
        i = draw(st.integers(0, len(cursor) - 1))
        char = draw(st.sampled_from(_B64_CHARS + ".=%+/ é\x00"))
        if how == 0:
            return cursor[:i] + char + cursor[i + 1 :]
        if how == 1:
            return cursor[:i] + char + cursor[i:]
        if how == 2:
            return cursor[:i] + cursor[i + 1 :]
        if how == 3:
            return cursor[:i]
        if how == 4:
            return cursor + draw(st.text(_B64_CHARS + "=.", min_size=1, max_size=4))
        if how == 5:
            other = draw(st.sampled_from(real))
            return payload + "." + other.partition(".")[2]
        doc, _ = _parts(cursor)
        changes = draw(_json_docs)
        return _raw({**doc, **changes}) + "." + tag

    return mutated()


def _any_cursor(real: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(real),
        _mutations(real),
        st.text(max_size=600),
        st.binary(max_size=300).map(lambda b: base64.urlsafe_b64encode(b).decode()),
        _json_docs.map(_raw),
        st.tuples(_json_docs, st.binary(min_size=16, max_size=16)).map(
            lambda d: _raw(d[0]) + "." + base64.urlsafe_b64encode(d[1]).rstrip(b"=").decode()
        ),
    )


@settings(
    max_examples=int(os.environ.get("CURSOR_FUZZ_EXAMPLES", "150")),
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_any_cursor_string_is_a_200_with_exact_paging_or_a_400(
    paged: Paged, data: st.DataObject
) -> None:
    """The property: whatever the cursor string, the answer is the page the server issued
    that cursor for, or a 400 naming ``cursor`` that read nothing: never a 5xx, never a
    page of a cursor the server did not issue."""
    api = paged.api
    pages: dict[str, list[Any]]
    if data.draw(st.booleans(), label="readings"):
        path, params, pages = "/v1/sensors/prop-1/readings", paged.params, dict(paged.pages)
    else:
        path, params, pages = "/v1/sensors", {"limit": 3}, dict(paged.sensor_pages)
    cursor = data.draw(_any_cursor([c for c in pages if c]), label="cursor")
    query = {k: str(v) for k, v in {**params, "cursor": cursor}.items()}
    before = _calls(api)
    async with api.session.get(api.url + path, params=query) as resp:
        status, headers, body = resp.status, resp.headers, await resp.json()
    if cursor in pages:
        assert status == 200, body
        got = body["readings"] if "readings" in body else body["sensors"]
        ids = [r["ts"] if "ts" in r else r["sensor_id"] for r in got]
        assert ids == pages[cursor]
    else:
        assert status == 400, (cursor, status, body)
        assert body["error"]["parameter"] == "cursor"
        assert headers["X-DynamoDB-Calls"] == "0"
        assert _calls(api) == before
