"""``deadletters replay`` against a real Mosquitto: torn spools, a running service, two at once.

Replayed letters go to a topic of the test's own (``--to-topic``) that the service does
not consume, where a watcher counts every message the replay published, so "published
exactly once" is checked from the broker's side, not from the replay's word.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest

from ingest.cli.main import main as cli_main
from ingest.config import Config
from ingest.mqtt.client import MqttConnection, MqttSettings
from ingest.pipeline.replay import replay
from ingest.pipeline.service import IngestService
from ingest.storage.spool import DeadLetter, iter_dead_letters, scan_letters
from tests.ingest.harness import counter, running, wait_until
from tests.ingest.spoolkit import FILE, TOPIC, letter, torn_spool


def broker_settings(url: str, client_id: str) -> MqttSettings:
    host, port = url.removeprefix("mqtt://").split(":")
    return MqttSettings(host=host, port=int(port), client_id=client_id[:60], clean_start=True)


@asynccontextmanager
async def watching(url: str, topic_filter: str) -> AsyncIterator[list[bytes]]:
    """Every payload published on ``topic_filter`` (QoS 1) while inside."""
    seen: list[bytes] = []
    conn = MqttConnection(
        broker_settings(url, f"watch-{time.monotonic_ns()}"),
        lambda chunk: seen.extend(p for _, p, _, _ in chunk),
    )
    async with conn:
        await conn.subscribe([(topic_filter, 1)])
        yield seen


def replayed_letters(directory: Path) -> list[DeadLetter]:
    """The letters of every ``.replayed`` file, plus those a ``.progress`` marks replayed."""
    out: list[DeadLetter] = []
    for path in sorted(directory.glob("*.replayed")):
        with path.open("rb") as f:
            out += [
                e
                for _, e in scan_letters(f, path, path.stat().st_size)
                if isinstance(e, DeadLetter)
            ]
    for progress in sorted(directory.glob("*.progress")):
        path = progress.with_name(progress.name.removesuffix(".progress"))
        done = {int(x) for x in progress.read_bytes().split()}
        with path.open("rb") as f:
            out += [
                e
                for at, e in scan_letters(f, path, path.stat().st_size)
                if at in done and isinstance(e, DeadLetter)
            ]
    return out


def fingerprint(directory: Path) -> dict[str, tuple[int, str]]:
    """Each ``.replayed`` file: its inode and a hash of its bytes."""
    return {
        p.name: (p.stat().st_ino, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in directory.glob("*.replayed")
    }


async def test_replay_skips_and_reports_torn_lines_and_republishes_every_whole_letter(
    mosquitto: object, unique_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = mosquitto.url  # type: ignore[attr-defined]
    directory = tmp_path / "deadletters"
    path, expected, torn_at = torn_spool(directory)
    original = path.read_bytes()
    async with watching(url, f"{unique_name}-replayed/#") as seen:
        rc = await asyncio.to_thread(
            cli_main,
            ["deadletters", "replay", "--data-dir", str(tmp_path), "--mqtt-url", url,
             "--to-topic", f"{unique_name}-replayed/all"],
        )  # fmt: skip
        await wait_until(lambda: len(seen) >= len(expected), 10, "republished letters")
    out = capsys.readouterr()
    assert rc == 0
    assert sorted(seen) == sorted(dl.payload for dl in expected)
    sealed = list(directory.glob("deadletters-*.jsonl.replayed"))
    assert len(sealed) == 1 and sealed[0].name.startswith("deadletters-2025-11-22.")
    where = ", ".join(f"{sealed[0].name}:{o}" for o, _ in torn_at)
    assert f"replayed 8 dead letters; 2 torn lines skipped ({where})" in out.out
    for offset, length in torn_at:
        assert f"skipped a torn line at {sealed[0]}:{offset} ({length} bytes)" in out.err
    assert sealed[0].read_bytes() == original, "the replayed file keeps every byte, torn ones too"
    assert list(iter_dead_letters(directory)) == [], "replayed letters still listed"
    assert replayed_letters(directory) == expected


async def test_replay_fsyncs_the_directory_after_each_rename(
    mosquitto: object, unique_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = mosquitto.url  # type: ignore[attr-defined]
    directory = tmp_path / "deadletters"
    directory.mkdir()
    (directory / FILE).write_bytes(b"".join(letter(i).to_json() + b"\n" for i in range(3)))
    events: list[tuple[str, str]] = []

    def record(op: str, real: Callable[..., object], path_arg: int) -> Callable[..., object]:
        def wrapper(*args: object) -> object:
            result = real(*args)
            path = args[path_arg]
            if op == "fsync":
                path = os.readlink(f"/proc/self/fd/{path}")
            events.append((op, str(path)))
            return result

        return wrapper

    monkeypatch.setattr(os, "rename", record("rename", os.rename, 1))
    monkeypatch.setattr(os, "link", record("link", os.link, 1))
    monkeypatch.setattr(os, "unlink", record("unlink", os.unlink, 0))
    monkeypatch.setattr(os, "fsync", record("fsync", os.fsync, 0))
    report = await replay(
        directory, broker_settings(url, f"r-{unique_name}"), topic_override=f"{unique_name}-r/x"
    )
    assert report.replayed == 3
    renames = [i for i, (op, _) in enumerate(events) if op in ("rename", "link", "unlink")]
    dir_syncs = [i for i, ev in enumerate(events) if ev == ("fsync", str(directory))]
    assert [events[i][0] for i in renames] == ["rename", "link", "unlink", "unlink"], events
    for i in renames:
        assert any(j > i for j in dir_syncs), (
            f"{events[i]} not followed by a directory fsync: {events}"
        )


# -- beside a running service --------------------------------------------------------------


async def run_replay(cfg: Config, to_topic: str, *extra: str) -> tuple[int, str, str]:
    """``python -m ingest.cli deadletters replay`` with the service's own settings."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ingest.cli", "deadletters", "replay",
        "--data-dir", str(cfg.operations.data_dir), "--mqtt-url", cfg.mqtt.mqtt_url or "",
        "--mqtt-client-id", cfg.mqtt.mqtt_client_id, "--to-topic", to_topic, *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("dynamodb_endpoint", ["moto"], indirect=True)
