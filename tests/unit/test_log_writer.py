"""kumoq.config.logs and kumoq.logs.writer: config keys, segments, rotation, read-only marks."""

from __future__ import annotations

import calendar
import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kumoq.clock import FakeClock, SystemClock
from kumoq.config.logs import LocalLogsConfig
from kumoq.errors import ConfigError
from kumoq.logs.tail import ZSTD_MAGIC, read_all_records
from kumoq.logs.writer import LocalLogWriter, segment_name

START = 1_678_069_691.123456  # 2023-03-06 02:28:11 UTC


def is_read_only(path: Path) -> bool:
    return not stat.S_IMODE(path.stat().st_mode) & 0o222


def line(n: int, pad: int = 0) -> bytes:
    return json.dumps({"type": "Delivery", "n": n, "pad": "x" * pad}).encode() + b"\n"


def segments(log_dir: Path) -> list[Path]:
    return sorted(p for p in log_dir.iterdir() if not p.name.startswith("."))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def make_writer(tmp_path: Path, clock: FakeClock) -> Iterator[Any]:
    writers: list[LocalLogWriter] = []

    def make(**cfg: Any) -> LocalLogWriter:
        cfg.setdefault("log_dir", str(tmp_path / "logs"))
        start_thread = cfg.pop("start_thread", False)
        use_clock = cfg.pop("clock", clock)
        writer = LocalLogWriter(LocalLogsConfig.from_mapping(cfg), use_clock)
        writer.start(thread=start_thread)
        writers.append(writer)
        return writer

    yield make
    for writer in writers:
        writer.close()


# -- config ------------------------------------------------------------------------------


def test_config_defaults() -> None:
    cfg = LocalLogsConfig.from_mapping({"log_dir": "/var/log/kumoq"})
    assert cfg.log_dir == "/var/log/kumoq"
    assert cfg.max_file_size == 1_000_000_000
    assert cfg.max_segment_duration is None
    assert cfg.compression_level is None
    assert not cfg.compressed
    assert cfg.back_pressure == 128_000
    assert cfg.meta == ()
    assert cfg.headers == ()
    assert cfg.filter_event is None
    assert cfg.record_enabled("Delivery")


def test_config_values() -> None:
    cfg = LocalLogsConfig.from_mapping(
        {
            "log_dir": "logs",
            "max_file_size": "10 MB",
            "max_segment_duration": "1s",
            "compression_level": 0,
            "back_pressure": 10,
            "meta": ["tenant", "x_*"],
            "headers": "Subject",
            "per_record": {"Reception": {"enable": False}, "Any": {"segment_header": ""}},
            "filter_event": "should_log",
            "min_free_space": "10%",
            "min_free_inodes": 1000,
        }
    )
    assert cfg.max_file_size == 10_000_000
    assert cfg.max_segment_duration == 1.0
    assert cfg.compression_level == 0
    assert cfg.compressed
    assert cfg.meta == ("tenant", "x_*")
    assert cfg.headers == ("Subject",)
    assert not cfg.record_enabled("Reception")
    assert cfg.record_enabled("Delivery")
    assert cfg.min_free_space == "10%"
    assert cfg.min_free_inodes == 1000


def test_config_empty_lua_tables() -> None:
    cfg = LocalLogsConfig.from_mapping(
        {"log_dir": "l", "meta": {}, "headers": [], "per_record": []}
    )
    assert cfg.meta == cfg.headers == ()
    assert cfg.record_enabled("Any")


