"""Argument types for every command's flags: a bad value fails at parse time, naming the flag.

argparse reports ``argument --flag: <message>`` for an :class:`argparse.ArgumentTypeError`
and ``invalid <type name> value`` for a ``ValueError`` (a number that does not parse), so
each function is named for what it accepts.
"""

from __future__ import annotations

import argparse
import math

__all__ = ["fraction", "port", "positive_float", "positive_int"]


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def port(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535."""
    value = int(text)
    if not 0 <= value <= 65_535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, got {value}")
    return value


def fraction(text: str) -> float:
    """A rate between 0 and 1 (inclusive)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a rate between 0 and 1, got {text}")
    return value
