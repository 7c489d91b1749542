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

__all__: list[str] = []