def test_per_record_any_applies_to_unlisted_types() -> None:
    cfg = LocalLogsConfig.from_mapping(
        {"log_dir": "l", "per_record": {"Any": {"enable": False}, "Bounce": {"enable": True}}}
    )
    assert cfg.record_enabled("Bounce")
    assert not cfg.record_enabled("Delivery")


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({}, "missing required key 'log_dir'"),
        ({"log_dir": ""}, "log_dir: must not be empty"),
        ({"log_dir": "l", "bogus": 1}, "unknown key 'bogus'"),
        ({"log_dir": "l", "compression_level": 22}, "compression_level: must be 0"),
        ({"log_dir": "l", "compression_level": -1}, "compression_level: must be at least 0"),
        ({"log_dir": "l", "max_file_size": 0}, "max_file_size: must be at least 1"),
        ({"log_dir": "l", "max_segment_duration": "0s"}, "greater than zero"),
        ({"log_dir": "l", "back_pressure": 0}, "back_pressure: must be at least 1"),
        ({"log_dir": "l", "meta": [1]}, "meta: expected a list of strings"),
        ({"log_dir": "l", "per_record": {"Nope": {}}}, "unknown record type 'Nope'"),
        ({"log_dir": "l", "per_record": {"Bounce": {"x": 1}}}, "unknown key 'x'"),
        ({"log_dir": "l", "per_record": {"Bounce": {"template": "t"}}}, "not supported"),
        ({"log_dir": "l", "per_record": {"Bounce": {"suffix": ".b"}}}, "not supported"),
        ({"log_dir": "l", "per_record": {"Any": {"segment_header": "h"}}}, "not supported"),
        ({"log_dir": "l", "min_free_space": "200%"}, "at most 100%"),
    ],
)
def test_config_errors(mapping: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LocalLogsConfig.from_mapping(mapping)


def test_unknown_key_error_names_the_allowed_ones() -> None:
    with pytest.raises(ConfigError, match=r"allowed keys are: .*max_segment_duration"):
        LocalLogsConfig.from_mapping({"log_dir": "l", "max_segment_time": "1s"})


# -- writer ------------------------------------------------------------------------------


def test_segment_name_format() -> None:
    name = segment_name(START)
    assert name.startswith("20230306-022811.123456")
    assert len(name) == len("20230306-022811.123456789")
    assert segment_name(1_678_069_691.5) == "20230306-022811.500000000"
    assert segment_name(1_678_069_691.0) == "20230306-022811.000000000"


def test_plain_segment_written_on_pump_and_sealed_on_close(
    make_writer: Any, tmp_path: Path
) -> None:
    writer = make_writer()
    log_dir = tmp_path / "logs"
    assert log_dir.is_dir()
    writer.write(line(1))
    writer.write(line(2))
    assert segments(log_dir) == []  # nothing touches the disk on write()
    assert writer.backlog == 2
    writer.pump()
    assert writer.backlog == 0
    [seg] = segments(log_dir)
    assert seg.name == segment_name(START)
    assert seg.read_bytes() == line(1) + line(2)
    assert not is_read_only(seg)
    writer.close()
    assert is_read_only(seg)
    assert [r["n"] for r in read_all_records(log_dir)] == [1, 2]


def test_no_segment_without_records(make_writer: Any, tmp_path: Path, clock: FakeClock) -> None:
    writer = make_writer(max_segment_duration="1s")
    writer.pump()
    clock.advance(5)
    writer.pump()
    writer.close()
    assert segments(tmp_path / "logs") == []


def test_rotation_by_size(make_writer: Any, tmp_path: Path) -> None:
    one = len(line(0, pad=20))
    writer = make_writer(max_file_size=3 * one)
    for n in range(7):
        writer.write(line(n, pad=20))
    writer.pump()
    segs = segments(tmp_path / "logs")
    assert len(segs) == 3
    assert [is_read_only(s) for s in segs] == [True, True, False]
    assert [len(s.read_bytes()) // one for s in segs] == [3, 3, 1]
    assert writer.segments_written == 2
    # Size counts across passes too: two more records fill the third segment.
    writer.write(line(7, pad=20))
    writer.write(line(8, pad=20))
    writer.pump()
    assert is_read_only(segs[2])
    assert writer.current_segment is None
    assert [r["n"] for r in read_all_records(tmp_path / "logs")] == list(range(9))


def test_rotation_by_duration_when_idle(make_writer: Any, tmp_path: Path, clock: FakeClock) -> None:
    writer = make_writer(max_segment_duration="2s")
    writer.write(line(1))
    writer.pump()
    [first] = segments(tmp_path / "logs")
    clock.advance(1.9)
    writer.pump()
    assert not is_read_only(first)
    clock.advance(0.2)
    writer.pump()  # idle pass: the segment has expired
    assert is_read_only(first)
    writer.write(line(2))
    writer.pump()
    segs = segments(tmp_path / "logs")
    assert len(segs) == 2
    assert segs[0] == first
    assert segs[1].name > first.name
    assert segs[1].read_bytes() == line(2)


def test_names_stay_unique_when_the_clock_does_not_move(make_writer: Any, tmp_path: Path) -> None:
    writer = make_writer(max_file_size=1)
    for n in range(3):
        writer.write(line(n))
    writer.pump()
    names = [s.name for s in segments(tmp_path / "logs")]
    assert len(names) == 3
    assert names == sorted(names)
    assert names[0] == segment_name(START)


def test_two_writers_share_a_directory(make_writer: Any, tmp_path: Path) -> None:
    a = make_writer()
    b = make_writer()
    a.write(line(1))
    b.write(line(2))
    a.pump()
    b.pump()
    segs = segments(tmp_path / "logs")
    assert len(segs) == 2
    assert {s.read_bytes() for s in segs} == {line(1), line(2)}


def test_existing_files_are_marked_read_only_at_start(make_writer: Any, tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    old = log_dir / "20230101-000000"
    old.write_bytes(line(0))
    hidden = log_dir / ".state"
    hidden.write_bytes(b"x")
    (log_dir / "subdir").mkdir()
    make_writer()
    assert is_read_only(old)
    assert not is_read_only(hidden)
    assert not is_read_only(log_dir / "subdir")


def test_zstd_segments_round_trip(make_writer: Any, tmp_path: Path) -> None:
    writer = make_writer(compression_level=3)
    log_dir = tmp_path / "logs"
    writer.write(line(1))
    writer.pump()
    [seg] = segments(log_dir)
    assert seg.read_bytes().startswith(ZSTD_MAGIC)
    # The frame is not finished, but what was flushed decompresses already.
    assert [r["n"] for r in read_all_records(log_dir)] == [1]
    writer.write(line(2))
    writer.pump()
    assert [r["n"] for r in read_all_records(log_dir)] == [1, 2]
    writer.close()
    assert is_read_only(seg)
    assert [r["n"] for r in read_all_records(log_dir)] == [1, 2]


def test_zstd_default_level(make_writer: Any, tmp_path: Path) -> None:
    writer = make_writer(compression_level=0)
    big = [line(n, pad=200) for n in range(50)]
    for b in big:
        writer.write(b)
    writer.close()
    [seg] = segments(tmp_path / "logs")
    assert seg.stat().st_size < sum(map(len, big)) // 4
    assert len(read_all_records(tmp_path / "logs")) == 50


def test_back_pressure_wakes_the_thread_and_drops_nothing(make_writer: Any, tmp_path: Path) -> None:
    writer = make_writer(back_pressure=2)
    for n in range(5):
        writer.write(line(n))
    assert writer.submit_full == 3
    assert writer._wake.is_set()
    assert writer.backlog == 5
    writer.close()
    assert [r["n"] for r in read_all_records(tmp_path / "logs")] == list(range(5))


def test_write_after_close_is_an_error(make_writer: Any) -> None:
    writer = make_writer()
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(line(1))


def test_thread_writes_a_record_within_a_second(make_writer: Any, tmp_path: Path) -> None:
    writer = make_writer(start_thread=True, clock=SystemClock())
    log_dir = tmp_path / "logs"
    t0 = time.monotonic()
    writer.write(line(1))
    found: list[dict[str, Any]] = []
    while not found and time.monotonic() - t0 < 1.0:
        time.sleep(0.02)
        found = read_all_records(log_dir)
    assert [r["n"] for r in found] == [1]
    [seg] = segments(log_dir)
    assert not is_read_only(seg)
    writer.close()
    assert is_read_only(seg)
    assert writer.backlog == 0


def test_thread_rotates_idle_segment_by_duration(make_writer: Any, tmp_path: Path) -> None:
    clock = FakeClock(START)
    writer = make_writer(start_thread=True, clock=clock, max_segment_duration="1s")
    writer.write(line(1))
    log_dir = tmp_path / "logs"
    deadline = time.monotonic() + 2.0
    while not segments(log_dir) and time.monotonic() < deadline:
        time.sleep(0.02)
    [seg] = segments(log_dir)
    clock.advance(1.0)
    while not is_read_only(seg) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert is_read_only(seg)
    assert writer.current_segment is None


def test_write_error_is_logged_and_the_record_is_retried(
    make_writer: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # tests/unit/test_log_disk_full.py fills a real filesystem; this one fails one pwrite.
    writer = make_writer()
    log_dir = tmp_path / "logs"
    writer.write(line(1))
    writer.pump()
    [seg] = segments(log_dir)
    real_pwrite = os.pwrite

    def full(fd: int, data: Any, offset: int) -> int:
        monkeypatch.setattr(os, "pwrite", real_pwrite)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)  # the disk fills up, for one write
    writer.write(line(2))
    writer.pump()
    assert "cannot write log records" in caplog.text
    assert writer.backlog == 1  # held for a retry, not lost
    assert seg.read_bytes() == line(1)
    writer.write(line(3))
    writer.pump()
    assert "are written to" in caplog.text
    writer.close()
    assert [r["n"] for r in read_all_records(log_dir)] == [1, 2, 3]
    assert writer.records_dropped == 0


def test_construction_does_no_io_and_keeps_early_records(tmp_path: Path) -> None:
    log_dir = tmp_path / "later"
    writer = LocalLogWriter(LocalLogsConfig.from_mapping({"log_dir": str(log_dir)}))
    assert not log_dir.exists()
    writer.write(line(1))
    writer.start(thread=False)
    writer.start(thread=False)  # idempotent
    assert log_dir.is_dir()
    assert segments(log_dir) == []
    writer.close()
    [seg] = segments(log_dir)
    assert seg.read_bytes() == line(1)
    stamp = calendar.timegm(time.strptime(seg.name.split(".")[0], "%Y%m%d-%H%M%S"))
    assert abs(stamp - time.time()) < 60  # named from the system clock


# -- several writers in one directory (kumoq serve --workers N) ----------------------------


def test_a_starting_writer_leaves_the_open_segment_of_a_live_writer_writable(
    make_writer: Any, tmp_path: Path
) -> None:
    first = make_writer()
    first.write(line(1))
    first.pump()
    (open_segment,) = segments(tmp_path / "logs")
    abandoned = tmp_path / "logs" / "20200101-000000.000000000"
    abandoned.write_bytes(line(0))  # a segment whose writer died: no flock held

    make_writer()  # a second worker starts on the same directory

    assert not is_read_only(open_segment)  # still being written by the first
    assert is_read_only(abandoned)
    first.write(line(2))
    first.pump()
    first.close()
    assert is_read_only(open_segment)
    assert [r["n"] for r in read_all_records(tmp_path / "logs")] == [0, 1, 2]
