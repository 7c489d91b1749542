"""Benchmarks: end-to-end load runs with reports, and the servers and fixtures they use.

Modules, by role::

    cli         the ``iot-ingest bench`` command
    scenarios   the named traffic: single, gateway, spike, hot-sensor
    loadrun     one run: servers, workers, publisher, measurement window, figures
    baseline    the naive aiomqtt + aiobotocore pipeline compared against
    hotsensor   the hot-sensor publisher (one sensor's backlog at 2,000 readings/s)
    sink        BENCHMARK FIXTURE: a protocol-checking DynamoDB-API sink that accounts
                items, write units, latency and partitions (or taps moto/dynalite)
    capacity    DynamoDB item sizes, write units, on-demand price
    histogram   the millisecond latency histogram
    procstat    CPU seconds and peak memory of a process, from /proc
    processes   subprocesses that are always stopped; HTTP and Prometheus probes
    report      result.json, report.md and the PNG plots
    servers     Mosquitto, moto and dynalite as async context managers (tests use them too)
    faultproxy  a fault-injecting proxy in front of a DynamoDB-API server
    errors      BenchError

The micro benchmarks are tests: ``tests/bench/test_micro_*.py``. The package exports
no names of its own: import the module you need (importing this package stays cheap,
since every ``iot-ingest`` command loads ``bench.cli``).
"""

__all__: list[str] = []
