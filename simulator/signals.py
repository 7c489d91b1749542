"""Signal models: realistic sensor values, vectorised across the fleet with numpy.

Each sensor kind is a :class:`SignalModel`: per-device parameters drawn once
from the seed (base level, amplitude, time zone, drift, step period …), then
:meth:`SignalModel.sample` computes the values of many readings at once from
their devices and timestamps. Building blocks:

- diurnal cycle (local time of day, per-device time zone),
- slow drift (linear in elapsed time),
- steps (a square wave per device: a heater or a machine switching),
- Gaussian noise and rare spikes (outliers),
- correlated metrics (humidity falls when temperature rises; power is
  voltage x current x power factor; GPS speed follows the track).

Values are rounded to the precision a real sensor reports, which also keeps
their JSON and DynamoDB number forms short and exact. Noise comes from a
generator owned by the model, so the same seed and the same sequence of calls
give the same values.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import numpy.typing as npt

__all__ = [
    "KINDS",
    "Array",
    "EnvSensor",
    "GpsTracker",
    "IntArray",
    "PowerMeter",
    "SignalModel",
    "VibrationSensor",
    "kind_names",
    "make_model",
]

Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_TWO_PI = 2.0 * np.pi
_DAY_S = 86_400.0
_SPIKE_PROBABILITY = 0.001


def _diurnal(t_s: Array, tz_h: Array, peak_h: float) -> Array:
    """Daily cycle in [-1, 1], peaking at local hour ``peak_h``."""
    local_h = (t_s / 3600.0 + tz_h) % 24.0
    out: Array = np.cos(_TWO_PI * (local_h - peak_h) / 24.0)
    return out


def _square(t_s: Array, period_s: Array, offset_s: Array) -> Array:
    """A 0/1 square wave of the given period (steps up and down)."""
    out: Array = (np.floor((t_s + offset_s) / (period_s / 2.0)) % 2.0).astype(np.float64)
    return out


class SignalModel(ABC):
    """A sensor kind: its metric names and how its values evolve.

    Args:
        n_devices: Devices of this kind (parameters are drawn for each).
        rng: Generator for the per-device parameters (drawn once, here).
        noise_rng: Generator for noise and spikes (drawn on every sample).
    """

    kind: str = ""
    metrics: tuple[str, ...] = ()

    def __init__(
        self, n_devices: int, rng: np.random.Generator, noise_rng: np.random.Generator
    ) -> None:
        self.n_devices = n_devices
        self._noise = noise_rng
        self._init_params(rng, n_devices)

    @abstractmethod
    def _init_params(self, rng: np.random.Generator, n: int) -> None: ...

    @abstractmethod
    def sample(self, local_idx: IntArray, t_s: Array, elapsed_s: Array) -> dict[str, Array]:
        """Values of readings, one per element of the inputs.

        Args:
            local_idx: Index of each reading's device among the devices of this kind.
            t_s: Epoch seconds of each reading (the true time, before any clock skew).
            elapsed_s: Seconds since the start of the run.

        Returns:
            Metric name to values, aligned with the inputs.
        """

    def _normal(self, n: int, k: int) -> Array:
        out: Array = self._noise.standard_normal((k, n))
        return out

    def _spikes(self, n: int) -> Array:
        """Multiplier 1 for most readings, a rare outlier factor (1.5 to 3) for a few."""
        u = self._noise.random(n)
        out: Array = np.where(u < _SPIKE_PROBABILITY, 1.5 + 1.5 * u / _SPIKE_PROBABILITY, 1.0)
        return out


class EnvSensor(SignalModel):
    """Temperature (°C), relative humidity (%) and pressure (hPa), as in a room or outdoors."""

    kind = "env"
    metrics = ("temperature", "humidity", "pressure")

    def _init_params(self, rng: np.random.Generator, n: int) -> None:
        self.base_c = rng.uniform(17.0, 26.0, n)
        self.amp_c = rng.uniform(1.0, 5.0, n)
        self.tz_h = rng.integers(-8, 10, n).astype(np.float64)
        self.drift_c_per_h = rng.normal(0.0, 0.02, n)
        self.step_c = np.where(rng.random(n) < 0.5, rng.uniform(0.5, 2.0, n), 0.0)
        self.step_period_s = rng.uniform(3_600.0, 6 * 3_600.0, n)
        self.step_offset_s = rng.uniform(0.0, 6 * 3_600.0, n)
        self.base_rh = rng.uniform(35.0, 60.0, n)
        self.rh_per_c = rng.uniform(1.5, 3.0, n)
        self.base_hpa = rng.uniform(1005.0, 1020.0, n)
        self.amp_hpa = rng.uniform(2.0, 8.0, n)
        self.hpa_period_s = rng.uniform(2.0, 4.0, n) * _DAY_S
        self.hpa_phase = rng.uniform(0.0, _TWO_PI, n)

    def sample(self, local_idx: IntArray, t_s: Array, elapsed_s: Array) -> dict[str, Array]:
        i = local_idx
        n = i.size
        z = self._normal(n, 3)
        deviation = (
            self.amp_c[i] * _diurnal(t_s, self.tz_h[i], 15.0)
            + self.drift_c_per_h[i] * (elapsed_s / 3600.0)
            + self.step_c[i] * _square(t_s, self.step_period_s[i], self.step_offset_s[i])
        )
        temperature = (self.base_c[i] + deviation + 0.1 * z[0]) * self._spikes(n)
        humidity = np.clip(self.base_rh[i] - self.rh_per_c[i] * deviation + 0.5 * z[1], 5.0, 100.0)
        pressure = (
            self.base_hpa[i]
            + self.amp_hpa[i] * np.sin(_TWO_PI * t_s / self.hpa_period_s[i] + self.hpa_phase[i])
            + 0.05 * z[2]
        )
        return {
            "temperature": np.round(temperature, 2),
            "humidity": np.round(humidity, 1),
            "pressure": np.round(pressure, 2),
        }


class VibrationSensor(SignalModel):
    """Machine vibration: RMS and peak velocity (mm/s), main frequency, bearing temperature."""

    kind = "vibration"
    metrics = ("rms_mm_s", "peak_mm_s", "freq_hz", "bearing_c")

    def _init_params(self, rng: np.random.Generator, n: int) -> None:
        self.base_rms = rng.uniform(0.5, 4.0, n)
        self.crest = rng.uniform(1.4, 3.0, n)
        self.freq_hz = rng.choice(np.array([24.75, 29.6, 49.5, 59.4]), n)
        self.tz_h = rng.integers(-8, 10, n).astype(np.float64)
        self.wear_per_h = np.abs(rng.normal(0.0, 0.002, n))
        self.shift_period_s = rng.choice(np.array([8.0, 12.0]), n) * 3_600.0
        self.shift_offset_s = rng.uniform(0.0, _DAY_S, n)

    def sample(self, local_idx: IntArray, t_s: Array, elapsed_s: Array) -> dict[str, Array]:
        i = local_idx
        n = i.size
        z = self._normal(n, 4)
        running = _square(t_s, self.shift_period_s[i], self.shift_offset_s[i])
        load = np.clip(0.5 + 0.5 * _diurnal(t_s, self.tz_h[i], 14.0), 0.0, 1.0)
        rms = (
            self.base_rms[i]
            * (0.15 + running * (0.6 + 0.4 * load))
            * (1.0 + self.wear_per_h[i] * elapsed_s / 3600.0)
            * np.exp(0.08 * z[0])
            * self._spikes(n)
        )
        peak = rms * self.crest[i] * np.exp(0.05 * z[1])
        freq = self.freq_hz[i] * (1.0 + 0.01 * load) + 0.05 * z[2]
        bearing = 30.0 + 8.0 * running * load + 2.0 * rms + 0.2 * z[3]
        return {
            "rms_mm_s": np.round(rms, 3),
            "peak_mm_s": np.round(peak, 3),
            "freq_hz": np.round(freq, 2),
            "bearing_c": np.round(bearing, 1),
        }


class PowerMeter(SignalModel):
    """An electricity meter: voltage, current, power factor, active power, energy counter."""

    kind = "power"
    metrics = ("voltage_v", "current_a", "pf", "power_w", "energy_kwh")

    def _init_params(self, rng: np.random.Generator, n: int) -> None:
        self.nominal_v = rng.choice(np.array([120.0, 230.0]), n, p=[0.3, 0.7])
        self.base_a = rng.uniform(2.0, 40.0, n)
        self.tz_h = rng.integers(-8, 10, n).astype(np.float64)
        self.base_pf = rng.uniform(0.85, 0.98, n)
        self.energy0_kwh = rng.uniform(0.0, 50_000.0, n)

    def sample(self, local_idx: IntArray, t_s: Array, elapsed_s: Array) -> dict[str, Array]:
        i = local_idx
        n = i.size
        z = self._normal(n, 3)
        occupancy = np.clip(0.55 + 0.45 * _diurnal(t_s, self.tz_h[i], 13.0), 0.05, 1.0)
        voltage = self.nominal_v[i] * (1.0 + 0.01 * z[0])
        current = np.maximum(
            self.base_a[i] * occupancy * (1.0 + 0.05 * z[1]) * self._spikes(n), 0.0
        )
        pf = np.clip(self.base_pf[i] + 0.02 * z[2], 0.5, 1.0)
        power = voltage * current * pf
        mean_kw = self.nominal_v[i] * self.base_a[i] * self.base_pf[i] * 0.55 / 1000.0
        energy = self.energy0_kwh[i] + mean_kw * elapsed_s / 3600.0
        return {
            "voltage_v": np.round(voltage, 1),
            "current_a": np.round(current, 2),
            "pf": np.round(pf, 3),
            "power_w": np.round(power, 1),
            "energy_kwh": np.round(energy, 3),
        }


# Home areas of GPS trackers (latitude, longitude): away from 0 so coordinates keep their digits.
_CITIES = np.array(
    [
        (48.8566, 2.3522),
        (52.5200, 13.4050),
        (40.7128, -74.0060),
        (35.6762, 139.6503),
        (-33.8688, 151.2093),
        (19.4326, -99.1332),
        (-23.5505, -46.6333),
        (51.5072, -0.1276),
    ]
)
_KM_PER_DEG = 111.32


class GpsTracker(SignalModel):
    """A vehicle tracker on a loop around its home area: latitude, longitude, speed, battery."""

    kind = "gps"
    metrics = ("lat", "lon", "speed_kmh", "battery_pct")

    def _init_params(self, rng: np.random.Generator, n: int) -> None:
        home = _CITIES[rng.integers(0, len(_CITIES), n)]
        self.lat0 = home[:, 0] + rng.uniform(-0.2, 0.2, n)
        self.lon0 = home[:, 1] + rng.uniform(-0.2, 0.2, n)
        self.radius_km = rng.uniform(0.5, 15.0, n)
        self.period_s = rng.uniform(600.0, 7_200.0, n)
        self.phase = rng.uniform(0.0, _TWO_PI, n)
        self.battery0 = rng.uniform(60.0, 100.0, n)
        self.drain_per_h = rng.uniform(0.5, 3.0, n)

    def sample(self, local_idx: IntArray, t_s: Array, elapsed_s: Array) -> dict[str, Array]:
        i = local_idx
        n = i.size
        z = self._normal(n, 3)
        angle = _TWO_PI * t_s / self.period_s[i] + self.phase[i]
        r_deg = self.radius_km[i] / _KM_PER_DEG
        lat = self.lat0[i] + r_deg * np.sin(angle) + 2e-5 * z[0]
        lon = self.lon0[i] + r_deg * np.cos(angle) / np.cos(np.radians(self.lat0[i])) + 2e-5 * z[1]
        speed = np.maximum(
            _TWO_PI * self.radius_km[i] / (self.period_s[i] / 3600.0) * (1.0 + 0.05 * z[2]), 0.0
        )
        battery = np.clip(self.battery0[i] - self.drain_per_h[i] * elapsed_s / 3600.0, 5.0, 100.0)
        return {
            "lat": np.round(lat, 6),
            "lon": np.round(lon, 6),
            "speed_kmh": np.round(speed, 1),
            "battery_pct": np.round(battery, 1),
        }


KINDS: dict[str, type[SignalModel]] = {
    m.kind: m for m in (EnvSensor, VibrationSensor, PowerMeter, GpsTracker)
}
"""Sensor kinds by name (the ``kind`` of a fleet group)."""


def kind_names() -> list[str]:
    """The known sensor kinds, in a stable order."""
    return list(KINDS)


def make_model(
    kind: str, n_devices: int, rng: np.random.Generator, noise_rng: np.random.Generator
) -> SignalModel:
    """Create the signal model of ``kind`` for ``n_devices`` devices.

    Raises:
        KeyError: ``kind`` is not one of :data:`KINDS`.
    """
    return KINDS[kind](n_devices, rng, noise_rng)
