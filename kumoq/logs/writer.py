"""Local log files: segments of JSON lines written by a background thread (reference §5).

``LocalLogWriter.write(line)`` runs on the event loop and only appends to an in-memory deque
(thread-safe without a lock; about 0.2 µs). A daemon thread wakes every ``flush_interval``
(0.2 s), takes what is queued and writes it to the current segment with ``pwrite`` (no fsync),
so a record reaches its file well within a second; with zstd every write ends with a flushed
block, so a reader can decompress everything written so far.

Segments are named ``<log_dir>/%Y%m%d-%H%M%S.<9-digit fraction>`` (UTC, from ``clock.now()``;
the fraction is bumped to keep names unique and increasing) and opened lazily on the first
record. A segment is finished when its uncompressed size reaches ``max_file_size`` (checked per
record, as KumoMTA does) or ``max_segment_duration`` has elapsed on ``clock.monotonic()``
(checked on every pass, so also when idle). Finishing ends the zstd frame, closes the file and
removes its write bits: **a read-only segment is complete** (kumoq.logs.tail relies on it). At
start every pre-existing file in ``log_dir`` is marked read-only the same way.

**Whole records only.** A segment writes at the end of its last whole record; a write that
fails part-way (ENOSPC, EDQUOT, EIO) is cut back to the last whole record. zstd is written in
chunks of whole records, each ending a block; after a failed chunk the compressor is ahead of
the file, so the frame is ended at the last good block with an empty last block (as zstd does)
and the next records start a new frame in the same segment (concatenated frames are valid zstd;
kumoq.logs.tail and KumoMTA's tools read them). A segment that got no record is removed.

**Full disk.** Records that could not be written are held, in order, and retried on every
pass, so writing resumes by itself. At most ``back_pressure`` records and ``max_held_bytes``
(64 MiB) are held; newer ones are dropped, counted in ``records_dropped`` and
``kumoq.metrics.LOG_RECORDS_DROPPED`` (label ``logger``: the ``log_dir``). One error line when
writing starts failing, at most one per ``REPORT_INTERVAL`` after it, one when it works again.
``close()`` tries once more, then drops (and counts) what is still held.

``back_pressure`` otherwise: KumoMTA makes the submitting task wait when its channel is full;
kumoq never blocks the event loop and ``write`` never drops: past ``back_pressure`` queued
lines it wakes the thread at once and counts the event in ``submit_full``. Callers that want
to slow down can check ``backlog``.

``start()`` creates ``log_dir`` and marks old segments (blocking IO, once, at startup);
``close()`` joins the thread (blocking: call it through ``asyncio.to_thread`` from the loop).
Close writers last at shutdown: ``write()`` after ``close()`` raises RuntimeError.

Imports kumoq.config.logs, kumoq.clock, kumoq.metrics; never asyncio, lupa, queue or smtp.
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final, final

import zstandard

from kumoq.clock import SystemClock
from kumoq.metrics import LOG_RECORDS_DROPPED

if TYPE_CHECKING:
    from kumoq.clock import Clock
    from kumoq.config.logs import LocalLogsConfig

__all__ = ["REPORT_INTERVAL", "LocalLogWriter", "mark_read_only", "segment_name"]

log = logging.getLogger("kumoq.logs")

FLUSH_INTERVAL: Final = 0.2
REPORT_INTERVAL: Final = 60.0  # seconds between two error lines of one outage
MAX_HELD_BYTES: Final = 64 << 20
ZSTD_CHUNK: Final = 64 << 10  # uncompressed bytes per zstd write (each ends a block)
# An empty raw block marked "last": ends a frame (the compressors write no checksum).
_ZSTD_FRAME_END: Final = b"\x01\x00\x00"
_OPEN_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


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
class _Segment:
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


@final
class LocalLogWriter:
    """The writer for one ``configure_local_logs`` call (see the module docstring).

    Construction does no IO; ``start()`` prepares ``log_dir`` and starts the thread. Records
    written before ``start()`` are kept and written on the first pass. ``clock`` (default: the
    system clock) names segments (``now()``), times ``max_segment_duration`` and spaces the
    outage reports (``monotonic()``).
    """

    def __init__(
        self,
        config: LocalLogsConfig,
        clock: Clock | None = None,
        *,
        flush_interval: float = FLUSH_INTERVAL,
        max_held_bytes: int = MAX_HELD_BYTES,
    ) -> None:
        self.config = config
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._flush_interval = flush_interval
        self._max_held_bytes = max_held_bytes
        self._queue: collections.deque[bytes] = collections.deque()
        self._held: collections.deque[bytes] = collections.deque()  # taken, not yet written
        self._back_pressure = config.back_pressure
        self._wake = threading.Event()
        self._io_lock = threading.Lock()
        self._segment: _Segment | None = None
        self._last_name = ""
        self._prepared = False
        self._closing = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._dropped = LOG_RECORDS_DROPPED.labels(logger=config.log_dir)
        self._error: Exception | None = None  # set while writing fails
        self._dropped_at_error = 0
        self._unreported = 0
        self._next_report = 0.0
        self.submit_full = 0
        self.segments_written = 0
        self.records_dropped = 0

    def start(self, *, thread: bool = True) -> None:
        """Create ``log_dir``, mark its files read-only, start the thread. Blocking IO, once.

        ``thread=False`` (tests) starts no thread: the owner calls ``pump()`` itself.
        Raises OSError when ``log_dir`` cannot be created or listed.
        """
        with self._io_lock:
            self._prepare()
        if thread and self._thread is None and not self._closing:
            self._thread = threading.Thread(
                target=self._run, name=f"kumoq-log {self.config.log_dir}", daemon=True
            )
            self._thread.start()

    # -- event-loop side ------------------------------------------------------------------

    def write(self, line: bytes) -> None:
        """Queue one record line (ending in ``\\n``). O(1), never blocks, never drops."""
        if self._closing:
            raise RuntimeError(f"log writer for {self.config.log_dir} is closed")
        queue = self._queue
        queue.append(line)
        if len(queue) > self._back_pressure:
            self.submit_full += 1
            if not self._wake.is_set():
                self._wake.set()

    @property
    def backlog(self) -> int:
        """Lines queued or held for a retry, not yet in a file."""
        return len(self._queue) + len(self._held)

    @property
    def current_segment(self) -> str | None:
        """Path of the segment being written, if one is open."""
        segment = self._segment
        return segment.path if segment is not None else None

    # -- writer side ----------------------------------------------------------------------

    def pump(self) -> None:
        """One pass: finish an expired segment, write what is queued or held, in order."""
        with self._io_lock:
            held, popleft = self._held, self._queue.popleft
            for _ in range(len(self._queue)):
                held.append(popleft())
            try:
                self._prepare()
                segment = self._segment
                if (
                    segment is not None
                    and segment.expires is not None
                    and self._clock.monotonic() >= segment.expires
                ):
                    self._finish_segment()
                if held:
                    self._write_held()
            except (OSError, zstandard.ZstdError) as exc:
                self._failed(exc)
            else:
                if self._error is not None:
                    log.warning(
                        "log records are written to %s again; %d were dropped meanwhile",
                        self.config.log_dir,
                        self.records_dropped - self._dropped_at_error,
                    )
                    self._error = None

    def close(self) -> None:
        """Write what is queued, finish the last segment and stop the thread. Idempotent.

        What still cannot be written is dropped (and counted).
        """
        if self._closed:
            return
        self._closing = True
        thread = self._thread
        if thread is not None:
            self._wake.set()
            thread.join()
        self.pump()
        with self._io_lock:
            if self._held:
                count = len(self._held)
                self._held.clear()
                self._drop(count)
                log.error(
                    "dropped %d log records for %s at shutdown: %s",
                    count,
                    self.config.log_dir,
                    self._error,
                )
            segment, self._segment = self._segment, None
            if segment is not None:
                try:
                    segment.finish()
                except (OSError, zstandard.ZstdError) as exc:
                    log.error("failed to finish log segment %s: %s", segment.path, exc)
                    segment.abandon()
        self._closed = True

    def _run(self) -> None:
        wake = self._wake
        while True:
            closing = self._closing
            try:
                self.pump()
            except Exception:  # keep logging alive whatever happens
                log.exception("log writer pass failed for %s", self.config.log_dir)
            if closing:
                return
            wake.wait(self._flush_interval)
            wake.clear()

    def _write_held(self) -> None:
        """Write the held records, oldest first, rotating by size; raise on the first error."""
        held = self._held
        max_size = self.config.max_file_size
        while held:
            segment = self._segment
            if segment is not None and segment.written >= max_size:
                self._finish_segment()  # full, but its finish failed on an earlier pass
            segment = self._segment or self._open_segment()
            room = max_size - segment.written
            batch = []
            for line in held:  # up to the record that fills the segment
                batch.append(line)
                room -= len(line)
                if room <= 0:
                    break
            done, error = segment.append(batch)
            for _ in range(done):
                held.popleft()
            if error is not None:
                raise error
            if room <= 0:
                self._finish_segment()

    def _failed(self, error: Exception) -> None:
        """Keep what may be held for a retry, drop the rest, report at most once a while."""
        held = self._held
        keep = min(len(held), self._back_pressure)
        size = 0
        for i, line in enumerate(itertools.islice(held, keep)):
            size += len(line)
            if size > self._max_held_bytes:
                keep = i
                break
        dropped = len(held) - keep
        for _ in range(dropped):
            held.pop()
        self._drop(dropped)
        now = self._clock.monotonic()
        first = self._error is None
        self._error = error
        if first:
            self._dropped_at_error = self.records_dropped
        elif now < self._next_report:
            return
        self._next_report = now + REPORT_INTERVAL
        log.error(
            "%s write log records to %s: %s; %d held for a retry (at most %d), %d dropped%s",
            "cannot" if first else "still cannot",
            self.config.log_dir,
            error,
            len(held),
            self._back_pressure,
            self._unreported,
            "" if first else " since the last report",
        )
        self._unreported = 0

    def _drop(self, count: int) -> None:
        if count:
            self.records_dropped += count
            self._unreported += count
            self._dropped.inc(count)

    def _open_segment(self) -> _Segment:
        log_dir = self.config.log_dir
        now = self._clock.now()
        while True:
            name = segment_name(now)
            if name <= self._last_name:
                name = _bump(self._last_name)
            path = os.path.join(log_dir, name)
            try:
                fd = os.open(path, _OPEN_FLAGS, 0o666)
            except FileExistsError:  # another writer sharing log_dir took this name
                self._last_name = name
                continue
            self._last_name = name
            break
        duration = self.config.max_segment_duration
        expires = self._clock.monotonic() + duration if duration is not None else None
        segment = _Segment(path, fd, self.config.compression_level, expires)
        self._segment = segment
        return segment

    def _finish_segment(self) -> None:
        """Finish the current segment; on OSError it stays current, to be finished later."""
        segment = self._segment
        if segment is not None:
            if segment.finish():
                self.segments_written += 1
            self._segment = None

    def _prepare(self) -> None:
        if self._prepared:
            return
        log_dir = self.config.log_dir
        os.makedirs(log_dir, exist_ok=True)
        with os.scandir(log_dir) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    mark_read_only(entry.path)
                except OSError as exc:
                    log.warning("cannot mark %s read-only: %s", entry.path, exc)
        self._prepared = True


def _bump(name: str) -> str:
    """The next name after ``name`` in the same second (one nanosecond later)."""
    stem, _, frac = name.partition(".")
    nanos = int(frac or "0") + 1
    if nanos > 999_999_999:  # 1e9 names in one second: move to a longer fraction
        return f"{stem}.{frac}0"
    return f"{stem}.{nanos:09d}"
