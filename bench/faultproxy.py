"""A fault-injecting HTTP proxy in front of a DynamoDB-API endpoint (moto, dynalite).

Local DynamoDB-API servers never throttle and never return ``UnprocessedItems``; this
proxy makes them, so the writer's retry paths meet the failures DynamoDB really
produces. Faults, each with a probability (seeded RNG: reproducible) or from a
scripted sequence, apply to ``BatchWriteItem`` (or to every operation):

``unprocessed``
    forward a random subset of the batch's requests, return the rest in
    ``UnprocessedItems`` with HTTP 200. What is reported unprocessed is never written.
``throttle``
    HTTP 400 ``ProvisionedThroughputExceededException`` or ``ThrottlingException``.
``error500``
    HTTP 500 ``InternalServerError``.
``not_json``
    HTTP 200 with an HTML body (a captive portal or a confused proxy): not an answer
    DynamoDB ever gives. Nothing is forwarded.
``json_list``
    HTTP 200 with the body ``[]`` (JSON, but not an object). Nothing is forwarded.
``throttle_text``
    HTTP 429 with a plain-text body (a gateway's rate limit, not DynamoDB's JSON).
``slow``
    delay before forwarding (independent of the other faults).
``ok``
    (scripts only) forward unchanged.

``down`` is a state, toggled at run time (:meth:`FaultProxy.set_down`): the listening
socket is closed (connections refused) and open connections are dropped; coming back
up reopens the same port.

Counters of injected faults and forwarded requests/items: :attr:`FaultProxy.counters`,
or ``GET /_faults`` (JSON). ``POST /_faults/down?for_s=N`` takes the proxy down for N
seconds; ``POST /_faults/reset`` zeroes the counters.

In-process::

    async with FaultProxy(upstream=moto.url, seed=1, unprocessed=0.3, throttle=0.1) as p:
        client = session.create_client("dynamodb", endpoint_url=p.url, ...)

CLI: ``python -m bench.faultproxy --upstream URL --port P --unprocessed 0.3 ...``.

Requests are forwarded with their headers unchanged (Host included, so a signature
stays consistent); a body the proxy rewrote no longer matches its SigV4 signature,
which moto and dynalite do not check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import signal
import uuid
import zlib
from collections import Counter
from collections.abc import Collection, Iterable
from typing import Any, Literal, get_args

import aiohttp
from aiohttp import web

from ingest.core.lifecycle import StartClose

__all__ = ["FAULT_KINDS", "FaultKind", "FaultProxy", "main"]

logger = logging.getLogger(__name__)

FaultKind = Literal[
    "ok", "unprocessed", "throttle", "error500", "not_json", "json_list", "throttle_text", "slow"
]
# The faults drawn by probability, in drawing order (``slow`` is drawn on its own).
_DRAWN = ("throttle", "error500", "not_json", "json_list", "throttle_text", "unprocessed")
FAULT_KINDS: frozenset[str] = frozenset(get_args(FaultKind))

_JSON = "application/x-amz-json-1.0"
_THROTTLES = (
    "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
    "com.amazon.coral.availability#ThrottlingException",
)
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)
# Set again by our own server; forwarding them would send duplicates.
_RESPONSE_SKIP = _HOP_BY_HOP | {"server", "date"}


def _aws_json(status: int, payload: dict[str, Any]) -> web.Response:
    body = json.dumps(payload).encode()
    headers = {
        "Content-Type": _JSON,
        "x-amzn-RequestId": uuid.uuid4().hex,
        "x-amz-crc32": str(zlib.crc32(body) & 0xFFFFFFFF),
    }
    return web.Response(status=status, body=body, headers=headers)


_BAD_ANSWERS = {
    "not_json": lambda: web.Response(
        status=200, text="<html><body>Please log in</body></html>", content_type="text/html"
    ),
    "json_list": lambda: web.Response(status=200, body=b"[]", content_type=_JSON),
    "throttle_text": lambda: web.Response(
        status=429, text="Too Many Requests", content_type="text/plain"
    ),
}


class FaultProxy(StartClose):
    """A fault-injecting proxy for the DynamoDB JSON protocol; an async context manager.

    Args:
        upstream: The DynamoDB-API endpoint, e.g. ``http://127.0.0.1:5000``.
        host: Address to listen on.
        port: Port to listen on; 0 picks a free one (kept when going down and up).
        seed: Seed of the RNG that draws faults and subsets (``None``: random).
        unprocessed: Probability that a BatchWriteItem is only partly processed.
        unprocessed_share: Probability that each request of such a batch is held back
            (at least one always is).
        throttle: Probability of a throttling error.
        error500: Probability of an HTTP 500.
        not_json: Probability of a 200 whose body is HTML.
        json_list: Probability of a 200 whose body is ``[]``.
        throttle_text: Probability of a 429 with a plain-text body.
        slow: Probability of a delay of ``slow_ms`` before forwarding.
        slow_ms: The delay.
        script: Faults for the next requests in scope, in order, before probabilities
            apply: kinds among ``ok``, ``unprocessed``, ``throttle``, ``error500``,
            ``not_json``, ``json_list``, ``throttle_text``, ``slow``.
        operations: Operations faults apply to (``X-Amz-Target`` suffixes); ``None``
            for all. Other operations are forwarded untouched.
    """

    def __init__(
        self,
        upstream: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = 0,
        unprocessed: float = 0.0,
        unprocessed_share: float = 0.5,
        throttle: float = 0.0,
        error500: float = 0.0,
        not_json: float = 0.0,
        json_list: float = 0.0,
        throttle_text: float = 0.0,
        slow: float = 0.0,
        slow_ms: float = 200.0,
        script: Iterable[str] = (),
        operations: Collection[str] | None = ("BatchWriteItem",),
    ) -> None:
        """Configure the proxy; nothing listens before :meth:`start`."""
        self.upstream = upstream.rstrip("/")
        self.host = host
        self._port = port
        self._rng = random.Random(seed)
        self.unprocessed = unprocessed
        self.unprocessed_share = unprocessed_share
        self.throttle = throttle
        self.error500 = error500
        self.not_json = not_json
        self.json_list = json_list
        self.throttle_text = throttle_text
        self.slow = slow
        self.slow_ms = slow_ms
        self.operations = frozenset(operations) if operations is not None else None
        self._script: list[str] = []
        self.push_script(*script)
        self._check_probabilities()
        self._counters: Counter[str] = Counter()
        self._down = False
        self._state: Literal["new", "started", "closed"] = "new"
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._client: aiohttp.ClientSession | None = None
        self._restore: asyncio.Task[None] | None = None

    def _check_probabilities(self) -> None:
        for name in (*_DRAWN, "unprocessed_share", "slow"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value!r}: a probability must be within [0, 1]")
        total = sum(getattr(self, name) for name in _DRAWN)
        if total > 1.0:
            raise ValueError(f"{' + '.join(_DRAWN)} = {total:g} exceeds 1")

    def push_script(self, *kinds: str) -> None:
        """Append faults for the next requests in scope (see ``script``).

        Raises:
            ValueError: An unknown kind.
        """
        unknown = [k for k in kinds if k not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; known: {sorted(FAULT_KINDS)}")
        self._script.extend(kinds)

    @property
    def port(self) -> int:
        """The port the proxy listens on (known once started)."""
        if self._state == "new":
            raise RuntimeError("the fault proxy has not been started yet")
        return self._port

    @property
    def url(self) -> str:
        """The proxy's endpoint URL, to give to botocore clients."""
        return f"http://{self.host}:{self.port}"

    endpoint_url = url

    @property
    def down(self) -> bool:
        """Whether the proxy is refusing connections."""
        return self._down

    @property
    def counters(self) -> dict[str, int]:
        """A snapshot of the counters: ``requests`` (and per operation:
        ``requests.BatchWriteItem``…), ``forwarded_requests``, ``forwarded_items``, ``unprocessed_responses``, ``unprocessed_items``,
        ``throttle`` (and per exception name), ``error500``, ``not_json``, ``json_list``,
        ``throttle_text``, ``slow``,
        ``down_periods``, ``down_dropped``, ``upstream_errors``."""
        return dict(self._counters)

    def reset_counters(self) -> None:
        """Zero every counter."""
        self._counters.clear()

    async def start(self) -> None:
        """Start listening.

        Raises:
            RuntimeError: Started twice, or closed.
        """
        if self._state != "new":
            raise RuntimeError(f"the fault proxy is {self._state}; create a new one")
        self._state = "started"
        self._client = aiohttp.ClientSession(
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=60),
        )
        # DynamoDB accepts BatchWriteItem bodies up to 16 MB.
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_get("/_faults", self._get_faults)
        app.router.add_post("/_faults/down", self._post_down)
        app.router.add_post("/_faults/reset", self._post_reset)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await self._listen()
        logger.info("fault proxy at %s -> %s", self.url, self.upstream)

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, self._port, reuse_address=True)
        await self._site.start()
        self._port = self._site.port

    async def set_down(self, down: bool, *, for_s: float | None = None) -> None:
        """Refuse connections (``True``) or accept them again (``False``).

        Args:
            down: The new state.
            for_s: With ``down=True``, come back up by itself after this many seconds.
        """
        if self._state != "started":
            raise RuntimeError(f"the fault proxy is {self._state}")
        await self._cancel_restore()
        if down and not self._down:
            self._down = True
            self._counters["down_periods"] += 1
            assert self._site is not None and self._runner is not None
            await self._site.stop()
            server = self._runner.server
            for conn in server.connections if server is not None else ():
                conn.force_close()
            logger.info("fault proxy %s is down", self.url)
        elif not down and self._down:
            await self._listen()
            self._down = False
            logger.info("fault proxy %s is up", self.url)
        if down and for_s is not None:
            self._restore = asyncio.create_task(self._up_after(for_s), name="faultproxy-restore")
            self._restore.add_done_callback(self._log_restore_failure)

    async def _up_after(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        self._restore = None  # done: set_down must not cancel the task running it
        await self.set_down(False)

    @staticmethod
    def _log_restore_failure(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("fault proxy could not come back up", exc_info=task.exception())

    async def _cancel_restore(self) -> None:
        task, self._restore = self._restore, None
        if task is not None and not task.done():
            task.cancel()
            # asyncio.wait does not raise the task's CancelledError, so a cancellation
            # of our own caller still propagates.
            await asyncio.wait([task])

    async def aclose(self) -> None:
        """Stop the proxy and its upstream client. Safe to repeat."""
        if self._state == "closed":
            return
        self._state = "closed"
        await self._cancel_restore()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.close()

    # --- control endpoints ---------------------------------------------------------

    async def _get_faults(self, request: web.Request) -> web.Response:
        config = {
            "upstream": self.upstream,
            "unprocessed": self.unprocessed,
            "unprocessed_share": self.unprocessed_share,
            "throttle": self.throttle,
            "error500": self.error500,
            "not_json": self.not_json,
            "json_list": self.json_list,
            "throttle_text": self.throttle_text,
            "slow": self.slow,
            "slow_ms": self.slow_ms,
            "operations": sorted(self.operations) if self.operations is not None else None,
            "script_left": list(self._script),
        }
        return web.json_response({"counters": self.counters, "down": self._down, "config": config})

    async def _post_down(self, request: web.Request) -> web.StreamResponse:
        try:
            for_s = float(request.query["for_s"])
        except (KeyError, ValueError):
            raise web.HTTPBadRequest(text="for_s=<seconds> is required") from None
        # Answer before going down: going down closes this very connection (after
        # flushing what was written).
        response = web.json_response({"down_for_s": for_s})
        await response.prepare(request)
        await response.write_eof()
        await self.set_down(True, for_s=for_s)
        return response

    async def _post_reset(self, request: web.Request) -> web.Response:
        self.reset_counters()
        return web.json_response({"counters": self.counters})

    # --- the proxy -------------------------------------------------------------------

    def _draw(self, operation: str) -> tuple[bool, str]:
        """Return (delay first?, fault kind) for one request."""
        if self.operations is not None and operation not in self.operations:
            return False, "ok"
        if self._script:
            kind = self._script.pop(0)
            return kind == "slow", kind
        delay = self.slow > 0 and self._rng.random() < self.slow
        r = self._rng.random()
        edge = 0.0
        for kind in _DRAWN:
            edge += getattr(self, kind)
            if r < edge:
                return delay, kind
        return delay, "ok"

    def _drop(self, request: web.Request) -> web.Response:
        self._counters["down_dropped"] += 1
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=503)  # never reaches the client: the socket is gone

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self._counters["requests"] += 1
        if self._down:
            return self._drop(request)
        body = await request.read()
        operation = request.headers.get("X-Amz-Target", "").rpartition(".")[2]
        self._counters["requests." + operation] += 1
        delay, kind = self._draw(operation)
        if delay:
            self._counters["slow"] += 1
            epoch = self._counters["down_periods"]
            await asyncio.sleep(self.slow_ms / 1000)
            if self._down or self._counters["down_periods"] != epoch:
                # Went down meanwhile: this request's connection is gone; never forward it.
                return self._drop(request)
        if kind == "throttle":
            exc_type = self._rng.choice(_THROTTLES)
            self._counters["throttle"] += 1
            self._counters["throttle." + exc_type.rpartition("#")[2]] += 1
            return _aws_json(400, {"__type": exc_type, "message": "Injected by the fault proxy"})
        if kind in ("not_json", "json_list", "throttle_text"):
            self._counters[kind] += 1
            return _BAD_ANSWERS[kind]()
        if kind == "error500":
            self._counters["error500"] += 1
            return _aws_json(
                500,
                {
                    "__type": "com.amazonaws.dynamodb.v20120810#InternalServerError",
                    "message": "Internal server error (injected by the fault proxy)",
                },
            )
        if operation == "BatchWriteItem":
            try:
                payload = json.loads(body)
                items = payload["RequestItems"]
                n_items = sum(len(reqs) for reqs in items.values())
            except (ValueError, KeyError, TypeError, AttributeError):
                payload = None  # malformed: let the upstream answer it
            if payload is not None and kind == "unprocessed" and n_items > 0:
                return await self._partial(request, payload, items)
            status, headers, data = await self._forward(request, body)
            if payload is not None and status < 300:
                self._counters["forwarded_items"] += n_items
            return web.Response(status=status, headers=headers, body=data)
        status, headers, data = await self._forward(request, body)
        return web.Response(status=status, headers=headers, body=data)

    async def _forward(self, request: web.Request, body: bytes) -> tuple[int, Any, bytes]:
        assert self._client is not None
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
        try:
            async with self._client.request(
                request.method, self.upstream + request.path_qs, data=body, headers=headers
            ) as up:
                data = await up.read()
                out = [(k, v) for k, v in up.headers.items() if k.lower() not in _RESPONSE_SKIP]
                self._counters["forwarded_requests"] += 1
                return up.status, out, data
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._counters["upstream_errors"] += 1
            logger.warning("fault proxy: upstream %s failed: %r", self.upstream, exc)
            payload = {"__type": "ProxyUpstreamError", "message": f"upstream failed: {exc!r}"}
            body = json.dumps(payload).encode()
            return 502, [("Content-Type", _JSON)], body

    async def _partial(
        self, request: web.Request, payload: dict[str, Any], items: dict[str, list[Any]]
    ) -> web.StreamResponse:
        """Forward a random subset of the batch; report the rest as UnprocessedItems."""
        flat = [(table, req) for table, reqs in items.items() for req in reqs]
        held = {i for i in range(len(flat)) if self._rng.random() < self.unprocessed_share}
        if not held:
            held = {self._rng.randrange(len(flat))}
        forward: dict[str, list[Any]] = {}
        unprocessed: dict[str, list[Any]] = {}
        for i, (table, req) in enumerate(flat):
            (unprocessed if i in held else forward).setdefault(table, []).append(req)
        result: dict[str, Any] = {}
        if forward:
            body = json.dumps({**payload, "RequestItems": forward}).encode()
            status, headers, data = await self._forward(request, body)
            if status != 200:
                # The whole call failed: the client retries all of it; nothing held back
                # was written, so reporting nothing extra is exact.
                return web.Response(status=status, headers=headers, body=data)
            self._counters["forwarded_items"] += len(flat) - len(held)
            result = json.loads(data)
        self._counters["unprocessed_responses"] += 1
        self._counters["unprocessed_items"] += len(held)
        merged = result.setdefault("UnprocessedItems", {})
        for table, reqs in unprocessed.items():
            merged.setdefault(table, []).extend(reqs)
        return _aws_json(200, result)


async def _serve(args: argparse.Namespace) -> None:
    proxy = FaultProxy(
        args.upstream,
        host=args.host,
        port=args.port,
        seed=args.seed,
        unprocessed=args.unprocessed,
        unprocessed_share=args.unprocessed_share,
        throttle=args.throttle,
        error500=args.error500,
        not_json=args.not_json,
        json_list=args.json_list,
        throttle_text=args.throttle_text,
        slow=args.slow,
        slow_ms=args.slow_ms,
        script=[k for k in args.script.split(",") if k],
        operations=None if args.all_operations else ("BatchWriteItem",),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with proxy:
        print(f"fault proxy listening on {proxy.url} -> {proxy.upstream}", flush=True)
        await stop.wait()
        print(json.dumps(proxy.counters), flush=True)


def main(argv: list[str] | None = None) -> None:
    """Run the proxy until SIGINT or SIGTERM, then print the counters as JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.faultproxy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--upstream", required=True, help="DynamoDB-API endpoint URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unprocessed", type=float, default=0.0)
    parser.add_argument("--unprocessed-share", type=float, default=0.5)
    parser.add_argument("--throttle", type=float, default=0.0)
    parser.add_argument("--error500", type=float, default=0.0)
    parser.add_argument("--not-json", type=float, default=0.0)
    parser.add_argument("--json-list", type=float, default=0.0)
    parser.add_argument("--throttle-text", type=float, default=0.0)
    parser.add_argument("--slow", type=float, default=0.0)
    parser.add_argument("--slow-ms", type=float, default=200.0)
    parser.add_argument("--script", default="", help="comma-separated fault kinds, in order")
    parser.add_argument(
        "--all-operations", action="store_true", help="inject faults into every operation"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
