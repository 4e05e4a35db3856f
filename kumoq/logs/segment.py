"""One log segment file, and the names and marks of segment files (kumoq.logs.writer).

``_Segment`` appends whole records to one open segment, plain or as zstd frames, and cuts a
failed write back to the last whole record; ``finish`` ends the frame and marks the file
read-only (complete). ``segment_name`` names segments by time; ``bump`` makes a name unique;
``in_use`` tells a segment another live writer holds (its ``flock``) from an abandoned one.

Imports only the standard library and zstandard.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import time
from collections.abc import Iterator
from typing import Final, final

import zstandard

__all__ = [
    "OPEN_FLAGS",
    "ZSTD_CHUNK",
    "Segment",
    "bump",
    "in_use",
    "mark_read_only",
    "segment_name",
]

log = logging.getLogger("kumoq.logs")

ZSTD_CHUNK: Final = 64 << 10  # uncompressed bytes per zstd write (each ends a block)
_ZSTD_FRAME_END: Final = b"\x01\x00\x00"  # an empty raw "last" block: ends a frame
OPEN_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def mark_read_only(path: str) -> None:
    """Remove every write bit from ``path``: the segment is complete."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o222:
        os.chmod(path, mode & ~0o222)


def segment_name(now: float) -> str:
    """``20230306-022811.123456789`` for ``now`` (UTC)."""
    sec = int(now)
    nanos = min(round((now - sec) * 1e9), 999_999_999)
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(sec)) + f".{nanos:09d}"


@final
class Segment:
    """One open segment file, plain or zstd frames. Its first ``size`` bytes are whole records
    and a failed write is cut back to them (``torn`` while even that fails: retried first)."""

    def __init__(self, path: str, fd: int, level: int | None, expires: float | None) -> None:
        self.path = path
        self.fd = fd
        # write_checksum=False, explicitly: _ZSTD_FRAME_END has no checksum either.
        self.zstd = None if level is None else zstandard.ZstdCompressor(level, write_checksum=False)
        # zstd: None when a new frame must start (first write, or the old one is out of step).
        self.compressor: zstandard.ZstdCompressionObj | None = None
        self.frame_open = False  # zstd: the file ends inside a frame, on a block boundary
        self.size = 0
        self.torn = False
        self.written = 0  # uncompressed record bytes, for max_file_size
        self.expires = expires

    def append(self, lines: list[bytes]) -> tuple[int, Exception | None]:
        """Write ``lines``: (how many are in the file now, the error that stopped the rest)."""
        done = 0
        try:
            self._cut()
            if self.zstd is None:
                return self._append_plain(lines)
            for count, data in _chunks(lines, ZSTD_CHUNK):
                self._append_zstd(self.zstd, data)
                done += count
        except (OSError, zstandard.ZstdError) as exc:
            return done, exc
        return done, None

    def finish(self) -> bool:
        """End the frame, close, mark read-only; remove the file if it holds no record.

        Returns whether the file was kept. Raises OSError, the segment still open and whole,
        when the end of the frame cannot be written: call ``finish`` or ``abandon`` later.
        """
        self._cut()
        if self.frame_open:  # after a flushed block, zstd's own frame end is _ZSTD_FRAME_END
            self.compressor = None
            self._write(_ZSTD_FRAME_END)
            self.frame_open = False
        return self.abandon()

    def abandon(self) -> bool:
        """Close it as it is: mark it read-only, or remove it if empty. Logs, never raises."""
        try:
            try:
                self._cut()  # if even this fails, it stays writable: not complete
            finally:
                os.close(self.fd)
            if self.size:
                mark_read_only(self.path)
            else:
                os.unlink(self.path)
        except OSError as exc:
            log.error("cannot finish log segment %s: %s", self.path, exc)
        return bool(self.size)

    def _append_plain(self, lines: list[bytes]) -> tuple[int, Exception | None]:
        data = b"".join(lines)
        n, error = self._pwrite(data)
        if error is None:
            self.size += n
            self.written += n
            return len(lines), None
        kept = count = 0  # keep the records that reached the file whole
        for line in lines:
            if kept + len(line) > n:
                break
            kept += len(line)
            count += 1
        self.size += kept
        self.written += kept
        self.torn = n > kept
        self._cut(quiet=True)
        return count, error

    def _append_zstd(self, zstd: zstandard.ZstdCompressor, data: bytes) -> None:
        comp, self.compressor = self.compressor, None  # out of step until its output is written
        if comp is None:
            if self.frame_open:
                self._write(_ZSTD_FRAME_END)
                self.frame_open = False
            comp = zstd.compressobj()
        self._write(comp.compress(data) + comp.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
        self.compressor = comp
        self.frame_open = True
        self.written += len(data)

    def _write(self, data: bytes) -> None:
        """All of ``data`` at ``size``, or nothing (cut back) and OSError."""
        n, error = self._pwrite(data)
        if error is not None:
            self.torn = n > 0
            self._cut(quiet=True)
            raise error
        self.size += n

    def _pwrite(self, data: bytes) -> tuple[int, OSError | None]:
        view = memoryview(data)
        done = 0
        try:
            while done < len(view):
                n = os.pwrite(self.fd, view[done:], self.size + done)
                if n <= 0:
                    raise OSError(errno.EIO, f"write returned {n}")
                done += n
        except OSError as exc:
            return done, exc
        return done, None

    def _cut(self, *, quiet: bool = False) -> bool:
        """Truncate what a failed write left past ``size``; ``quiet``: False if that fails."""
        if self.torn:
            try:
                os.ftruncate(self.fd, self.size)
            except OSError:
                if not quiet:
                    raise
                return False
            self.torn = False
        return True


def _chunks(lines: list[bytes], limit: int) -> Iterator[tuple[int, bytes]]:
    """``lines`` joined into chunks of whole lines of about ``limit`` bytes: (count, data)."""
    start = size = 0
    for i, line in enumerate(lines, 1):
        size += len(line)
        if size >= limit or i == len(lines):
            yield i - start, b"".join(lines[start:i])
            start, size = i, 0


def open_locked(path: str) -> int:
    """Create ``path`` (FileExistsError if it exists) and hold its flock while it is open."""
    fd = os.open(path, OPEN_FLAGS, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def in_use(path: str) -> bool:
    """Whether a live writer holds ``path`` open (its flock): another worker's segment."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def bump(name: str) -> str:
    """The next name after ``name`` in the same second (one nanosecond later)."""
    stem, _, frac = name.partition(".")
    nanos = int(frac or "0") + 1
    if nanos > 999_999_999:  # 1e9 names in one second: move to a longer fraction
        return f"{stem}.{frac}0"
    return f"{stem}.{nanos:09d}"
