"""Lifecycles: the async-context-manager shape of every resource, and the stop of a whole
command on SIGTERM/SIGINT within a deadline.

Every resource that holds something open (a connection, a pool, a server, a process) is an
:class:`AsyncResource`: an idempotent ``aclose()``, and ``async with`` closing it on the way
out. One that must also be started is a :class:`StartClose`: ``async with`` runs
``start()`` and closes what a failed start left open. Nothing else writes ``__aenter__``
and ``__aexit__``.

A long-running command (``run``, ``demo``) is one coroutine given a ``stop`` event
(:func:`run_until_signalled`). The first SIGTERM or SIGINT sets it and starts the clock:
the command stops its intake, drains and closes what it opened. Past its deadline the
coroutine is cancelled, which closes what is left the hard way (an embedded server is
killed, not asked). Should even that not end it within :data:`CANCEL_GRACE_S` (a
coroutine that swallows its cancellation, a blocking call on the loop), a watchdog thread
exits the process at once, and its embedded servers die with it (:mod:`ingest.trial.servers`
ties them to their parent's life). The command ends on the first signal in every state,
then: starting, stuck reconnecting, running or draining. The watchdog is disarmed once
the command has returned, so a command run in-process (tests) never ends its host.

While starting, :func:`unless_stopped` abandons a step (a server still coming up, a
connection, the ingest service's first DynamoDB calls) as soon as ``stop`` is set, so a
stop never waits for a startup to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

__all__ = [
    "CANCEL_GRACE_S",
    "AsyncResource",
    "StartClose",
    "StopRequested",
    "run_until_signalled",
    "unless_stopped",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

CANCEL_GRACE_S = 3.0
"""After the deadline, how long a cancelled command has to unwind before the process exits."""

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class AsyncResource:
    """Base: ``async with`` gives the resource, and closes it (``aclose()``) on the way out.

    Subclasses implement an idempotent ``aclose``.
    """

    __slots__ = ()

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class StartClose(AsyncResource):
    """Base: ``async with`` calls ``start()``, then ``aclose()`` (also when start fails).

    Subclasses implement ``start`` and an idempotent ``aclose``.
    """

    __slots__ = ()

    async def start(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self


class StopRequested(Exception):
    """``stop`` was set while a startup step was under way; the step was abandoned."""


async def unless_stopped(stop: asyncio.Event, step: Awaitable[T]) -> T:
    """Await ``step``, unless ``stop`` is set first: then cancel it and raise :class:`StopRequested`.

    The step is cancelled and awaited, so whatever it was starting cleans up (a server
    process is killed) before this returns. A step that finishes is never discarded, even
    when ``stop`` is set in the same instant: the caller checks ``stop`` next.
    """
    task = asyncio.ensure_future(step)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when our caller is cancelled: the step must not outlive it
        waiter.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait([task])
    if task.cancelled():
        raise StopRequested
    return task.result()


def _exit_now(what: str, after_s: float) -> None:
    """The last resort, from a thread: the loop did not end the command."""
    with contextlib.suppress(OSError, ValueError):  # stderr may be closed or replaced
        os.write(
            sys.stderr.fileno(),
            f"{what}: still not stopped {after_s:g} s after the signal; exiting now\n".encode(),
        )
    os._exit(1)


async def run_until_signalled(
    main: Callable[[asyncio.Event], Coroutine[Any, Any, int]],
    *,
    deadline_s: float,
    what: str = "iot-ingest",
) -> int:
    """Run ``main(stop)`` until it returns; SIGTERM/SIGINT set ``stop``.

    Args:
        main: The command; it must return soon after ``stop`` is set.
        deadline_s: How long after the first signal ``main`` may take; then it is
            cancelled, and :data:`CANCEL_GRACE_S` later the process exits.
        what: Its name in log lines.

    Returns:
        ``main``'s exit status, or 1 if it had to be cancelled.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    task = asyncio.create_task(main(stop), name=what)
    deadline: asyncio.TimerHandle | None = None
    watchdog: list[threading.Timer] = []
    forced: list[str] = []

    def force(reason: str) -> None:
        if not task.done() and not forced:
            forced.append(reason)
            log.error("%s: %s: cancelling what is left (servers are killed)", what, reason)
            task.cancel()

    def on_signal(sig: signal.Signals) -> None:
        nonlocal deadline
        if stop.is_set():
            # Not a way to hurry: uvicorn (the demo's API server) re-raises the signal it
            # saw when it stops, so a repeat can come from within. The deadline holds.
            log.info("%s: %s again: already stopping", what, sig.name)
            return
        log.info("%s: %s: stopping (within %g s)", what, sig.name, deadline_s)
        stop.set()
        deadline = loop.call_later(deadline_s, force, f"not stopped within {deadline_s:g} s")
        after_s = deadline_s + CANCEL_GRACE_S
        watchdog.append(threading.Timer(after_s, _exit_now, (what, after_s)))
        watchdog[0].daemon = True
        watchdog[0].start()

    installed = []
    for sig in _STOP_SIGNALS:
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError):  # no signals here (Windows, a thread)
            continue
        installed.append(sig)
    try:
        await asyncio.wait([task])
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        if deadline is not None:
            deadline.cancel()
        if not task.done():  # we are cancelled ourselves: so is the command
            task.cancel()
            await asyncio.wait([task])
        for timer in watchdog:  # the command has ended: nothing left to force
            timer.cancel()
    if forced and (task.cancelled() or task.exception() is None):
        return 1
    return task.result()
