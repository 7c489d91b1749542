"""The write stage: batches to DynamoDB, retried until durable or dead-lettered.

Retry policy (one place, with metrics per cause):

- ``UnprocessedItems`` (a *successful* response that wrote only part of the
  batch), throttling, 5xx, connection errors, answers that are not DynamoDB's
  (a 200 that is not a JSON object, an HTML error page), failed credential
  refreshes and operator-fixable errors (missing table, access denied) are
  retried with exponential backoff and full jitter, capped per sleep, until
  ``write_retry_deadline_s`` has passed; what is still unwritten then goes to
  the dead letters. The causes are :mod:`ingest.storage.dynamo`'s, counted in
  ``iot_ingest_write_retries_total{cause}``.
- Any other exception from the sink is retried the same way (cause
  ``unexpected``): nothing but cancellation leaves :meth:`Writer.write`, so a
  client's failure never stops the service's task group.
- A rejected batch (ValidationException…) is split into single-item writes
  so that only the offending items are dead-lettered, each with DynamoDB's
  reason.

Items already written are acknowledged at once, even while the rest of their
batch is still being retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ingest.core.errors import DynamoError, DynamoRetriable
from ingest.core.metrics import Metrics
from ingest.core.retry import Backoff
from ingest.pipeline.acks import AckTracker, Pending
from ingest.pipeline.batcher import Batch
from ingest.pipeline.deadletters import DeadLetterSpool
from ingest.storage.dynamo import BatchSink
from ingest.storage.items import Item, KeyedItem

__all__ = ["Writer"]

log = logging.getLogger(__name__)


def _key(item: Item) -> tuple[str, str]:
    return item["pk"]["S"], item["sk"]["N"]


class Writer:
    """Writes batches with bounded concurrency (the number of writer tasks).

    Args:
        sink: Where batches go.
        acks: Tracker to mark written items durable.
        deadletters: Spool for what cannot be written.
        metrics: Metrics.
        backoff: Retry backoff.
        deadline_s: How long one batch may be retried.
        sleep: Injected for tests.
    """

    def __init__(
        self,
        *,
        sink: BatchSink,
        acks: AckTracker,
        deadletters: DeadLetterSpool,
        metrics: Metrics,
        backoff: Backoff,
        deadline_s: float,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._sink = sink
        self._acks = acks
        self._dead = deadletters
        self._m = metrics
        self._backoff = backoff
        self._deadline_s = deadline_s
        self._sleep = sleep
        self.healthy = True

    async def run(self, queue: asyncio.Queue[Batch]) -> None:
        """A writer task: take batches from the queue until cancelled."""
        while True:
            batch = await queue.get()
            try:
                await self.write(batch)
            finally:
                queue.task_done()

    async def write(self, batch: Batch) -> None:
        """Write one batch until every item is durable or dead-lettered."""
        waiting: dict[tuple[str, str], tuple[KeyedItem, list[Pending]]] = {
            _key(it): (it, ps) for it, ps in batch
        }
        started = time.monotonic()
        attempt = 0
        m = self._m
        while waiting:
            items = [it for it, _ in waiting.values()]
            t0 = time.perf_counter()
            try:
                left = await self._sink.batch_write(items)
                left_keys = {_key(it) for it in left} if left else set()
                if not left_keys <= waiting.keys():
                    # Not the answer to this request (it names items we did not send):
                    # trusting it could take unwritten items for written ones.
                    raise DynamoRetriable(
                        f"UnprocessedItems names {len(left_keys - waiting.keys())} items "
                        "that were not in the request",
                        cause="bad_response",
                    )
            except DynamoRetriable as exc:
                cause, why = exc.cause, str(exc)
            except DynamoError as exc:
                m.write_rejected.inc()
                await self._split(waiting, exc)
                return
            except Exception as exc:
                # A sink's error of a type nobody foresaw: no evidence the data is bad, and
                # raising would stop the service without a drain. Retry it like the others.
                cause, why = "unexpected", f"{type(exc).__name__}: {exc}"
                if attempt == 0:
                    log.error("unexpected error from the DynamoDB client", exc_info=exc)
            else:
                m.write_seconds.observe(time.perf_counter() - t0)
                m.write_requests.inc()
                self.healthy = True
                done: list[Pending] = []
                for key in list(waiting):
                    if key not in left_keys:
                        done += waiting.pop(key)[1]
                m.items_written.inc(len(items) - len(left_keys))
                if done:
                    self._observe_latency(done)
                    self._acks.done(done)
                if waiting:
                    m.write_retries.labels("unprocessed").inc()
                    m.unprocessed_items.inc(len(waiting))
                    if not await self._retry_or_give_up(
                        waiting, started, attempt, "UnprocessedItems"
                    ):
                        return
                    attempt += 1
                continue
            m.write_retries.labels(cause).inc()
            if attempt == 0 or attempt % 10 == 0:
                log.warning("write of %d items failed (%s), retrying: %s", len(items), cause, why)
            self.healthy = False
            if not await self._retry_or_give_up(waiting, started, attempt, why):
                return
            attempt += 1

    def _observe_latency(self, done: list[Pending]) -> None:
        now_ms = time.time() * 1000
        hist = self._m.durable_latency
        seen: set[int] = set()
        for p in done:
            if p.remaining == 1 and id(p) not in seen:
                seen.add(id(p))
                hist.observe(max(0.0, now_ms - p.received_ms) / 1000)

    async def _retry_or_give_up(
        self,
        waiting: dict[tuple[str, str], tuple[KeyedItem, list[Pending]]],
        started: float,
        attempt: int,
        why: str,
    ) -> bool:
        delay = self._backoff.delay_s(attempt)
        if time.monotonic() + delay - started > self._deadline_s:
            reason = (
                f"write failed after {attempt + 1} attempts over {time.monotonic() - started:.1f} s "
                f"(write_retry_deadline_s={self._deadline_s}): {why}"
            )
            log.error("giving up on %d items: %s", len(waiting), reason)
            self._m.write_gave_up.inc(len(waiting))
            await self._dead_letter(list(waiting.values()), reason)
            waiting.clear()
            return False
        await self._sleep(delay)
        return True

    async def _split(
        self, waiting: dict[tuple[str, str], tuple[KeyedItem, list[Pending]]], exc: DynamoError
    ) -> None:
        entries = list(waiting.values())
        waiting.clear()
        if len(entries) == 1:
            await self._dead_letter(entries, f"DynamoDB rejected the item: {exc}")
            return
        # Find the offending items: write each alone (one request each, same policy).
        for item, pendings in entries:
            await self.write([(item, pendings)])

    async def _dead_letter(
        self, entries: list[tuple[KeyedItem, list[Pending]]], reason: str
    ) -> None:
        for item, pendings in entries:
            await self._dead.put_item(item, pendings, reason)
