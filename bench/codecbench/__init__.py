"""Codec benchmark: how to pack one sensor's readings into a DynamoDB binary attribute.

Why: the ``packed`` layout (issue 13, decision 0007) stores many readings of one
sensor per item, compressed. Items are billed per KB written and per 4 KB read,
so the encoding decides the cost; it runs on the ingest hot path (budget: 8 µs
per reading for everything), so its CPU counts too. This measures the candidates
on the project's own signals before any storage code is written.

Data (all from the simulator's models, never invented):

- per-sensor windows: one device of each kind (env, vibration, power, gps) at
  1 Hz, scheduled by :class:`simulator.schedule.TickSchedule`, with the
  simulator's dropouts (:class:`simulator.faults.FaultInjector`, gaps of 10 s),
  values from :mod:`simulator.signals`; plus a clock jitter the simulator does
  not model (Gaussian, σ = 2 ms, integer ms; the schedule itself is exact to the
  ms), readings sorted by time as a writer would store them. Windows of 60, 300,
  3,600 and 86,400 readings; a hot vibration sensor at 1 kHz (exact 1 ms steps,
  10,000 readings);
- three precisions, each passed through the JSON the simulator publishes
  (orjson) and parsed back: ``published`` (the models' own rounding: 1 to 6
  decimals per metric), ``2dp`` (every metric rounded to 2 decimals) and
  ``full`` (the models' values before rounding: what a gateway sending raw
  doubles would publish; obtained by running the models with ``np.round``
  disabled);
- tags: a constant site and zone, and a firmware tag that changes once a day;
- journal chunks: what one flush of an ingest worker holds, 100 to 10,000
  readings of 3,000 sensors (all four kinds, 1 Hz, gateway batches with the
  simulator's duplicates and late readings) in arrival order, produced by
  :class:`simulator.generator.TrafficGenerator` and decoded by
  :class:`ingest.pipeline.codec.PayloadDecoder` exactly as the service does;
- rollups: per minute and per hour, count/min/max/sum/first/last of each metric
  over the day window (sum by ``math.fsum``, so it is the same whatever the order).

Every candidate encodes a whole window (timestamps and all metric columns, with
the framing it needs to decode) into one ``bytes``; bytes per reading is
``len(blob) / readings``. Each blob is decoded and compared with the input: int64
timestamps equal, float64 values bit-identical. A candidate that fails once is
rejected (listed with the reason, never reported): lossless is mandatory. Two
deliberately lossy traps (float32, numcodecs' float ``Delta``) prove the check works.

Timing: CPU time (``time.process_time``) with the collector off; each job runs in
a loop of at least ``min_loop_ms``, repeated ``repeats`` times round-robin over the
candidates (so the load of a shared machine falls on all of them alike); the
median per reading is reported. Compare candidates within one run, not across runs.

Run: ``python -m bench.codecbench [--quick] [--json PATH]`` (the full run takes
about 15 minutes on the 2-core reference machine; ``--quick`` about 30 s, and is
what the test runs). Optional codec libraries (zstandard, pyzstd, backports.zstd,
pcodec, numcodecs, msgpack) are used when installed and listed as unavailable
otherwise; pyarrow's zstd is always there.

Measured (2026-12-02; the tables and the decision are in
docs/decisions/0007-packed-encoding.md): at the simulator's sensor precision the
project-owned ``np-dec`` transforms + zstd 3 take 6.3 / 4.7 / 4.2 / 3.6 bytes per
reading for windows of 60 / 300 / 3,600 / 86,400 readings (pcodec 7.3 / 4.7 /
4.0 / 3.8, JSON + zstd 11), at 0.85 / 0.23 / 0.04 / 0.03 µs per reading to encode;
full-precision doubles take 21-26 bytes per reading whatever the codec.
"""

from bench.codecbench._candidates import Candidate, window_candidates
from bench.codecbench._report import main, render
from bench.codecbench._runner import run

__all__ = ["Candidate", "main", "render", "run", "window_candidates"]
