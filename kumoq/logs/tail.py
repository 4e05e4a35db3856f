"""Reading log segments back: ``kumoq tail LOG_DIR`` and the test harness's record reader.

Segments are read in name order (names are UTC timestamps, so that is write order). Each is
plain JSON lines or a zstd stream, told apart by the zstd magic bytes ``28 B5 2F FD``. A
segment that is still being written is read as far as it goes: a partial last line waits for
its newline, and a zstd frame that is not finished yet yields whatever decompresses so far. A
segment is done once it is read-only (the writer's "complete" mark, see kumoq.logs.writer) and
has been read to its end; until then, following keeps polling it. Every segment that is not
done is polled on each pass, so several writers sharing a directory are all followed.

Imports only the standard library and zstandard; never asyncio or the daemon.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections.abc import Callable, Generator
from typing import Any, Final, final

import zstandard

__all__ = ["ZSTD_MAGIC", "iter_lines", "iter_records", "main_tail", "read_all_records"]

ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_READ_SIZE: Final = 1 << 20


def _is_read_only(path: str) -> bool:
    return not stat.S_IMODE(os.stat(path).st_mode) & 0o222


@final
class _SegmentReader:
    """Incremental reader of one segment; ``read()`` returns the complete lines added since."""

    __slots__ = ("_decoder", "_file", "_head", "_kind", "_pending", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        self._kind: str | None = None  # "plain" or "zstd" once the first bytes are in
        self._head = b""
        self._decoder: Any = None
        self._pending = b""

    def read(self) -> tuple[list[bytes], bool]:
        """(complete lines read now, whether the file's end was reached)."""
        data = self._file.read(_READ_SIZE)
        at_end = data is None or len(data) < _READ_SIZE
        if not data:
            return [], True
        if self._kind is None:
            self._head += data
            if len(self._head) < len(ZSTD_MAGIC) and ZSTD_MAGIC.startswith(self._head):
                return [], at_end
            data, self._head = self._head, b""
            self._kind = "zstd" if data.startswith(ZSTD_MAGIC) else "plain"
        if self._kind == "zstd":
            data = self._decompress(data)
        buffer = self._pending + data if self._pending else data
        cut = buffer.rfind(b"\n") + 1
        self._pending = buffer[cut:]
        if not cut:
            return [], at_end
        return buffer[: cut - 1].split(b"\n"), at_end

    def _decompress(self, data: bytes) -> bytes:
        out = []
        while data:
            if self._decoder is None:
                self._decoder = zstandard.ZstdDecompressor().decompressobj()
            decoder = self._decoder
            out.append(decoder.decompress(data))
            if not decoder.eof:
                break
            # One frame ended; another may follow (concatenated frames are valid zstd).
            data = decoder.unused_data
            self._decoder = None
        return b"".join(out)

    def finish(self) -> list[bytes]:
        """The segment is complete: return an unterminated last line, if any."""
        leftover = (self._head or self._pending).strip()
        self._head = self._pending = b""
        return [leftover] if leftover else []

    def close(self) -> None:
        self._file.close()


def _segment_names(log_dir: str) -> list[str]:
    try:
        with os.scandir(log_dir) as entries:
            return sorted(
                e.name
                for e in entries
                if not e.name.startswith(".") and e.is_file(follow_symlinks=False)
            )
    except FileNotFoundError:
        return []


def iter_lines(
    log_dir: str | os.PathLike[str],
    *,
    follow: bool = False,
    poll: float = 0.2,
    sleep: Callable[[float], None] = time.sleep,
) -> Generator[bytes, None, None]:
    """Yield each record line (without its newline) of every segment in ``log_dir``, in order.

    Without ``follow``, one pass: everything readable now, then stop (the incomplete last
    line of a segment still being written is not yielded). With ``follow``, keep polling
    every ``poll`` seconds (through ``sleep``) for new data and new segments, until the
    generator is closed.
    """
    directory = os.fspath(log_dir)
    readers: dict[str, _SegmentReader] = {}
    done: set[str] = set()
    try:
        while True:
            names = _segment_names(directory)
            if len(done) > 2 * len(names):  # forget segments removed by the operator
                done &= set(names)
            for name in names:
                if name in done:
                    continue
                reader = readers.get(name)
                path = os.path.join(directory, name)
                try:
                    complete = _is_read_only(path)
                    if reader is None:
                        reader = readers[name] = _SegmentReader(path)
                except FileNotFoundError:
                    continue
                while True:
                    lines, at_end = reader.read()
                    yield from lines
                    if at_end:
                        break
                if complete:
                    yield from reader.finish()
                    reader.close()
                    del readers[name]
                    done.add(name)
            if not follow:
                return
            sleep(poll)
    finally:
        for reader in readers.values():
            reader.close()


def iter_records(
    log_dir: str | os.PathLike[str],
    follow: bool = False,
    poll: float = 0.2,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> Generator[dict[str, Any], None, None]:
    """Like ``iter_lines`` but parsed; a line that is not a JSON object raises ValueError."""
    for line in iter_lines(log_dir, follow=follow, poll=poll, sleep=sleep):
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record, dict):
            raise ValueError(f"log line is not a JSON object: {line[:200]!r}")
        yield record


def read_all_records(log_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every complete record in ``log_dir`` now, oldest segment first."""
    return list(iter_records(log_dir, follow=False))


def main_tail(log_dir: str, follow: bool = True) -> int:
    """``kumoq tail LOG_DIR``: print each record as one JSON line as it arrives.

    Returns the exit status: 0 (also on Ctrl-C or a closed pipe), 1 if ``log_dir`` is not a
    directory.
    """
    if not os.path.isdir(log_dir):
        print(f"kumoq tail: {log_dir}: not a directory", file=sys.stderr)
        return 1
    out = sys.stdout.buffer
    pending = 0

    def flush_then_sleep(seconds: float) -> None:
        nonlocal pending
        if pending:
            out.flush()
            pending = 0
        time.sleep(seconds)

    try:
        for line in iter_lines(log_dir, follow=follow, sleep=flush_then_sleep):
            out.write(line + b"\n")
            pending += 1
        out.flush()
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # Do not let the interpreter complain again while flushing stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    return 0
