"""What the OS accounts for a process: CPU time and memory, from ``/proc`` (Linux).

CPU seconds are ``utime + stime`` of ``/proc/<pid>/stat`` (every thread of the
process, user and kernel time) in clock ticks; peak memory is ``VmHWM`` of
``/proc/<pid>/status`` (the resident set's high-water mark). Both must be read
while the process is alive: the harness samples them before stopping it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["ProcSample", "cpu_seconds", "memory_kb", "sample"]

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds the process has used so far.

    Raises:
        ProcessLookupError: The process is gone.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            text = f.read()
    except FileNotFoundError as exc:
        raise ProcessLookupError(pid) from exc
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = text.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS_PER_S


def memory_kb(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak resident set) of the process, in KiB.

    Raises:
        ProcessLookupError: The process is gone.
    """
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    out[name] = int(value.split()[0])
    except FileNotFoundError as exc:
        raise ProcessLookupError(pid) from exc
    return out


@dataclass(frozen=True, slots=True)
class ProcSample:
    """CPU and memory of one process at one moment."""

    pid: int
    cpu_s: float
    rss_kb: int
    hwm_kb: int


def sample(pid: int) -> ProcSample | None:
    """CPU and memory of ``pid`` now, or None when it is gone."""
    try:
        mem = memory_kb(pid)
        return ProcSample(pid, cpu_seconds(pid), mem.get("VmRSS", 0), mem.get("VmHWM", 0))
    except (ProcessLookupError, ValueError, IndexError):
        return None
