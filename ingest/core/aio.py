"""Running the asyncio entry points: the uvloop runner, stop signals, exception-group leaves."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["install_stop_signals", "leaf_exceptions", "run", "run_async"]

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on uvloop (asyncio's own loop where uvloop is missing).

    The one runner of every command (service, archiver, simulator, bench tools), so that they
    all measure and behave on the same event loop.
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def run_async(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``main()`` with :func:`run`; its result is the exit code."""
    return int(run(main()))


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)


def leaf_exceptions(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``[exc]``."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in leaf_exceptions(e)]
    return [exc]
