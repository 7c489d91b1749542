"""The dead-letter spool on a failing disk: all-or-nothing appends, torn lines, durable files.

The real spool writes real files under ``tmp_path``; faults are injected at the OS
boundary (:class:`Disk` patches ``os.write``/``os.fsync`` for descriptors under the
spool only): a disk of a given capacity answers a write larger than its free space
with a short write and the next one with ``ENOSPC``, as the kernel does; an fsync
can fail with ``EIO``. The torn files the readers must survive are built the way a
process killed mid-write (or the spool before the roll-back) leaves them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from ingest.cli.main import main as cli_main
from ingest.core.metrics import Metrics
from ingest.pipeline.acks import AckTracker, Pending
from ingest.pipeline.deadletters import DeadLetterSpool
from ingest.storage.spool import DeadLetter, TornLine, iter_dead_letters
from tests.ingest.harness import wait_until
from tests.ingest.spoolkit import DAY_MS, FILE, TOPIC, Disk, letter, torn_spool


class Spool:
    """A running spool with an ack tracker recording the packet ids it acknowledges."""

    def __init__(self, directory: Path) -> None:
        self.acked: list[int] = []
        self.on_ack: Callable[[], None] = lambda: None
        self.acks = AckTracker(self._ack)
        self.metrics = Metrics()
        self.spool = DeadLetterSpool(directory, acks=self.acks, metrics=self.metrics)
        self.directory = directory
        self._next_id = 0

    def _ack(self, ids: list[int]) -> None:
        self.on_ack()
        self.acked.extend(ids)

    async def put(self, entries: list[DeadLetter]) -> list[int]:
        """Dead-letter each entry as its own QoS 1 message; returns their packet ids."""
        ids = []
        for e in entries:
            self._next_id += 1
            p: Pending = self.acks.add(TOPIC, self._next_id, 1, self.acks.epoch, 0, 1)
            await self.spool.put(e, [p])
            ids.append(self._next_id)
        return ids

    def metric(self, name: str) -> float:
        return self.metrics.registry.get_sample_value(f"iot_ingest_{name}") or 0.0


@pytest_asyncio.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    s = Spool(tmp_path / "data" / "deadletters")
    task = asyncio.create_task(s.spool.run(), name="deadletter-spool")
    try:
        yield s
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


# -- the writer: all or nothing -------------------------------------------------------------


async def test_a_write_cut_short_by_a_full_disk_is_rolled_back_and_written_whole_once_space_returns(
    spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = Disk(tmp_path, monkeypatch)
    first = await spool.put([letter(i) for i in range(3)])
    await wait_until(lambda: spool.acked == first, 10, "first group acknowledged")
    path = spool.directory / FILE
    good_size = path.stat().st_size

    disk.capacity = disk._used() + 150  # room for one letter and a half of the next group
    second = await spool.put([letter(i) for i in range(3, 8)])
    await wait_until(lambda: spool.metric("deadletter_errors_total") >= 3, 10, "failed writes")

    assert disk.short_writes >= 1, "the disk never cut a write short: the test proves nothing"
    assert spool.acked == first, "acknowledged a letter the spool could not keep"
    assert not spool.spool.healthy and "No space left" in (spool.spool.last_error or "")
    assert path.stat().st_size == good_size, "a failed write left bytes behind"
    assert spool.metric("deadletter_rollbacks_total") >= 3
    torn: list[TornLine] = []
    assert [dl for _, dl in iter_dead_letters(spool.directory, torn=torn)] == [
        letter(i) for i in range(3)
    ]
    assert torn == []

    disk.capacity = None  # space returns
    await wait_until(lambda: spool.acked == first + second, 10, "second group acknowledged")
    assert spool.spool.healthy
    assert lines(path) == [letter(i).to_json() + b"\n" for i in range(8)], "each letter once, whole"


async def test_a_failed_fsync_is_rolled_back_so_the_retry_does_not_duplicate_letters(
    spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = Disk(tmp_path, monkeypatch)
    disk.fsync_errors = (
        2  # the data was written, then fsync said EIO (and again, maybe in the roll-back)
    )
    ids = await spool.put([letter(i) for i in range(4)])
    await wait_until(lambda: spool.acked == ids, 10, "acknowledged once durable")
    assert disk.fsync_errors == 0
    assert spool.metric("deadletter_errors_total") >= 1
    assert lines(spool.directory / FILE) == [letter(i).to_json() + b"\n" for i in range(4)]


async def test_a_group_over_two_day_files_is_rolled_back_in_both(
    spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = Disk(tmp_path, monkeypatch)
    next_day = DAY_MS + 86_400_000
    disk.capacity = len(letter(0).to_json()) * 2 + 100  # day one fits whole, day two does not
    group = [letter(0), letter(1), letter(2, next_day), letter(3, next_day)]
    ids = await spool.put(group)
    await wait_until(lambda: spool.metric("deadletter_errors_total") >= 2, 10, "failed writes")
    assert spool.acked == []
    assert (spool.directory / FILE).stat().st_size == 0, "day one kept letters of a failed group"
    disk.capacity = None
    await wait_until(lambda: spool.acked == ids, 10, "acknowledged")
    assert lines(spool.directory / FILE) == [letter(i).to_json() + b"\n" for i in (0, 1)]
    day_two = spool.directory / "deadletters-2025-11-23.jsonl"
    assert lines(day_two) == [letter(i, next_day).to_json() + b"\n" for i in (2, 3)]


async def test_a_torn_tail_left_by_a_crash_is_sealed_so_the_next_letter_stays_whole(
    spool: Spool,
) -> None:
    spool.directory.mkdir(parents=True, exist_ok=True)  # the spool may have made it already
    path = spool.directory / FILE
    whole = letter(0).to_json() + b"\n"
    fragment = letter(1).to_json()[:40]  # killed mid-write: never acknowledged
    path.write_bytes(whole + fragment)
    ids = await spool.put([letter(2)])
    await wait_until(lambda: spool.acked == ids, 10, "acknowledged")
    torn: list[TornLine] = []
    assert [dl for _, dl in iter_dead_letters(spool.directory, torn=torn)] == [letter(0), letter(2)]
    assert torn == [TornLine(path, len(whole), len(fragment) + 1, torn[0].error)]
    assert lines(path) == [whole, fragment + b"\n", letter(2).to_json() + b"\n"]


# -- durable files --------------------------------------------------------------------------


async def test_a_new_spool_file_and_directory_are_fsynced_in_their_directories_before_the_ack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = Disk(tmp_path, monkeypatch)
    spool = Spool(tmp_path / "data" / "deadletters")
    acked_at: list[int] = []  # how many fsyncs had returned when each ack went out
    spool.on_ack = lambda: acked_at.append(len(disk.fsyncs))
    task = asyncio.create_task(spool.spool.run(), name="deadletter-spool")
    try:
        ids = await spool.put([letter(0)])
        await wait_until(lambda: spool.acked == ids, 10, "acknowledged")
        before_ack = disk.fsyncs[: acked_at[0]]
        data_dir, directory = str(tmp_path / "data"), str(spool.directory)
        path = str(spool.directory / FILE)
        assert str(tmp_path) in before_ack, "data/ created but its parent not fsynced"
        assert data_dir in before_ack, "deadletters/ created but data/ not fsynced"
        assert directory in before_ack, "spool file created but its directory not fsynced"
        assert path in before_ack
        # An append to a file already durable in its directory needs no directory fsync.
        disk.fsyncs.clear()
        more = await spool.put([letter(1)])
        await wait_until(lambda: spool.acked == ids + more, 10, "acknowledged")
        assert disk.fsyncs == [path]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- readers --------------------------------------------------------------------------------


def test_readers_skip_and_report_torn_lines_and_keep_every_whole_letter(tmp_path: Path) -> None:
    path, expected, torn_at = torn_spool(tmp_path / "deadletters")
    torn: list[TornLine] = []
    got = [dl for _, dl in iter_dead_letters(tmp_path / "deadletters", torn=torn)]
    assert got == expected
    assert [(t.path, t.offset, t.length) for t in torn] == [(path, o, n) for o, n in torn_at]


def test_deadletters_list_reports_torn_lines_with_file_and_offset_and_lists_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, expected, torn_at = torn_spool(tmp_path / "deadletters")
    assert cli_main(["deadletters", "list", "--data-dir", str(tmp_path), "--json"]) == 0
    out = capsys.readouterr()
    assert [DeadLetter.from_json(line.encode()) for line in out.out.splitlines()] == expected
    for offset, _ in torn_at:
        assert f"skipped a torn line at {path}:{offset}" in out.err
    where = ", ".join(f"{FILE}:{o}" for o, _ in torn_at)
    assert f"8 dead letters; 2 torn lines skipped ({where})" in out.err


def test_a_payload_that_looks_like_a_letter_start_is_not_cut_when_recovering_a_glued_letter(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "deadletters"
    directory.mkdir()
    tricky = DeadLetter(DAY_MS, "decode", "r", TOPIC, b'{"time_ms": 1, "stage": "x"}')
    fragment = letter(0).to_json()[:20]
    (directory / FILE).write_bytes(fragment + tricky.to_json() + b"\n")
    torn: list[TornLine] = []
    assert [dl for _, dl in iter_dead_letters(directory, torn=torn)] == [tricky]
    assert [(t.offset, t.length) for t in torn] == [(0, 20)]
