"""Rollups of a packed table: bins exact against a brute force, and the rollup pass on
moto and dynalite (found by the seal log, idempotent, a late set rolled up again, the
day's hour bins once the day has closed)."""

from __future__ import annotations

import math
import time
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.aws.settings import AwsSettings
from ingest.storage.compaction import seal_log_items
from ingest.storage.dynamo import DynamoClient, put_all
from ingest.storage.layout import Reading, TableLayout, rollup_pk
from ingest.storage.packed import PackedDecodeError, encode_window
from ingest.storage.rollpass import RollupReport, rollup_pass
from ingest.storage.rollups import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    Bins,
    bins_of_readings,
    combine,
    decode_bins,
    encode_bins,
    parse_rollup_item,
)
from ingest.storage.table import create_table
from ingest.storage.windows import WindowScheme, merge_parts, seal
from tests.ingest.harness import AWS

LAYOUT = TableLayout(kind="packed", bucket_ms=HOUR_MS, window_ms=900_000, groups=4)
SCHEME = WindowScheme(LAYOUT)
T0 = 1_750_000_000_000 - 1_750_000_000_000 % DAY_MS


def _exact(values: list[float | int]) -> Fraction:
    """The exact sum of the values as the JSON wrote them (shortest repr)."""
    return sum(
        (Fraction(repr(v)) if isinstance(v, float) else Fraction(v) for v in values), Fraction(0)
    )


def _sum_of(b: Bins, i: int) -> Fraction | float:
    return Fraction(b.sum_k[i], 10 ** b.scale[i]) if b.scale[i] >= 0 else float(b.fsum[i])


def _brute(
    readings: list[Reading], name: str, step: int
) -> dict[int, tuple[int, float, float, float, float, list[float | int]]]:
    out: dict[int, list[tuple[int, float | int]]] = {}
    for r in sorted(readings, key=lambda r: r.ts_ms):
        if name in r.metrics:
            out.setdefault(r.ts_ms - r.ts_ms % step, []).append((r.ts_ms, r.metrics[name]))
    return {
        start: (
            len(vs),
            min(v for _, v in vs),
            max(v for _, v in vs),
            vs[0][1],
            vs[-1][1],
            [v for _, v in vs],
        )
        for start, vs in out.items()
    }


def _check(readings: list[Reading], bins: dict[str, Bins], step: int) -> None:
    names = {n for r in readings for n in r.metrics}
    assert set(bins) == names
    for name in names:
        want = _brute(readings, name, step)
        b = bins[name]
        assert b.start.tolist() == sorted(want)
        for i, start in enumerate(b.start.tolist()):
            count, lo, hi, first, last, values = want[start]
            assert (int(b.count[i]), b.min[i], b.max[i], b.first[i], b.last[i]) == (
                count,
                lo,
                hi,
                first,
                last,
            )
            got = _sum_of(b, i)
            if isinstance(got, Fraction):
                assert got == _exact(values), (name, start)
            else:
                assert got == math.fsum(float(v) for v in values), (name, start)


