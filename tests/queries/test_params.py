"""Parameter parsing and cursors (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from queries.api.cursor import CursorCodec, CursorKeyError, fingerprint, load_cursor_keys
from queries.errors import BadParameter
from queries.read.params import parse_range, parse_step, parse_time


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


CODEC = CursorCodec((b"t" * 32,))


@given(st.integers(0, 2**62), st.integers(0, 2**62), st.text(max_size=20))
def test_cursors_round_trip_and_are_bound_to_their_query(a: int, b: int, other: str) -> None:
    fp = fingerprint("readings", "dev-1", a)
    raw = CODEC.encode("readings", fp, {"n": b})
    assert raw.isascii()
    assert "=" not in raw
    assert CODEC.decode(raw, "readings", fp)["n"] == b
    other_fp = fingerprint("readings", "dev-1", a, other or "x")
    with pytest.raises(BadParameter, match="another query"):
        CODEC.decode(raw, "readings", other_fp)
    with pytest.raises(BadParameter, match="this endpoint"):
        CODEC.decode(raw, "sensors", fp)


def test_cursor_keys_rotate_first_signs_every_one_verifies() -> None:
    old, new = b"o" * 32, b"n" * 40
    fp = fingerprint("readings", "dev-1")
    issued = CursorCodec((old,)).encode("readings", fp, {"n": 5})
    rotating = CursorCodec((new, old))
    assert rotating.decode(issued, "readings", fp)["n"] == 5
    fresh = rotating.encode("readings", fp, {"n": 6})
    assert CursorCodec((new,)).decode(fresh, "readings", fp)["n"] == 6
    with pytest.raises(BadParameter, match="not issued by this server") as caught:
        CursorCodec((new,)).decode(issued, "readings", fp)  # the old key was removed
    assert caught.value.parameter == "cursor"
    with pytest.raises(BadParameter, match="not issued by this server"):
        CursorCodec.random().decode(fresh, "readings", fp)
    assert "n" * 32 not in repr(rotating)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        CursorCodec((b"short",))


def test_cursor_key_file(tmp_path: Path) -> None:
    path = tmp_path / "cursor.key"
    path.write_text("# rotated 2026-11\n" + "a" * 64 + "\n\n  " + "b" * 32 + "  \n")
    assert load_cursor_keys(path) == (b"a" * 64, b"b" * 32)
    path.write_text("a" * 64 + "\nshort-secret\n")
    with pytest.raises(CursorKeyError, match="line 2: a key must be at least 32") as caught:
        load_cursor_keys(path)
    assert "short-secret" not in str(caught.value)
    path.write_text("# nothing\n\n")
    with pytest.raises(CursorKeyError, match="no key"):
        load_cursor_keys(path)
    with pytest.raises(CursorKeyError, match="missing"):
        load_cursor_keys(tmp_path / "missing")
