"""Run ``iot-ingest`` commands as real subprocesses, and watch their process trees.

* :func:`path_without` builds a ``PATH`` on which a program (``mosquitto``) is not found:
  every directory that holds it is replaced by a directory of symlinks to everything
  else in it, so the rest of the machine's tools stay reachable.
* :func:`trial_env` is the environment of a new user's machine: no AWS credentials
  anywhere (trial mode then starts moto), the given ``PATH``.
* :func:`descendants` and :func:`still_running` follow processes by PID *and* start time
  (``/proc/PID/stat``), so a PID reused by the kernel is never mistaken for the old one;
  a zombie counts as gone (it no longer runs; reaping it is its new parent's business).
* :class:`Cli` starts ``python -m ingest.cli ...`` in a session of its own (as a shell
  job is), collects its stderr, waits for log lines, signals it and always kills it at
  the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from pathlib import Path

from ingest.core.lifecycle import StartClose

REPO_ROOT = Path(__file__).resolve().parents[2]

Proc = tuple[int, int]
"""A process: (pid, start time in clock ticks since boot)."""


def path_without(program: str, scratch: Path) -> str:
    """``PATH`` as it is, minus ``program`` (symlink farms under ``scratch``)."""
    dirs: list[str] = []
    for i, d in enumerate(os.environ.get("PATH", os.defpath).split(os.pathsep)):
        here = Path(d)
        if not (here / program).exists():
            dirs.append(d)
            continue
        farm = scratch / f"path-{i}"
        farm.mkdir(parents=True, exist_ok=True)
        for entry in here.iterdir():
            if not entry.name.startswith(program):
                (farm / entry.name).symlink_to(entry)
        dirs.append(str(farm))
    return os.pathsep.join(dirs)


def trial_env(path: str, home: Path) -> dict[str, str]:
    """A new user's environment: no AWS credentials or config, ``PATH`` as given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "IOT_INGEST_"))}
    env.update(
        PATH=path,
        HOME=str(home),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "no-credentials"),
        AWS_CONFIG_FILE=str(home / "no-config"),
        AWS_EC2_METADATA_DISABLED="true",
        PYTHONUNBUFFERED="1",
    )
    return env


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, start time, state) of a process, or None if there is none."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may hold spaces
    return int(fields[1]), int(fields[19]), fields[0]


def process(pid: int) -> Proc:
    """The running process ``pid`` as (pid, start time)."""
    st = _stat(pid)
    assert st is not None, f"no process {pid}"
    return pid, st[1]


def descendants(pid: int) -> dict[Proc, str]:
    """Every live descendant of ``pid``, with its command name."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children.setdefault(st[0], []).append(int(entry.name))
    found: dict[Proc, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        st = _stat(child)
        if st is None or st[2] == "Z":
            continue
        try:
            name = Path(f"/proc/{child}/comm").read_text().strip()
        except FileNotFoundError:
            continue
        found[(child, st[1])] = name
        todo += children.get(child, [])
    return found


def still_running(procs: dict[Proc, str]) -> dict[Proc, str]:
    """Those of ``procs`` that still run (same PID and start time, not a zombie)."""
    out: dict[Proc, str] = {}
    for (pid, start), name in procs.items():
        st = _stat(pid)
        if st is not None and st[1] == start and st[2] != "Z":
            out[(pid, start)] = name
    return out


async def wait_gone(procs: dict[Proc, str], timeout_s: float) -> dict[Proc, str]:
    """Wait up to ``timeout_s`` for ``procs`` to end; return those still running."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = still_running(procs)
        if not alive or time.monotonic() >= deadline:
            return alive
        await asyncio.sleep(0.1)


class Cli(StartClose):
    """``python -m ingest.cli ARGS`` as a subprocess in a session of its own."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT):
        self.args = args
        self.env = env
        self.cwd = cwd
        self.lines: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._new_line = asyncio.Event()

    @property
    def proc(self) -> asyncio.subprocess.Process:
        assert self._proc is not None, "not started"
        return self._proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def text(self) -> str:
        return "".join(self.lines)

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ingest.cli",
            *self.args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        self._reader = asyncio.create_task(self._read(), name="cli-stderr")

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace"))
            self._new_line.set()
        self._new_line.set()

    async def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        """Wait for a line of stderr matching ``pattern``; fail with the output so far."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if m := regex.search(line):
                    return m
            seen = len(self.lines)
            if self._reader is not None and self._reader.done():
                raise AssertionError(f"exited before logging {pattern!r}:\n{self.text}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} within {timeout_s:g} s:\n{self.text}")
            self._new_line.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_line.wait(), left)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout_s: float) -> int:
        """The exit status, within ``timeout_s`` (fails with the output otherwise)."""
        try:
            status = await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            raise AssertionError(f"still running after {timeout_s:g} s:\n{self.text}") from None
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)
        return status

    async def aclose(self) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            # Tidy up after a failed test: its servers too, if they are in sessions of their own.
            left = descendants(proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            for pid, _ in still_running(left):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait([self._reader])
