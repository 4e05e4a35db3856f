"""Issue 9, defect 11: log records on a full disk, on a real (tiny) tmpfs.

Each test mounts a 256 KiB tmpfs under ``tmp_path`` (this needs root, as in CI; the fixture
fails, it does not skip, when the mount is refused), points a ``LocalLogWriter`` at it, fills
the filesystem with a filler file and writes records. Whatever happens, every segment must hold
whole records only (every line parses as JSON, every finished zstd frame is complete), every
record that is not on disk must be counted in ``log_records_dropped``, and once the filler is
gone the writer must write again by itself.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from kumoq.clock import FakeClock, SystemClock
from kumoq.config.logs import LocalLogsConfig
from kumoq.logs.tail import ZSTD_MAGIC, read_all_records
from kumoq.logs.writer import REPORT_INTERVAL, LocalLogWriter
from kumoq.metrics import REGISTRY

START = 1_678_069_691.123456
FS_SIZE = "256k"
HELD = 40  # back_pressure: how many records the writer may hold for a retry
ZSTD_END = b"\x01\x00\x00"  # an empty last block: what a finished frame would add

KINDS = pytest.mark.parametrize("level", [None, 3], ids=["plain", "zstd"])


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs mounted at ``tmp_path/fs``, unmounted at teardown."""
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE}", "tmpfs", str(mount_point)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        reason = f"exit status {done.returncode}: {done.stderr.strip()}"
    except OSError as exc:
        done, reason = None, str(exc)
    if done is None or done.returncode:
        pytest.fail(
            f"these tests need a {FS_SIZE} tmpfs (run them as root); {' '.join(command)} "
            f"failed: {reason}",
            pytrace=False,
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.fixture
def writers() -> Iterator[list[LocalLogWriter]]:
    """Writers to close before ``small_fs`` unmounts (this fixture is torn down first)."""
    made: list[LocalLogWriter] = []
    yield made
    for writer in made:
        writer.close()


class Filler:
    """A file that takes every free block of the filesystem."""

    def __init__(self, fs: Path) -> None:
        self.path = fs / "filler"

    def fill(self) -> None:
        block = b"\0" * 4096
        with open(self.path, "ab", buffering=0) as file:
            for chunk in (block, b"\0"):
                while True:
                    try:
                        if not file.write(chunk):
                            break
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break

    def remove(self) -> None:
        self.path.unlink()


class Sender:
    """Numbered records that compress about 2:1 (so zstd output does fill the disk)."""

    def __init__(self, writer: LocalLogWriter) -> None:
        self.writer = writer
        self.sent = 0

    def send(self, count: int) -> None:
        for _ in range(count):
            pad = os.urandom(100).hex()
            line = json.dumps({"type": "Reception", "n": self.sent, "pad": pad}) + "\n"
            self.writer.write(line.encode())
            self.sent += 1


def make_writer(
    log_dir: Path, level: int | None, clock: Any, writers: list[LocalLogWriter], **cfg: Any
) -> LocalLogWriter:
    cfg = {"log_dir": str(log_dir), "back_pressure": HELD, **cfg}
    if level is not None:
        cfg["compression_level"] = level
    writer = LocalLogWriter(LocalLogsConfig.from_mapping(cfg), clock, flush_interval=0.02)
    writers.append(writer)
    return writer


def dropped(log_dir: Path) -> int:
    value = REGISTRY.get_sample_value("log_records_dropped_total", {"logger": str(log_dir)})
    return int(value or 0)


def _frames(data: bytes) -> tuple[bytes, bool]:
    """Decompress concatenated frames: (the text, whether the last frame is complete)."""
    out = []
    while data:
        decoder = zstandard.ZstdDecompressor().decompressobj()
        out.append(decoder.decompress(data))
        if not decoder.eof:
            return b"".join(out), False
        data = decoder.unused_data
    return b"".join(out), True


def segment_numbers(log_dir: Path, *, closed_when_full: bool = False) -> list[int]:
    """The record numbers in every segment, checking that each holds whole records only.

    A plain segment must end with a newline. A zstd segment must consist of whole frames and
    whole blocks: a finished (read-only) one of complete frames only, an open one of complete
    frames and at most one open frame that ends on a block boundary (so appending an empty
    last block completes it). ``closed_when_full``: the writer was closed while not even the
    3 bytes that end a frame could be written, so a finished segment may end like an open one.
    """
    numbers: list[int] = []
    for path in sorted(p for p in log_dir.iterdir() if not p.name.startswith(".")):
        data = path.read_bytes()
        finished = not stat.S_IMODE(path.stat().st_mode) & 0o222
        if data.startswith(ZSTD_MAGIC):
            text, complete = _frames(data)
            if not complete:
                assert closed_when_full or not finished, f"{path.name}: unfinished zstd frame"
                text, complete = _frames(data + ZSTD_END)
                assert complete, f"{path.name}: the open zstd frame ends inside a block"
        else:
            text = data
        assert not text or text.endswith(b"\n"), f"{path.name}: partial last line {text[-80:]!r}"
        numbers.extend(json.loads(line)["n"] for line in text.splitlines())
    return numbers


def kumoq_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "kumoq.logs" and r.levelno >= logging.ERROR
    ]


