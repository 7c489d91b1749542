"""Subprocesses of a load run (sink, workers, publisher), always stopped, and their probes.

:class:`ManagedProcess` is an async context manager: leaving it stops the
process (SIGTERM, then SIGKILL after a deadline) even when the caller is being
cancelled, so a run never leaves a process behind. Its stderr (and stdout,
unless captured for a ``READY`` line) goes to a log file under the run's
output directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.errors import BenchError
from ingest.core.lifecycle import StartClose

__all__ = ["ManagedProcess", "get_json", "get_text", "parse_prometheus"]

log = logging.getLogger(__name__)


class ManagedProcess(StartClose):
    """One subprocess with a log file, stopped on exit from its context.

    Args:
        name: Short name for messages and the log file.
        argv: Program and arguments.
        log_dir: Directory of ``{name}.log``.
        env: Environment (None: inherit).
        capture_stdout: Keep stdout as a pipe (for :meth:`wait_line`), else log it.
        stop_timeout_s: SIGTERM-to-SIGKILL deadline.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        capture_stdout: bool = False,
        stop_timeout_s: float = 20.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self.env = dict(env) if env is not None else None
        self.capture_stdout = capture_stdout
        self.stop_timeout_s = stop_timeout_s
        self._proc: asyncio.subprocess.Process | None = None
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self.name} has not been started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def aclose(self) -> None:
        """:meth:`stop` (``async with`` does it on the way out)."""
        await self.stop()

    async def start(self) -> None:
        """Start the process (its log file is appended to)."""
        if self._proc is not None:
            raise RuntimeError(f"{self.name} was started already")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as logf:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if self.capture_stdout else logf,
                stderr=logf,
                env=self.env,
            )
        log.debug("%s started, pid %d: %s", self.name, self._proc.pid, " ".join(self.argv))

    async def wait_line(self, prefix: str, timeout_s: float) -> str:
        """Read stdout until a line starting with ``prefix``; return it.

        Raises:
            BenchError: The process exited, or the deadline passed, first.
        """
        proc = self._proc
        if proc is None or proc.stdout is None:
            raise RuntimeError(f"{self.name}: stdout is not captured")
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    line = await proc.stdout.readline()
                    if not line:
                        break
                    text = line.decode(errors="replace").strip()
                    if text.startswith(prefix):
                        return text
        except TimeoutError:
            raise BenchError(
                f"{self.name} did not print {prefix!r} within {timeout_s:g} s; see {self.log_path}"
            ) from None
        await proc.wait()
        raise BenchError(
            f"{self.name} exited with status {proc.returncode} before {prefix!r}; see {self.log_path}"
        )

    async def read_rest(self) -> str:
        """The rest of the captured stdout (after the process has exited)."""
        if self._proc is None or self._proc.stdout is None:
            return ""
        return (await self._proc.stdout.read()).decode(errors="replace")

    async def wait(self, timeout_s: float | None = None) -> int:
        """Wait for the process to exit; return its status.

        Raises:
            TimeoutError: It is still running after ``timeout_s``.
        """
        if self._proc is None:
            raise RuntimeError(f"{self.name} has not been started")
        async with asyncio.timeout(timeout_s):
            self.returncode = await self._proc.wait()
        return self.returncode

    async def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after ``stop_timeout_s``; return the exit status. Idempotent."""
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(self.stop_timeout_s):
                    await proc.wait()
            except TimeoutError:
                log.warning(
                    "%s did not stop within %.0f s; killing it", self.name, self.stop_timeout_s
                )
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            except asyncio.CancelledError:
                # Our caller is being cancelled: leave nothing behind, then let it go on.
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                raise
        self.returncode = proc.returncode
        return self.returncode


async def get_text(session: aiohttp.ClientSession, url: str, *, timeout_s: float = 5.0) -> str:
    """GET ``url`` and return the body; raise on a non-2xx status."""
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
        resp.raise_for_status()
        return await resp.text()


async def get_json(
    session: aiohttp.ClientSession, url: str, *, timeout_s: float = 5.0
) -> dict[str, Any]:
    """GET ``url`` and return its JSON object."""
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
        resp.raise_for_status()
        doc = orjson.loads(await resp.read())
    if not isinstance(doc, dict):
        raise BenchError(f"{url} did not return a JSON object")
    return doc


def parse_prometheus(text: str, names: Iterable[str]) -> dict[str, float]:
    """Sum each named metric over its label sets in a Prometheus text exposition.

    Args:
        text: The ``/metrics`` body.
        names: Sample names, e.g. ``iot_ingest_items_written_total``.

    Returns:
        Name to value (0.0 for names not present).
    """
    wanted = set(names)
    out = dict.fromkeys(wanted, 0.0)
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=-1)
        if name_end < 0:
            continue
        name = line[:name_end]
        if name in wanted:
            try:
                out[name] += float(line.rsplit(" ", 1)[1])
            except ValueError:
                continue
    return out
