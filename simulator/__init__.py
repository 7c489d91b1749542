"""Simulated IoT fleets for load tests: signals, scheduled publishing, faults, manifests, verify.

Modules, by role::

    fleet        devices, kinds, rates, tags; fleet files (TOML)
    signals      numpy signal models per sensor kind
    schedule     scheduled ticks, ramp-up, spikes
    faults       data faults injected on purpose
    payloads     JSON payload bytes (valid and invalid)
    manifest     what a run sent: per-sensor counts, checksums; fault counts
    generator    schedule → values → faults → messages, tick by tick
    publisher    the transport interface, and the lean asyncio MQTT publisher
    run          one run, owned by one task group
    progress     the live progress line and the report
    verify       checks a DynamoDB table against a manifest
    cli          the ``simulate`` and ``verify`` subcommands
"""

from __future__ import annotations

from simulator.errors import (
    BrokerRefused,
    ManifestError,
    PublishError,
    SimConfigError,
    SimulatorError,
)
from simulator.faults import FaultConfig
from simulator.fleet import DeviceGroup, Fleet, load_fleet_file
from simulator.generator import Outgoing, TrafficGenerator, TrafficOptions
from simulator.manifest import Manifest, load_manifest, reading_digest, save_manifest
from simulator.publisher import MemoryPublisher, MqttPublisher, Publisher, PublishStats
from simulator.run import Progress, RunSummary, SimulationConfig, run_simulation
from simulator.schedule import RateProfile, Spike
from simulator.verify import VerifyError, VerifyReport, verify_table

__all__ = [
    "BrokerRefused",
    "DeviceGroup",
    "FaultConfig",
    "Fleet",
    "Manifest",
    "ManifestError",
    "MemoryPublisher",
    "MqttPublisher",
    "Outgoing",
    "Progress",
    "PublishError",
    "PublishStats",
    "Publisher",
    "RateProfile",
    "RunSummary",
    "SimConfigError",
    "SimulationConfig",
    "SimulatorError",
    "Spike",
    "TrafficGenerator",
    "TrafficOptions",
    "VerifyError",
    "VerifyReport",
    "load_fleet_file",
    "load_manifest",
    "reading_digest",
    "run_simulation",
    "save_manifest",
    "verify_table",
]
