"""The argument types every command uses: bad values fail at parse time and name the flag."""

from __future__ import annotations

import argparse

import pytest

from ingest.core.argtypes import fraction, port, positive_float, positive_int


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    p.add_argument("--rate", type=positive_float)
    p.add_argument("--count", type=positive_int)
    p.add_argument("--port", type=port)
    p.add_argument("--share", type=fraction)
    return p


def test_good_values_parse_to_numbers() -> None:
    args = _parser().parse_args(["--rate", "0.5", "--count", "3", "--port", "0", "--share", "1"])
    assert (args.rate, args.count, args.port, args.share) == (0.5, 3, 0, 1.0)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--rate", "0", "must be a finite number > 0, got 0"),
        ("--rate", "nan", "must be a finite number > 0, got nan"),
        ("--rate", "inf", "must be a finite number > 0, got inf"),
        ("--rate", "-1e-9", "must be a finite number > 0"),
        ("--count", "0", "must be >= 1, got 0"),
        ("--count", "1.5", "invalid positive_int value: '1.5'"),
        ("--port", "65536", "must be 0..65535, got 65536"),
        ("--share", "1.01", "a rate between 0 and 1, got 1.01"),
    ],
)
def test_bad_values_name_the_flag_and_the_value(flag: str, value: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentError) as err:
        _parser().parse_args([f"{flag}={value}"])
    assert flag in str(err.value)
    assert message in str(err.value)
