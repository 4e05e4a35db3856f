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
start every pre-existing file in ``log_dir`` is marked read-only the same way, except the
segments other live writers hold: each writer holds an ``flock`` on its open segment, so the
workers of ``kumoq serve --workers N`` share one ``log_dir``.

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

``back_pressure`` otherwise: KumoMTA makes the submitter wait; kumoq never blocks the loop and
``write`` never drops: past it, it wakes the thread and counts ``submit_full`` (see ``backlog``).

``start()`` creates ``log_dir`` and marks old segments (blocking IO, once, at startup);
``close()`` joins the thread (blocking: call it through ``asyncio.to_thread`` from the loop).
Close writers last at shutdown: ``write()`` after ``close()`` raises RuntimeError.

Imports kumoq.config.logs, kumoq.clock, kumoq.metrics; never asyncio, lupa, queue or smtp.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import threading
from typing import TYPE_CHECKING, Final, final

import zstandard

from kumoq.clock import SystemClock
from kumoq.logs.segment import Segment, bump, in_use, mark_read_only, open_locked, segment_name
from kumoq.metrics import LOG_RECORDS_DROPPED

if TYPE_CHECKING:
    from kumoq.clock import Clock
    from kumoq.config.logs import LocalLogsConfig

__all__ = ["REPORT_INTERVAL", "LocalLogWriter", "mark_read_only", "segment_name"]

log = logging.getLogger("kumoq.logs")

FLUSH_INTERVAL: Final = 0.2
REPORT_INTERVAL: Final = 60.0  # seconds between two error lines of one outage
MAX_HELD_BYTES: Final = 64 << 20


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
        self._segment: Segment | None = None
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

    def _open_segment(self) -> Segment:
        log_dir = self.config.log_dir
        now = self._clock.now()
        while True:
            name = segment_name(now)
            if name <= self._last_name:
                name = bump(self._last_name)
            path = os.path.join(log_dir, name)
            try:
                fd = open_locked(path)
            except FileExistsError:  # another writer sharing log_dir took this name
                self._last_name = name
                continue
            self._last_name = name
            break
        duration = self.config.max_segment_duration
        expires = self._clock.monotonic() + duration if duration is not None else None
        segment = Segment(path, fd, self.config.compression_level, expires)
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
                    if not in_use(entry.path):
                        mark_read_only(entry.path)
                except OSError as exc:
                    log.warning("cannot mark %s read-only: %s", entry.path, exc)
        self._prepared = True
