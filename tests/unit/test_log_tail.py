"""kumoq.logs.tail: reading plain and zstd segments, growing ones, and following rotation."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from kumoq.clock import FakeClock
from kumoq.config.logs import LocalLogsConfig
from kumoq.logs import tail
from kumoq.logs.tail import iter_lines, iter_records, main_tail, read_all_records
from kumoq.logs.writer import LocalLogWriter, mark_read_only


def rec(n: int) -> bytes:
    return json.dumps({"type": "Reception", "n": n}).encode() + b"\n"


def ns(records: list[dict[str, Any]]) -> list[int]:
    return [r["n"] for r in records]


class Script:
    """A ``sleep`` replacement that performs the next scripted step instead of sleeping."""

    def __init__(self, *steps: Callable[[], None]) -> None:
        self.steps = list(steps)
        self.sleeps = 0

    def __call__(self, seconds: float) -> None:
        self.sleeps += 1
        if not self.steps:
            raise AssertionError("the tail polled more often than the script expected")
        self.steps.pop(0)()


@pytest.fixture
def log_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "logs"
    d.mkdir()
    yield d
    for p in d.iterdir():  # read-only files are fine for cleanup, but be explicit
        os.chmod(p, 0o644)


def test_empty_or_missing_directory(tmp_path: Path) -> None:
    assert read_all_records(tmp_path) == []
    assert read_all_records(tmp_path / "missing") == []


def test_segments_are_read_in_name_order(log_dir: Path) -> None:
    (log_dir / "20230306-022812.000000000").write_bytes(rec(3))
    (log_dir / "20230306-022811.500000000").write_bytes(rec(1) + rec(2))
    (log_dir / ".hidden").write_bytes(rec(99))
    assert ns(read_all_records(log_dir)) == [1, 2, 3]


def test_partial_last_line_waits_for_its_newline(log_dir: Path) -> None:
    seg = log_dir / "20230306-022811.000000000"
    seg.write_bytes(rec(1) + b'{"type": "Reception", "n"')
    assert ns(read_all_records(log_dir)) == [1]
    with seg.open("ab") as f:
        f.write(b": 2}\n")
    assert ns(read_all_records(log_dir)) == [1, 2]


def test_complete_segment_without_final_newline(log_dir: Path) -> None:
    seg = log_dir / "20230306-022811.000000000"
    seg.write_bytes(rec(1) + rec(2).rstrip(b"\n"))
    assert ns(read_all_records(log_dir)) == [1]
    mark_read_only(str(seg))
    assert ns(read_all_records(log_dir)) == [1, 2]


def test_tiny_and_empty_segments(log_dir: Path) -> None:
    (log_dir / "a").write_bytes(b"")
    (log_dir / "b").write_bytes(b"\n")
    (log_dir / "c").write_bytes(rec(1))
    for name in "abc":
        mark_read_only(str(log_dir / name))
    assert ns(read_all_records(log_dir)) == [1]


def test_zstd_frame_still_being_written(log_dir: Path) -> None:
    seg = log_dir / "20230306-022811.000000000"
    comp = zstandard.ZstdCompressor(level=3).compressobj()
    with seg.open("wb") as f:
        f.write(comp.compress(rec(1) + rec(2)[:10]))
        f.write(comp.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
    assert seg.read_bytes().startswith(tail.ZSTD_MAGIC)
    assert ns(read_all_records(log_dir)) == [1]
    with seg.open("ab") as f:
        f.write(comp.compress(rec(2)[10:]))
        f.write(comp.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))
    assert ns(read_all_records(log_dir)) == [1, 2]


def test_concatenated_zstd_frames(log_dir: Path) -> None:
    c = zstandard.ZstdCompressor()
    (log_dir / "seg").write_bytes(c.compress(rec(1)) + c.compress(rec(2) + rec(3)))
    assert ns(read_all_records(log_dir)) == [1, 2, 3]


def test_a_line_that_is_not_an_object_is_an_error(log_dir: Path) -> None:
    (log_dir / "seg").write_bytes(b"[1, 2]\n")
    with pytest.raises(ValueError, match="not a JSON object"):
        read_all_records(log_dir)
    (log_dir / "seg").write_bytes(b"{oops\n")
    with pytest.raises(ValueError, match="Expecting property name"):
        read_all_records(log_dir)


def test_large_segment_is_read_in_chunks(log_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tail, "_READ_SIZE", 7)
    (log_dir / "seg").write_bytes(b"".join(rec(n) for n in range(20)))
    assert ns(read_all_records(log_dir)) == list(range(20))


@pytest.mark.parametrize("compression_level", [None, 3])
def test_follow_across_rotation(log_dir: Path, compression_level: int | None) -> None:
    clock = FakeClock(1_678_069_691.0)
    cfg: dict[str, Any] = {"log_dir": str(log_dir), "max_segment_duration": "10s"}
    if compression_level is not None:
        cfg["compression_level"] = compression_level
    writer = LocalLogWriter(LocalLogsConfig.from_mapping(cfg), clock)

    def emit(*numbers: int) -> Callable[[], None]:
        def step() -> None:
            for n in numbers:
                writer.write(rec(n))
            writer.pump()

        return step

    def rotate_then_emit() -> None:
        writer.write(rec(3))
        writer.pump()  # 3 lands in the first segment, which the tail has not read yet
        clock.advance(11)
        writer.write(rec(4))
        writer.pump()  # the first segment expires (read-only), 4 opens a second one

    def nothing() -> None:
        pass

    emit(1)()
    script = Script(emit(2), rotate_then_emit, nothing, emit(5))
    gen = iter_records(log_dir, True, 0.1, sleep=script)
    try:
        got = [next(gen)["n"] for _ in range(5)]
    finally:
        gen.close()
    writer.close()
    assert got == [1, 2, 3, 4, 5]
    assert script.steps == []
    assert len(os.listdir(log_dir)) == 2


def test_follow_waits_for_a_segment_to_appear(log_dir: Path) -> None:
    def create() -> None:
        (log_dir / "20230306-022811.000000000").write_bytes(rec(7))

    script = Script(lambda: None, create)
    gen = iter_lines(log_dir, follow=True, sleep=script)
    assert json.loads(next(gen))["n"] == 7
    gen.close()
    assert script.sleeps == 2


def test_main_tail_prints_each_record_once(
    log_dir: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    (log_dir / "a").write_bytes(rec(1) + rec(2))
    (log_dir / "b").write_bytes(rec(3) + b'{"partial"')
    assert main_tail(str(log_dir), follow=False) == 0
    out = capsysbinary.readouterr().out
    assert out.splitlines() == [rec(1).strip(), rec(2).strip(), rec(3).strip()]


def test_main_tail_ctrl_c_exits_zero(
    log_dir: Path, capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    (log_dir / "a").write_bytes(rec(1))

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", interrupt)
    assert main_tail(str(log_dir)) == 0
    assert capsysbinary.readouterr().out == rec(1)  # flushed before waiting


def test_main_tail_rejects_a_missing_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main_tail(str(tmp_path / "nope")) == 1
    assert "not a directory" in capsys.readouterr().err