decimal2 = st.integers(-(10**6), 10**6).map(lambda k: k / 100)
values = st.one_of(decimal2, st.integers(-(2**40), 2**40), st.floats(-1e6, 1e6, allow_nan=False))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3 * HOUR_MS - 1), st.sampled_from(["a", "b"]), values),
        min_size=1,
        max_size=300,
    ),
    st.booleans(),
)
def test_bins_are_exact_and_minutes_combine_into_the_hours_bit_for_bit(
    raw: list[tuple[int, str, float | int]], one_type: bool
) -> None:
    by_ts: dict[int, Reading] = {}
    for ts, name, v in raw:  # the last write of a timestamp wins, whole
        by_ts[T0 + ts] = Reading("s", T0 + ts, {name: round(float(v), 2) if one_type else v})
    readings = list(by_ts.values())
    minutes = bins_of_readings(readings, MINUTE_MS)
    _check(readings, minutes, MINUTE_MS)
    hours = bins_of_readings(readings, HOUR_MS)
    _check(readings, hours, HOUR_MS)
    for name, b in minutes.items():
        h, c = hours[name], combine(b, HOUR_MS)
        assert (c.start.tolist(), c.count.tolist(), c.min.tolist(), c.max.tolist()) == (
            h.start.tolist(),
            h.count.tolist(),
            h.min.tolist(),
            h.max.tolist(),
        )
        assert (c.first.tolist(), c.last.tolist()) == (h.first.tolist(), h.last.tolist())
        for i in range(len(h)):
            if h.scale[i] >= 0 and c.scale[i] >= 0:
                assert _sum_of(c, i) == _sum_of(h, i)  # exact: the same value
            else:
                assert math.isclose(
                    float(_sum_of(c, i)), float(_sum_of(h, i)), rel_tol=1e-9, abs_tol=1e-6
                )
    back = decode_bins(encode_bins("s", minutes))
    for name, b in minutes.items():
        got = back[name]
        assert got.start.tolist() == b.start.tolist() and got.count.tolist() == b.count.tolist()
        assert [got.min.tolist(), got.max.tolist(), got.first.tolist(), got.last.tolist()] == [
            b.min.tolist(),
            b.max.tolist(),
            b.first.tolist(),
            b.last.tolist(),
        ]
        assert [_sum_of(got, i) for i in range(len(b))] == [_sum_of(b, i) for i in range(len(b))]


def test_two_decimal_values_sum_exactly_where_floats_would_not() -> None:
    readings = [Reading("s", T0 + i, {"v": 0.1}) for i in range(10)]
    [b] = bins_of_readings(readings, MINUTE_MS).values()
    assert (b.sum_k, b.scale) == ([10], [1])  # 1.0 exactly; float addition gives 0.9999999999999999
    assert b.sums().tolist() == [1.0] and sum(0.1 for _ in range(10)) != 1.0


def test_minute_bins_of_a_1hz_sensor_take_a_fraction_of_a_byte_per_reading() -> None:
    readings = [
        Reading("s", T0 + i * 1000, {"t": round(20 + math.sin(i / 600) * 5, 2), "h": 40 + i % 7})
        for i in range(3600)
    ]
    blob = encode_bins("s", bins_of_readings(readings, MINUTE_MS))
    assert len(blob) < 0.5 * len(readings), len(blob)


async def _rollups(client: DynamoClient, sensor: str, step: int) -> dict[int, object]:
    resp = await client.call(
        "query",
        TableName=client.table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": rollup_pk(step, sensor)}},
        ConsistentRead=True,
    )
    return {int(i["sk"]["N"]): parse_rollup_item(i, sensor, step) for i in resp["Items"]}


