"""The smart sink's maildir: files written ``tmp/`` → ``new/`` on one worker thread, never
fsynced, and read back for tests.

A sink keeps mail to look at, not mail to keep, so unlike ``kumoq.delivery.maildir`` (which
fsyncs every file and its directory before it answers, because the spool forgets the message
afterwards) nothing here waits for the disk: one thread takes every write that is waiting as a
batch, writes each file into ``tmp/``, renames it into ``new/`` and wakes the writers with one
``call_soon_threadsafe`` per batch. A reader never sees a half-written file in ``new/``. File
names follow the maildir convention ``kumoq.delivery.maildir`` uses (its ``escape_host``)::

    new/<secs>.#<ctr hex>M<nanos>P<pid>.<host>

``read_maildir`` parses what is in ``new/``, oldest first.

Imports: asyncio, threading, kumoq.delivery.maildir (``escape_host``). No event-loop thread
ever blocks on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.message
import email.policy
import itertools
import os
import queue
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from time import time_ns
from typing import Final, final

from kumoq.delivery.maildir import escape_host

__all__ = ["SinkMaildir", "maildir_files", "read_maildir"]

_OPEN_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_MAX_BATCH: Final = 512


@final
class _Write:
    """One file to write: its pieces, in order; the worker sets ``error`` when it fails."""

    __slots__ = ("error", "loop", "parts", "waiter")

    def __init__(
        self,
        parts: Sequence[bytes],
        loop: asyncio.AbstractEventLoop,
        waiter: asyncio.Future[None],
    ) -> None:
        self.parts = parts
        self.loop = loop
        self.waiter = waiter
        self.error: OSError | None = None


def _settle(writes: list[_Write]) -> None:
    for w in writes:
        if not w.waiter.done():
            if w.error is None:
                w.waiter.set_result(None)
            else:
                w.waiter.set_exception(w.error)


@final
class SinkMaildir:
    """One maildir (``tmp/``, ``new/``, ``cur/`` under ``root``, created on first use) and the
    thread that writes into it. ``write()`` returns once the file is in ``new/``; an IO error
    is raised from ``write()``. ``files_written`` counts the files in ``new/``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._host = escape_host(socket.gethostname())
        self._pid = os.getpid()
        self._counter = itertools.count()
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.files_written = 0

    async def write(self, parts: Sequence[bytes]) -> None:
        """Write one message (the concatenation of ``parts``) into ``new/``."""
        if self._closed:
            raise RuntimeError("the sink's maildir is closed")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kumoq-sink-maildir")
            self._thread.daemon = True
            self._thread.start()
        self._queue.put(_Write(parts, loop, waiter))
        await waiter

    async def close(self) -> None:
        """Write what was submitted, then stop the thread (joined off the event loop)."""
        self._closed = True
        thread = self._thread
        if thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(thread.join)
            self._thread = None

    # ---- worker thread ---------------------------------------------------------------------
    def _run(self) -> None:
        for sub in ("tmp", "new", "cur"):
            os.makedirs(self.root / sub, exist_ok=True)
        tmp = str(self.root / "tmp")
        new = str(self.root / "new")
        get, get_nowait = self._queue.get, self._queue.get_nowait
        stop = False
        while not stop:
            first = get()
            if first is None:
                break
            batch = [first]
            while len(batch) < _MAX_BATCH:
                try:
                    item = get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            for w in batch:
                try:
                    self._write_one(w.parts, tmp, new)
                except OSError as exc:
                    w.error = exc
                else:
                    self.files_written += 1
            by_loop: dict[asyncio.AbstractEventLoop, list[_Write]] = {}
            for w in batch:
                by_loop.setdefault(w.loop, []).append(w)
            for loop, writes in by_loop.items():
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
                    loop.call_soon_threadsafe(_settle, writes)

    def _write_one(self, parts: Sequence[bytes], tmp: str, new: str) -> None:
        secs, nanos = divmod(time_ns(), 1_000_000_000)
        name = f"{secs}.#{next(self._counter):x}M{nanos}P{self._pid}.{self._host}"
        tmp_path = f"{tmp}/{name}"
        fd = os.open(tmp_path, _OPEN_FLAGS, 0o666)
        try:
            for piece in parts:
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view) :]
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp_path)
            raise
        os.close(fd)
        os.rename(tmp_path, f"{new}/{name}")


def maildir_files(root: Path | str) -> list[Path]:
    """The files in ``<root>/new``, oldest first (by name: seconds, then a counter)."""
    new = Path(root) / "new"
    if not new.is_dir():
        return []

    def order(path: Path) -> tuple[int, int, str]:
        secs, _, rest = path.name.partition(".#")
        counter = rest.partition("M")[0]
        try:
            return int(secs), int(counter, 16), path.name
        except ValueError:
            return 0, 0, path.name

    return sorted((p for p in new.iterdir() if p.is_file()), key=order)


def read_maildir(root: Path | str) -> list[email.message.Message]:
    """Every message in ``<root>/new``, parsed (``compat32``), oldest first."""
    return [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.compat32)
        for p in maildir_files(root)
    ]
