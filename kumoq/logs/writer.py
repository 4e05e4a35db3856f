"""Local log files: segments of JSON lines written by a background thread (reference §5).

``LocalLogWriter.write(line)`` runs on the event loop and only appends to an in-memory deque
(thread-safe without a lock; about 0.2 µs). A daemon thread wakes every ``flush_interval``
(0.2 s), takes what is queued, writes it to the current segment in one call and flushes it to the
OS (no fsync), so a record reaches its file well within a second; with zstd the compressor's
block is flushed too, so a reader can decompress everything written so far.

Segments are named ``<log_dir>/%Y%m%d-%H%M%S.<9-digit fraction>`` (UTC, from ``clock.now()``;
the fraction is bumped to keep names unique and increasing) and opened lazily on the first
record. A segment is finished when its uncompressed size reaches ``max_file_size`` (checked per
record, as KumoMTA does) or ``max_segment_duration`` has elapsed on ``clock.monotonic()``
(checked on every pass, so also when idle). Finishing ends the zstd frame, closes the file and
removes its write bits: **a read-only segment is complete** (kumoq.logs.tail relies on it). At
start every pre-existing file in ``log_dir`` is marked read-only the same way.

``back_pressure``: KumoMTA makes the submitting task wait when its channel is full. kumoq never
blocks the event loop and never drops a record: when more than ``back_pressure`` lines are
queued, ``write`` wakes the thread at once (instead of at the next tick) and counts the event
in ``submit_full``; the queue may grow past the limit until the thread catches up. Callers that
want to slow down can check ``backlog``. A write error (disk full) is logged and that batch is
lost, as in KumoMTA ("failed to log").

``start()`` creates ``log_dir`` and marks old segments (blocking IO, once, at startup);
``close()`` joins the thread (blocking: call it through ``asyncio.to_thread`` from the loop).
Close writers last at shutdown: ``write()`` after ``close()`` raises RuntimeError.

Imports kumoq.config.logs and kumoq.clock; never asyncio, lupa or the queue/smtp layers.
"""

from __future__ import annotations

import collections
import logging
import os
import stat
import threading
import time
from typing import TYPE_CHECKING, BinaryIO, Final, final

import zstandard

from kumoq.clock import SystemClock

if TYPE_CHECKING:
    from kumoq.clock import Clock
    from kumoq.config.logs import LocalLogsConfig

__all__ = ["LocalLogWriter", "mark_read_only", "segment_name"]

log = logging.getLogger("kumoq.logs")

FLUSH_INTERVAL: Final = 0.2


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
    """One open segment file, plain or a streaming zstd frame."""

    __slots__ = ("compressor", "dirty", "expires", "file", "path", "written")

    def __init__(
        self,
        path: str,
        file: BinaryIO,
        compression_level: int | None,
        expires: float | None,
    ) -> None:
        self.path = path
        self.file = file
        self.compressor = (
            zstandard.ZstdCompressor(level=compression_level).compressobj()
            if compression_level is not None
            else None
        )
        self.written = 0
        self.dirty = False
        self.expires = expires

    def write(self, data: bytes) -> None:
        comp = self.compressor
        if comp is None:
            self.file.write(data)
        else:
            out = comp.compress(data)
            if out:
                self.file.write(out)
        self.written += len(data)
        self.dirty = True

    def flush(self) -> None:
        if not self.dirty:
            return
        if self.compressor is not None:
            self.file.write(self.compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
        self.file.flush()
        self.dirty = False

    def finish(self) -> None:
        try:
            if self.compressor is not None:
                self.file.write(self.compressor.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))
            self.file.close()
        finally:
            mark_read_only(self.path)


