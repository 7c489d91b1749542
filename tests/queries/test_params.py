"""Parameter parsing and cursors (no server needed)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from queries.cursor import decode_cursor, encode_cursor, fingerprint
from queries.errors import BadParameter
from queries.params import parse_range, parse_step, parse_time


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1763780000123", 1763780000123),
        ("2026-11-22T03:00:00Z", 1795316400000),
        ("2026-11-22T03:00:00.250Z", 1795316400250),
        ("2026-11-22T04:00:00+01:00", 1795316400000),
        ("2026-11-22T04:00:00 01:00", 1795316400000),  # '+' decoded to ' ' in a query string
        ("2026-11-22t03:00:00z", 1795316400000),
    ],
)
def test_times(text: str, ms: int) -> None:
    assert parse_time("start", text) == ms


@pytest.mark.parametrize("text", ["", "now", "-5", "2026-11-22", "2026-11-22T03:00:00", "1e12"])
def test_bad_times_name_the_parameter(text: str) -> None:
    with pytest.raises(BadParameter) as info:
        parse_time("end", text)
    assert info.value.parameter == "end"
    assert "RFC 3339" in info.value.allowed


def test_range_defaults_and_limits() -> None:
    now = 10 * 86_400_000
    assert parse_range({}, now_ms=now, default_span_ms=3_600_000, max_range_ms=86_400_000) == (
        now - 3_600_000,
        now,
    )
    with pytest.raises(BadParameter, match="'start'"):
        parse_range({"start": "0"}, now_ms=now, default_span_ms=1, max_range_ms=86_400_000)


@pytest.mark.parametrize(
    ("text", "ms"),
    [("1ms", 1), ("10s", 10_000), ("1m", 60_000), ("2h", 7_200_000), ("1d", 86_400_000)],
)
def test_steps(text: str, ms: int) -> None:
    assert parse_step(text) == ms


@pytest.mark.parametrize("text", ["0s", "1", "1w", "1.5s", "-1s", "s"])
def test_bad_steps(text: str) -> None:
    with pytest.raises(BadParameter, match="'step'"):
        parse_step(text)


@given(st.integers(0, 2**62), st.integers(0, 2**62), st.text(max_size=20))
def test_cursors_round_trip_and_are_bound_to_their_query(a: int, b: int, other: str) -> None:
    fp = fingerprint("readings", "dev-1", a)
    raw = encode_cursor("readings", fp, {"n": b})
    assert raw.isascii()
    assert "=" not in raw
    assert decode_cursor(raw, "readings", fp)["n"] == b
    other_fp = fingerprint("readings", "dev-1", a, other or "x")
    with pytest.raises(BadParameter, match="another query"):
        decode_cursor(raw, "readings", other_fp)
    with pytest.raises(BadParameter, match="this endpoint"):
        decode_cursor(raw, "sensors", fp)
