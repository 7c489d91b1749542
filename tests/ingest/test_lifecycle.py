"""Stopping a command: a startup step abandoned on ``stop``, the deadline after the first
signal, and the last resort when even cancelling does not end it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import pytest

from ingest.core.lifecycle import CANCEL_GRACE_S, StopRequested, run_until_signalled, unless_stopped


async def test_a_step_is_abandoned_when_stop_is_set_and_cleans_up() -> None:
    stop = asyncio.Event()
    cleaned: list[str] = []

    async def starting() -> int:
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.append("killed the server")
        return 1

    asyncio.get_running_loop().call_later(0.05, stop.set)
    with pytest.raises(StopRequested):
        await asyncio.wait_for(unless_stopped(stop, starting()), 5)
    assert cleaned == ["killed the server"]


async def test_a_finished_step_is_kept_and_its_error_propagates() -> None:
    stop = asyncio.Event()

    async def answer() -> int:
        return 42

    async def broken() -> int:
        raise ValueError("port taken")

    assert await unless_stopped(stop, answer()) == 42
    with pytest.raises(ValueError, match="port taken"):
        await unless_stopped(stop, broken())


async def test_cancelling_the_caller_cancels_the_step() -> None:
    stop = asyncio.Event()
    step_cancelled = asyncio.Event()

    async def starting() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            step_cancelled.set()
            raise

    caller = asyncio.create_task(unless_stopped(stop, starting()))
    await asyncio.sleep(0.05)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert step_cancelled.is_set()


async def test_the_first_signal_sets_stop_and_the_command_returns_its_status() -> None:
    async def command(stop: asyncio.Event) -> int:
        await stop.wait()
        return 0

    asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(run_until_signalled(command, deadline_s=5), 5) == 0


async def test_a_command_past_its_deadline_is_cancelled_and_exits_1() -> None:
    seen: list[str] = []

    async def deaf(stop: asyncio.Event) -> int:
        try:
            await asyncio.sleep(30)  # ignores stop
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return 0

    loop = asyncio.get_running_loop()
    loop.call_later(0.05, os.kill, os.getpid(), signal.SIGINT)
    loop.call_later(0.2, os.kill, os.getpid(), signal.SIGINT)  # a repeat does not hurry it
    t0 = time.monotonic()
    assert await asyncio.wait_for(run_until_signalled(deaf, deadline_s=0.5), 5) == 1
    assert 0.5 <= time.monotonic() - t0 < 2
    assert seen == ["cancelled"]


_STUBBORN = """
import asyncio
from ingest.core.lifecycle import run_until_signalled

async def stubborn(stop):
    print("up", flush=True)
    while True:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass  # what the watchdog exists for

print(asyncio.run(run_until_signalled(stubborn, deadline_s=0.5)))
"""


async def test_a_command_that_will_not_unwind_exits_at_once_after_the_grace() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _STUBBORN,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"up\n"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 0.5 + CANCEL_GRACE_S + 5)
        assert proc.returncode == 1
        assert time.monotonic() - t0 >= 0.5 + CANCEL_GRACE_S - 0.1
        assert b"still not stopped 3.5 s after the signal; exiting now" in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