@KINDS
def test_full_disk_keeps_whole_records_counts_drops_and_resumes(
    small_fs: Path,
    writers: list[LocalLogWriter],
    level: int | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    log_dir = small_fs / "logs"
    writer = make_writer(log_dir, level, FakeClock(START), writers)
    writer.start(thread=False)
    sender = Sender(writer)
    sender.send(10)
    writer.pump()
    assert segment_numbers(log_dir) == list(range(10))

    filler = Filler(small_fs)
    filler.fill()
    for _ in range(6):
        sender.send(100)
        writer.pump()
        on_disk = segment_numbers(log_dir)
        assert writer.backlog <= HELD  # what is held for a retry is bounded
        assert dropped(log_dir) == sender.sent - len(on_disk) - writer.backlog
    assert writer.backlog == HELD
    assert dropped(log_dir) >= 500
    assert writer.records_dropped == dropped(log_dir)
    # One diagnostic line for the outage, not one per pass or per record.
    [error] = kumoq_errors(caplog)
    assert str(log_dir) in error

    filler.remove()
    writer.pump()  # the held records are written by the next pass, nothing else needed
    assert writer.backlog == 0
    sender.send(20)
    writer.pump()
    assert segment_numbers(log_dir)[-20:] == list(range(sender.sent - 20, sender.sent))
    writer.close()

    numbers = [r["n"] for r in read_all_records(log_dir)]
    assert numbers == segment_numbers(log_dir)
    assert numbers == sorted(set(numbers))  # in order, none twice
    assert numbers[:10] == list(range(10))
    assert dropped(log_dir) == sender.sent - len(numbers)
    assert "again" in caplog.text
    assert len(kumoq_errors(caplog)) == 1


@KINDS
def test_outage_report_is_rate_limited_and_counts_drops(
    small_fs: Path,
    writers: list[LocalLogWriter],
    level: int | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    log_dir = small_fs / "logs"
    clock = FakeClock(START)
    writer = make_writer(log_dir, level, clock, writers)
    writer.start(thread=False)
    sender = Sender(writer)
    Filler(small_fs).fill()
    for _ in range(50):
        sender.send(10)
        writer.pump()
    assert len(kumoq_errors(caplog)) == 1
    before = dropped(log_dir)
    clock.advance(REPORT_INTERVAL)
    sender.send(10)
    writer.pump()
    first, second = kumoq_errors(caplog)
    assert "held" in first
    assert f"{before + 10} dropped" in second  # the drops since the first line
    assert segment_numbers(log_dir) == []


@KINDS
def test_close_on_a_full_disk_drops_and_counts_what_is_held(
    small_fs: Path,
    writers: list[LocalLogWriter],
    level: int | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    log_dir = small_fs / "logs"
    writer = make_writer(log_dir, level, FakeClock(START), writers)
    writer.start(thread=False)
    sender = Sender(writer)
    sender.send(5)
    writer.pump()
    Filler(small_fs).fill()
    sender.send(300)
    writer.pump()
    assert writer.backlog == HELD
    writer.close()
    assert writer.backlog == 0
    numbers = segment_numbers(log_dir, closed_when_full=True)
    assert numbers == [r["n"] for r in read_all_records(log_dir)]
    assert numbers == list(range(len(numbers)))
    assert dropped(log_dir) == sender.sent - len(numbers)
    assert "at shutdown" in caplog.text
    for path in log_dir.iterdir():
        assert not stat.S_IMODE(path.stat().st_mode) & 0o222


@KINDS
def test_rotation_during_an_outage_leaves_no_empty_segments(
    small_fs: Path, writers: list[LocalLogWriter], level: int | None
) -> None:
    log_dir = small_fs / "logs"
    clock = FakeClock(START)
    writer = make_writer(
        log_dir, level, clock, writers, max_segment_duration="1s", max_file_size="8 KiB"
    )
    writer.start(thread=False)
    sender = Sender(writer)
    sender.send(5)
    writer.pump()
    filler = Filler(small_fs)
    filler.fill()
    for _ in range(20):
        sender.send(20)
        writer.pump()
        clock.advance(0.5)
        segment_numbers(log_dir)
    assert len(list(log_dir.iterdir())) <= 2
    filler.remove()
    for _ in range(3):
        sender.send(20)
        writer.pump()
        clock.advance(0.5)
    writer.close()
    paths = list(log_dir.iterdir())
    assert all(p.stat().st_size for p in paths)  # an empty segment is removed, not kept
    numbers = segment_numbers(log_dir)
    assert numbers == [r["n"] for r in read_all_records(log_dir)]
    assert numbers == sorted(set(numbers))
    assert numbers[-60:] == list(range(sender.sent - 60, sender.sent))
    assert dropped(log_dir) == sender.sent - len(numbers)


@KINDS
def test_writer_thread_resumes_by_itself(
    small_fs: Path, writers: list[LocalLogWriter], level: int | None
) -> None:
    log_dir = small_fs / "logs"
    writer = make_writer(log_dir, level, SystemClock(), writers)
    writer.start()
    sender = Sender(writer)
    filler = Filler(small_fs)
    filler.fill()
    sender.send(30)  # fewer than HELD: all are held, none is dropped
    time.sleep(0.2)
    assert segment_numbers(log_dir) == []
    filler.remove()
    deadline = time.monotonic() + 5
    while len(segment_numbers(log_dir)) < 30 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert segment_numbers(log_dir) == list(range(30))
    assert dropped(log_dir) == 0
    writer.close()
    assert [r["n"] for r in read_all_records(log_dir)] == list(range(30))