@final
class LocalLogWriter:
    """The writer for one ``configure_local_logs`` call (see the module docstring).

    Construction does no IO; ``start()`` prepares ``log_dir`` and starts the thread. Records
    written before ``start()`` are kept and written on the first pass. ``clock`` (default: the
    system clock) names segments (``now()``) and times ``max_segment_duration``
    (``monotonic()``).
    """

    def __init__(
        self,
        config: LocalLogsConfig,
        clock: Clock | None = None,
        *,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        self.config = config
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._flush_interval = flush_interval
        self._queue: collections.deque[bytes] = collections.deque()
        self._back_pressure = config.back_pressure
        self._wake = threading.Event()
        self._io_lock = threading.Lock()
        self._segment: _Segment | None = None
        self._last_name = ""
        self._prepared = False
        self._closing = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self.submit_full = 0
        self.segments_written = 0

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
        """Lines queued but not yet handed to the file."""
        return len(self._queue)

    @property
    def current_segment(self) -> str | None:
        """Path of the segment being written, if one is open."""
        segment = self._segment
        return segment.path if segment is not None else None

    # -- writer side ----------------------------------------------------------------------

    def pump(self) -> None:
        """One pass: finish an expired segment, write everything queued, flush to the OS."""
        with self._io_lock:
            if not self._prepared:
                self._prepare()
            queue = self._queue
            count = len(queue)
            try:
                segment = self._segment
                if (
                    segment is not None
                    and segment.expires is not None
                    and self._clock.monotonic() >= segment.expires
                ):
                    self._finish_segment()
                if not count:
                    return
                popleft = queue.popleft
                self._write_lines([popleft() for _ in range(count)])
                if self._segment is not None:
                    self._segment.flush()
            except (OSError, zstandard.ZstdError) as exc:
                log.error(
                    "failed to write %d log records in %s: %s", count, self.config.log_dir, exc
                )
                self._abandon_segment()

    def close(self) -> None:
        """Write what is queued, finish the last segment and stop the thread. Idempotent."""
        if self._closed:
            return
        self._closing = True
        thread = self._thread
        if thread is not None:
            self._wake.set()
            thread.join()
        self.pump()
        with self._io_lock:
            if self._segment is not None:
                try:
                    self._finish_segment()
                except OSError as exc:
                    log.error("failed to finish log segment: %s", exc)
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

    def _write_lines(self, lines: list[bytes]) -> None:
        max_size = self.config.max_file_size
        segment = self._segment or self._open_segment()
        total = sum(map(len, lines))
        if segment.written + total < max_size:
            segment.write(b"".join(lines))
            return
        # The batch crosses the size limit: rotate right after the record that reaches it.
        start = 0
        written = segment.written
        for i, line in enumerate(lines):
            written += len(line)
            if written >= max_size:
                segment.write(b"".join(lines[start : i + 1]))
                self._finish_segment()
                start = i + 1
                if start < len(lines):
                    segment = self._open_segment()
                    written = 0
        if start < len(lines):
            segment.write(b"".join(lines[start:]))

    def _open_segment(self) -> _Segment:
        log_dir = self.config.log_dir
        now = self._clock.now()
        while True:
            name = segment_name(now)
            if name <= self._last_name:
                name = _bump(self._last_name)
            path = os.path.join(log_dir, name)
            try:
                file = open(path, "xb")  # noqa: SIM115 - closed by _Segment.finish
            except FileExistsError:  # another writer sharing log_dir took this name
                self._last_name = name
                continue
            self._last_name = name
            break
        duration = self.config.max_segment_duration
        expires = self._clock.monotonic() + duration if duration is not None else None
        segment = _Segment(path, file, self.config.compression_level, expires)
        self._segment = segment
        return segment

    def _finish_segment(self) -> None:
        segment = self._segment
        self._segment = None
        if segment is not None:
            segment.finish()
            self.segments_written += 1

    def _abandon_segment(self) -> None:
        segment = self._segment
        self._segment = None
        if segment is not None:
            try:
                segment.finish()
            except (OSError, zstandard.ZstdError) as exc:
                log.error("failed to finish log segment %s: %s", segment.path, exc)

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