async def test_replays_beside_a_running_service_and_each_other_lose_and_repeat_nothing(
    ingest_config: Callable[..., Config], unique_name: str, tmp_path: Path
) -> None:
    cfg = ingest_config(max_future_ms=1000)
    directory = Path(cfg.operations.data_dir) / "deadletters"
    to_topic = f"{unique_name}-replayed/all"
    future = int(time.time() * 1000) + 3_600_000
    published: list[bytes] = []
    stop = asyncio.Event()

    async def publish_malformed() -> None:
        conn = MqttConnection(broker_settings(cfg.mqtt.mqtt_url or "", f"pub-{unique_name}"))
        async with conn:
            i = 0
            while not stop.is_set():
                # odd: outside the accepted window; even: not JSON
                payload = orjson.dumps({"ts": future, "v": i}) if i % 2 else b'{"v": %d' % i
                await conn.publish(f"{unique_name}/s{i % 7}/telemetry", payload, qos=1)
                published.append(payload)
                i += 1
                await asyncio.sleep(0.005)

    service = IngestService(cfg)
    results: list[tuple[int, str, str]] = []
    snapshots: list[dict[str, tuple[int, str]]] = []
    async with (
        running(service),
        watching(cfg.mqtt.mqtt_url or "", f"{unique_name}-replayed/#") as seen,
    ):
        publisher = asyncio.create_task(publish_malformed(), name="publisher")
        await wait_until(lambda: len(published) >= 50, 30, "first dead letters")
        for round_ in (
            [()],
            [(), ()],  # two at once
            [("--reason", "not valid JSON")],  # leaves the others in sealed files
            [(), ("--reason", "outside the accepted window")],
            [()],
        ):
            results += await asyncio.gather(*(run_replay(cfg, to_topic, *a) for a in round_))
            snapshots.append(fingerprint(directory))
        stop.set()
        await publisher
        await wait_until(
            lambda: counter(service, "iot_ingest_dead_letters_total") >= len(published),
            60,
            "every malformed message dead-lettered",
        )
        await asyncio.sleep(1.0)  # let the last republished letters reach the watcher
        reconnects = counter(service, "iot_ingest_mqtt_reconnects_total")
    assert all(rc == 0 for rc, _, _ in results), results
    assert reconnects == 0, "a replay took over the service's MQTT session"

    in_spool = [dl.payload for _, dl in iter_dead_letters(directory)]
    replayed = [dl.payload for dl in replayed_letters(directory)]
    assert len(published) == len(set(published))
    # No loss, no duplicate: every letter is in the spool or replayed, once.
    assert Counter(in_spool + replayed) == Counter(published)
    # Replayed means published to the broker, once each (seen by the watcher).
    assert Counter(seen) == Counter(replayed)
    assert sum(int(out.split()[1]) for _, out, _ in results) == len(replayed)
    # No .replayed file was ever replaced or changed.
    final = fingerprint(directory)
    for snap in snapshots:
        for name, print_ in snap.items():
            assert final.get(name) == print_, f"{name} was overwritten"
    assert len(final) >= 3 and replayed