async def test_the_pass_rolls_up_what_was_sealed_once_and_again_only_what_changed(
    dynamodb_endpoint: str, unique_name: str
) -> None:
    aws = AwsSettings(region="us-east-1", endpoint_url=dynamodb_endpoint, **AWS)
    now = int(time.time() * 1000)
    day = now - now % DAY_MS - DAY_MS  # yesterday, closed
    sensors = {"a": 10_000, "b": 60_000}  # a reading every 10 s, every minute
    readings = {
        s: [
            Reading(s, ts, {"v": round((ts // every) % 97 / 10, 1), "n": (ts // every) % 5})
            for ts in range(day + 22 * HOUR_MS, day + DAY_MS, every)
        ]
        for s, every in sensors.items()
    }

    async def seal_round(sensor: str, rs: list[Reading], round_ms: int, worker: str) -> None:
        by_window: dict[int, list[Reading]] = {}
        for r in rs:
            by_window.setdefault(SCHEME.window_start(r.ts_ms), []).append(r)
        items: list[dict[str, object]] = []
        for w, ws in by_window.items():
            items += [SCHEME.part_item(p) for p in seal(SCHEME, ws, round_ms)]
            items += seal_log_items(SCHEME, w, worker, round_ms, [sensor])
        await put_all(client, items)

    async def roll(at: int) -> RollupReport:
        return await rollup_pass(
            client, SCHEME, worker="r1", now_ms=at, lookback_ms=at - day, settle_ms=300_000
        )

    async with DynamoClient(table=unique_name, aws=aws) as client:
        await create_table(client, LAYOUT)
        for i, (s, rs) in enumerate(readings.items()):  # one round each: a log item each
            await seal_round(s, rs, day + DAY_MS + 61_000 + i, "w1")
        report = await roll(now)
        assert (report.sensor_hours, report.days) == (4, 2)
        assert report.readings == sum(len(rs) for rs in readings.values())
        for s, rs in readings.items():
            minutes = await _rollups(client, s, MINUTE_MS)
            assert sorted(minutes) == [day + 22 * HOUR_MS, day + 23 * HOUR_MS]
            for hour, item in minutes.items():
                _check([r for r in rs if hour <= r.ts_ms < hour + HOUR_MS], item.bins, MINUTE_MS)  # type: ignore[attr-defined]
            [(start, daily)] = (await _rollups(client, s, HOUR_MS)).items()
            assert start == day and daily.hours == 3 << 22  # type: ignore[attr-defined]
            _check(rs, daily.bins, HOUR_MS)  # type: ignore[attr-defined]

        again = await roll(now + 60_000)
        assert (again.sensor_hours, again.days, again.items_written) == (0, 0, 0)

        # A late reading and a corrected value of "a" in hour 23, sealed as another set.
        late = [
            Reading("a", day + 23 * HOUR_MS + 5, {"v": 7.5}),
            Reading("a", day + 23 * HOUR_MS + 10_000, {"v": -1.0, "n": 9}),
        ]
        await seal_round("a", late, now + 1_000, "w2")
        third = await roll(now + 120_000)
        assert (third.sensor_hours, third.days) == (1, 1)
        merged = {r.ts_ms: r for r in readings["a"]}
        merged.update({r.ts_ms: r for r in late})
        want = sorted(merged.values(), key=lambda r: r.ts_ms)
        minutes = await _rollups(client, "a", MINUTE_MS)
        _check(
            [r for r in want if r.ts_ms >= day + 23 * HOUR_MS],
            minutes[day + 23 * HOUR_MS].bins,
            MINUTE_MS,
        )  # type: ignore[attr-defined]
        daily = (await _rollups(client, "a", HOUR_MS))[day]
        _check(want, daily.bins, HOUR_MS)  # type: ignore[attr-defined]
        assert daily.version == 2  # type: ignore[attr-defined]
        untouched = (await _rollups(client, "b", HOUR_MS))[day]
        assert untouched.version == 1  # type: ignore[attr-defined]


def test_bins_are_of_the_merged_window_a_later_set_winning_a_timestamp_whole() -> None:
    # The pass folds merged windows: a later set wins a timestamp, whole.
    a = seal(SCHEME, [Reading("a", T0, {"v": 1.0}), Reading("a", T0 + 1, {"v": 2.0})], 1)
    b = seal(SCHEME, [Reading("a", T0, {"w": 5})], 2)
    merged = merge_parts([*a, *b])
    bins = bins_of_readings(merged, MINUTE_MS)
    assert (
        sorted(bins) == ["v", "w"]
        and bins["v"].count.tolist() == [1]
        and bins["w"].count.tolist() == [1]
    )


@pytest.mark.parametrize(
    "metrics",
    [
        {"cv": 1},  # a count without the other stats
        {"cv": 1, "nv": 1.0, "xv": 1.0, "fv": 1.0, "lv": 1.0},  # no sum
        {"zv": 1.0},  # not a stat
    ],
)
def test_a_blob_that_is_not_whole_bins_is_refused(metrics: dict[str, float | int]) -> None:
    blob = encode_window([Reading("s", T0, metrics)])
    with pytest.raises(PackedDecodeError):
        decode_bins(blob)
