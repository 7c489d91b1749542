"""Terminal output of `simulate`: a live progress line (rich) and the end-of-run report."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from simulator.run import Progress, RunSummary

__all__ = ["LiveProgress", "print_summary"]


def _si(n: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


class LiveProgress:
    """A one-line live display: elapsed, rate vs target, totals, acks, errors, lag.

    Use as a context manager; pass :meth:`update` as the run's ``on_progress``.

    Args:
        console: Where to draw (stderr by default, so stdout stays clean for ``--json``).
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._live = Live(console=self.console, auto_refresh=False, transient=True)

    def __enter__(self) -> LiveProgress:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._live.__exit__(*exc)

    def update(self, p: Progress) -> None:
        line = Text.assemble(
            (f"{p.elapsed_s:6.1f}s ", "bold"),
            ("rate ", "dim"),
            (
                f"{_si(p.rate_per_s)}/s",
                "green" if p.rate_per_s >= 0.95 * p.target_rate_per_s else "yellow",
            ),
            (f" of {_si(p.target_rate_per_s)}/s", "dim"),
            ("  readings ", "dim"),
            _si(p.readings),
            ("  msgs ", "dim"),
            _si(p.messages),
            ("  acked ", "dim"),
            _si(p.acked),
            ("  errors ", "dim"),
            (str(p.errors), "red" if p.errors else ""),
            ("  lag ", "dim"),
            (f"{p.lag_s:.2f}s", "red" if p.lag_s > 1 else ""),
            ("  queued ", "dim"),
            _si(p.queued),
        )
        self._live.update(line, refresh=True)


def print_summary(summary: RunSummary, console: Console) -> None:
    """A short human report of a finished run."""
    s = summary
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="dim")
    table.add_column()
    ok = "green" if s.achieved_rate_per_s >= 0.95 * s.scheduled_rate_per_s else "yellow"
    table.add_row("mode", f"{s.mode}: {s.devices} devices over {s.connections} connection(s)")
    table.add_row(
        "rate",
        f"[{ok}]{s.achieved_rate_per_s:,.0f}/s achieved[/] · {s.scheduled_rate_per_s:,.0f}/s "
        f"scheduled · {s.target_rate_per_s:,.0f}/s nominal",
    )
    table.add_row(
        "readings",
        f"{s.readings_generated:,} generated · {s.valid_readings:,} valid · "
        f"{s.invalid_readings:,} invalid · {s.readings_sent:,} sent (with copies)",
    )
    table.add_row(
        "messages",
        f"{s.messages_sent:,} sent · {s.messages_acked:,} acked · "
        f"{s.messages_rejected:,} rejected · "
        f"{s.unconfirmed_messages:,} unconfirmed · {s.bytes_sent / 1e6:,.1f} MB",
    )
    table.add_row(
        "time",
        f"{s.connect_s:.1f}s connecting · {s.elapsed_s:.1f}s running · "
        f"{s.logical_duration_s:.1f}s scheduled · "
        f"max lag {s.max_lag_s:.2f}s"
        f" · {s.cpu_s:.1f}s CPU ({1e6 * s.cpu_s / max(s.readings_generated, 1):.1f} µs/reading)",
    )
    faults = {k: v for k, v in s.faults.items() if v}
    if faults:
        table.add_row("faults", " · ".join(f"{k} {v:,}" for k, v in faults.items()))
    if s.connections_lost:
        table.add_row(
            "network", f"{s.connections_lost} connection(s) lost, {s.reconnects} reconnected"
        )
    if s.manifest:
        table.add_row("manifest", s.manifest)
    status = "[green]complete[/]" if s.complete else "[red]INCOMPLETE: some messages unconfirmed[/]"
    if s.interrupted:
        status += " [yellow](interrupted)[/]"
    table.add_row("status", status)
    console.print(table)