async def test_a_replay_killed_midway_is_resumed_by_the_next_one(
    mosquitto: object, unique_name: str, tmp_path: Path
) -> None:
    url = mosquitto.url  # type: ignore[attr-defined]
    directory = tmp_path / "deadletters"
    directory.mkdir()
    letters = [
        DeadLetter(1_763_780_000_000 + i, "decode", "r", TOPIC, b"letter %05d" % i)
        for i in range(3000)
    ]
    (directory / FILE).write_bytes(b"".join(dl.to_json() + b"\n" for dl in letters))
    argv = [sys.executable, "-m", "ingest.cli", "deadletters", "replay", "--data-dir",
            str(tmp_path), "--mqtt-url", url, "--to-topic", f"{unique_name}-r/x"]  # fmt: skip
    async with watching(url, f"{unique_name}-r/#") as seen:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL)
        await wait_until(lambda: len(seen) >= 300, 60, "replay under way")
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        progress = list(directory.glob("*.progress"))
        assert len(progress) == 1
        recorded = len(progress[0].read_bytes().split())
        # Each recorded letter had its PUBACK: the broker has it and delivers it.
        await wait_until(lambda: len(seen) >= recorded, 10, "recorded letters delivered")
        await asyncio.sleep(0.3)
        first = len(seen)
        assert first < len(letters), "the replay finished before it was killed"
        assert recorded <= first <= recorded + 1, "more than one letter sent but not recorded"
        second = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
        out, _ = await second.communicate()
        await wait_until(lambda: len(set(seen)) >= len(letters), 30, "the rest replayed")
        await asyncio.sleep(0.3)
    assert second.returncode == 0
    counts = Counter(seen)
    assert set(counts) == {dl.payload for dl in letters}
    repeated = [p for p, n in counts.items() if n > 1]
    assert len(repeated) <= 1, f"more than the one letter in flight was repeated: {len(repeated)}"
    assert (
        f"replayed {len(letters) - recorded} dead letters; {recorded} already replayed"
        in out.decode()
    )
    assert list(iter_dead_letters(directory)) == []
    assert not list(directory.glob("*.progress"))


async def test_a_sealed_file_another_replay_holds_is_left_to_it(
    mosquitto: object, unique_name: str, tmp_path: Path
) -> None:
    url = mosquitto.url  # type: ignore[attr-defined]
    directory = tmp_path / "deadletters"
    directory.mkdir()
    held = directory / "deadletters-2025-11-21.20251121T000000000Z-1-aaaaaa.jsonl"
    held.write_bytes(b"".join(letter(i).to_json() + b"\n" for i in range(3)))
    (directory / FILE).write_bytes(b"".join(letter(i).to_json() + b"\n" for i in range(3, 5)))
    settings = broker_settings(url, f"r-{unique_name}")
    async with watching(url, f"{unique_name}-r/#") as seen:
        with held.open("rb") as other:
            fcntl.flock(other.fileno(), fcntl.LOCK_EX)  # as a concurrent replay holds it
            report = await replay(directory, settings, topic_override=f"{unique_name}-r/x")
        assert report.busy == [held] and report.replayed == 2
        assert "1 files left to a concurrent replay" in report.summary()
        assert held.exists() and not list(directory.glob("*.progress"))
        again = await replay(directory, settings, topic_override=f"{unique_name}-r/x")
        await wait_until(lambda: len(seen) >= 5, 10, "all replayed")
        await asyncio.sleep(0.2)
    assert again.replayed == 3 and again.busy == []
    assert Counter(seen) == Counter(letter(i).payload for i in range(5))
    assert sorted(p.name for p in directory.iterdir() if p.name != ".lock") == sorted(
        p.name + ".replayed" for p in [held, *report.sealed]
    )
