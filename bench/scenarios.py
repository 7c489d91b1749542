"""The named load scenarios: what traffic a load run offers, and how it is generated.

=============  ==============================================================
``single``     one reading per message, QoS 1, thousands of devices, one MQTT
               connection each (simulator ``--mode device``)
``gateway``    gateways publishing batches of 100 readings (``--mode gateway``)
``spike``      ``gateway`` at a base rate with a 10× burst in the middle third
               of the run (``--spike``)
``hot-sensor`` one sensor at 2,000 readings/s, published by one gateway in
               batches (:mod:`bench.hotsensor`): the write shards must spread
               it over partitions, and the run reports the per-partition rate
=============  ==============================================================

The default rates are sustainable by the service on the reference 2-core
machine (which also runs the broker, the simulator and the sink), so that its
latency is measured below saturation; the baseline falls behind at some of them.
Pass ``--rate`` to push further.

Why ``hot-sensor`` is not the simulator: the sort key is the reading's
timestamp in milliseconds, so one sensor can hold at most 1,000 distinct
readings per second of timestamps (two readings in the same millisecond
overwrite each other), and the simulator caps a device at 500 readings/s for
that reason. A sensor that *delivers* 2,000 readings/s is therefore a gateway
uploading its buffered backlog: timestamps 1 ms apart, starting in the past and
running at twice the wall clock, never ahead of it. Its latency is measured
against each reading's scheduled publish time (the sink's ``/_clock`` mapping).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["QUICK_SCENARIOS", "SCENARIOS", "Mode", "Scenario", "get_scenario"]

Mode = Literal["device", "gateway", "hot-sensor"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """One named kind of traffic.

    Attributes:
        name: Scenario name (``--scenario``).
        summary: One line for reports.
        mode: Simulator mode, or ``hot-sensor`` (:mod:`bench.hotsensor`).
        devices: Devices (sensors) in the fleet.
        rate_per_s: Default total readings/s.
        gateways: Gateway connections (gateway mode).
        batch_size: Readings per gateway message, at most.
        spike_factor: Rate multiplier of the middle third of the run, if any.
        kinds: Simulator sensor kinds.
    """

    name: str
    summary: str
    mode: Mode
    devices: int
    rate_per_s: float
    gateways: int = 4
    batch_size: int = 100
    spike_factor: float | None = None
    kinds: str = "env"

    def spike_window_s(self, duration_s: float) -> tuple[float, float] | None:
        """Start and length of the spike (the middle third of the run), if any."""
        if self.spike_factor is None:
            return None
        return duration_s / 3, duration_s / 3

    def offered_rate(self, t_s: float, duration_s: float, rate_per_s: float) -> float:
        """Readings/s the publisher is scheduled to offer ``t_s`` into the run."""
        if t_s < 0 or t_s > duration_s:
            return 0.0
        window = self.spike_window_s(duration_s)
        if window is not None and window[0] <= t_s < window[0] + window[1]:
            return rate_per_s * (self.spike_factor or 1.0)
        return rate_per_s

    def expected_readings(self, duration_s: float, rate_per_s: float) -> float:
        """Readings the run is scheduled to publish (before faults: there are none)."""
        window = self.spike_window_s(duration_s)
        extra = 0.0 if window is None else window[1] * rate_per_s * ((self.spike_factor or 1) - 1)
        return duration_s * rate_per_s + extra

    def simulator_args(
        self,
        *,
        mqtt_url: str,
        duration_s: float,
        rate_per_s: float,
        seed: int,
        manifest: str,
        client_id_prefix: str,
    ) -> list[str]:
        """Arguments of ``iot-ingest simulate`` for this scenario (not for ``hot-sensor``)."""
        if self.mode == "hot-sensor":
            raise ValueError("the hot-sensor scenario is published by bench.hotsensor")
        args = [
            "simulate",
            "--mqtt-url",
            mqtt_url,
            "--qos",
            "1",
            "--mode",
            self.mode,
            "--devices",
            str(self.devices),
            "--rate",
            f"{rate_per_s:g}",
            "--kinds",
            self.kinds,
            "--duration",
            f"{duration_s:g}",
            "--seed",
            str(seed),
            "--client-id-prefix",
            client_id_prefix,
            "--manifest",
            manifest,
            "--json",
            "--quiet",
        ]
        if self.mode == "gateway":
            args += ["--gateways", str(self.gateways), "--batch-size", str(self.batch_size)]
        window = self.spike_window_s(duration_s)
        if window is not None:
            args += ["--spike", f"{window[0]:g}:{window[1]:g}:{self.spike_factor:g}"]
        return args


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            name="single",
            summary="one reading per message, QoS 1, 3,000 devices with a connection each",
            mode="device",
            devices=3000,
            rate_per_s=1500,
        ),
        Scenario(
            name="gateway",
            summary="4 gateways, batches of 100 readings, 10,000 devices",
            mode="gateway",
            devices=10_000,
            rate_per_s=3000,
        ),
        Scenario(
            name="spike",
            summary="gateway traffic with a 10x burst in the middle third of the run",
            mode="gateway",
            devices=10_000,
            rate_per_s=1000,
            spike_factor=10.0,
        ),
        Scenario(
            name="hot-sensor",
            summary="one sensor at 2,000 readings/s (a gateway uploading its backlog in batches)",
            mode="hot-sensor",
            devices=1,
            rate_per_s=2000,
            gateways=1,
            batch_size=20,
        ),
    )
}

QUICK_SCENARIOS: tuple[tuple[str, float, float], ...] = (
    ("gateway", 3.0, 1500.0),
    ("single", 3.0, 400.0),
)
"""``--quick``: (scenario, duration s, rate/s) pairs, small enough for ≤ 60 s with the baseline."""


def get_scenario(name: str) -> Scenario:
    """The scenario called ``name``.

    Raises:
        KeyError: No such scenario (the message lists the known ones).
    """
    try:
        return SCENARIOS[name]
    except KeyError:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None
