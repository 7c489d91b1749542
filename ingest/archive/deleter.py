"""Early delete: remove verified items with BatchWriteItem DeleteRequests, the writer's backoff.

Only keys read back from a verified archive object are deleted, 25 per call;
``UnprocessedItems`` and retriable errors are resent after a full-jitter backoff
(:class:`ingest.core.retry.Backoff`) until a deadline. A delete of an absent key is a
no-op in DynamoDB, so a re-run after a crash mid-delete is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from ingest.core.errors import DynamoError
from ingest.core.retry import Backoff
from ingest.storage.archive.errors import SourceError, single_archive_error
from ingest.storage.dynamo import DynamoClient

__all__ = ["BATCH_SIZE", "Key", "delete_keys"]

log = logging.getLogger(__name__)

BATCH_SIZE = 25
Key = tuple[str, int]


async def delete_keys(
    client: DynamoClient,
    keys: Sequence[Key],
    *,
    backoff: Backoff | None = None,
    deadline_s: float = 120.0,
    concurrency: int = 4,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> int:
    """Delete items by (pk, sk); return how many delete requests DynamoDB processed.

    Args:
        client: The table's client.
        keys: Item keys; duplicates are dropped (a call with two requests for one key fails).
        backoff: Retry backoff (default: 50 ms base, 5 s cap, like the writer's defaults).
        deadline_s: How long one batch may be retried.
        concurrency: BatchWriteItem calls in flight.
        sleep: Injected for tests.

    Raises:
        SourceError: a batch was refused, or still unprocessed at the deadline.
    """
    backoff = backoff or Backoff(base_ms=50, cap_ms=5_000)
    unique = list(dict.fromkeys(keys))
    batches = [unique[i : i + BATCH_SIZE] for i in range(0, len(unique), BATCH_SIZE)]
    pending = iter(batches)

    async def one(batch: list[Key]) -> None:
        requests = [
            {"DeleteRequest": {"Key": {"pk": {"S": pk}, "sk": {"N": str(sk)}}}} for pk, sk in batch
        ]
        started = time.monotonic()
        attempt = 0
        while requests:
            try:
                resp = await client.call("batch_write_item", RequestItems={client.table: requests})
                requests = resp.get("UnprocessedItems", {}).get(client.table, [])
                why = "unprocessed"
            except DynamoError as exc:
                if not exc.retriable:
                    raise SourceError(
                        f"delete of archived items in {client.table!r} refused: {exc}"
                    ) from exc
                why = str(exc)
            if not requests:
                return
            if time.monotonic() - started > deadline_s:
                raise SourceError(
                    f"{len(requests)} deletes in {client.table!r} still failing after "
                    f"{deadline_s:g} s ({why}); re-run the archive to finish them",
                    retriable=True,
                )
            log.debug("delete retry %d (%s): %d requests", attempt, why, len(requests))
            await sleep(backoff.delay_s(attempt))
            attempt += 1

    async def worker() -> None:
        for batch in pending:  # shared iterator: each batch goes to one worker
            await one(batch)

    try:
        async with asyncio.TaskGroup() as tg:
            for i in range(min(concurrency, len(batches))):
                tg.create_task(worker(), name=f"archive-delete-{i}")
    except BaseExceptionGroup as eg:
        err = single_archive_error(eg)
        if err is None:
            raise
        raise err from eg
    return len(unique)
