"""Group commit: one writer thread turns many concurrent stores into few disk syncs.

The event loop side (``submit``) is lock-free and never blocks: it puts ``(ops, future)`` on a
``queue.SimpleQueue`` and returns the future. The writer thread takes everything queued,
hands the whole batch to the backend's ``commit`` (write, one sync round, rename), and then
resolves every future of the batch with a single ``loop.call_soon_threadsafe``. Stores that
arrive while a sync is in flight wait for the next batch, so under load each sync is shared
by as many messages as arrived during the previous one, and an idle spool syncs at once.

``BatchingSpool`` is the shared half of every ``Spool`` implementation built on this writer.

Imports kumoq.errors and kumoq.spool.base; the backends supply the IO.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from typing import Final

from kumoq.errors import SpoolError
from kumoq.spool.base import REMOVE, STORE, Op, SpoolStats, check_spool_id

__all__ = ["BatchingSpool", "GroupCommitWriter"]

log = logging.getLogger(__name__)

_Item = tuple[list[Op], "asyncio.Future[None]"]
_STOP: Final = None


def _resolve(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    if error is None:
        for fut in futures:
            if not fut.done():
                fut.set_result(None)
        return
    for fut in futures:
        if not fut.done():
            exc = SpoolError(f"spool write failed: {error}")
            exc.__cause__ = error
            fut.set_exception(exc)


class GroupCommitWriter:
    """A thread that commits queued operations in batches.

    ``commit(ops)`` runs on the writer thread, must be durable when it returns (if the spool
    flushes) and returns the number of sync calls it made. One writer per spool.
    """

    def __init__(self, name: str, commit: Callable[[list[Op]], int], stats: SpoolStats) -> None:
        self._name = name
        self._commit = commit
        self._stats = stats
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def submit(self, ops: list[Op]) -> asyncio.Future[None]:
        """Queue ``ops`` (they all land in one batch); the future resolves once committed.

        Called on the event loop; O(1), no lock is taken and nothing blocks.
        """
        loop = self._loop
        if loop is None or self._closed:
            raise SpoolError("the spool is not started" if loop is None else "the spool is closed")
        fut = loop.create_future()
        self._queue.put((ops, fut))
        return fut

    async def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is None:
            return
        self._queue.put(_STOP)
        await asyncio.to_thread(thread.join)

    def _run(self) -> None:
        get, get_nowait, empty = self._queue.get, self._queue.get_nowait, self._queue.empty
        stats = self._stats
        loop = self._loop
        assert loop is not None
        stopping = False
        while not stopping:
            item = get()
            ops: list[Op] = []
            futures: list[asyncio.Future[None]] = []
            while True:
                if item is _STOP:
                    stopping = True
                else:
                    ops.extend(item[0])
                    futures.append(item[1])
                if empty():
                    break
                item = get_nowait()
            if not futures:
                continue
            error: BaseException | None = None
            try:
                stats.syncs += self._commit(ops)
            except Exception as exc:
                log.error("%s: commit of %d operations failed: %s", self._name, len(ops), exc)
                stats.errors += 1
                error = exc
            stats.batches += 1
            stats.ops += len(ops)
            stats.max_batch = max(stats.max_batch, len(ops))
            try:
                loop.call_soon_threadsafe(_resolve, futures, error)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return


class BatchingSpool(ABC):
    """The loop-side half of a group-committed ``Spool``; backends fill in the IO.

    Subclasses implement ``_open`` (lock + recovery, on a worker thread), ``_commit`` (on the
    writer thread), ``_close_storage`` (on a worker thread), ``load_data`` and ``enumerate``.
    """

    def __init__(self, name: str) -> None:
        self.stats = SpoolStats()
        self._writer = GroupCommitWriter(name, self._commit, self.stats)
        self._started = False

    @abstractmethod
    def _open(self) -> None:
        """Blocking: take the lock(s), create directories or tables, recover."""

    @abstractmethod
    def _commit(self, ops: list[Op]) -> int:
        """Blocking, writer thread: apply ``ops`` durably; return the number of syncs made."""

    @abstractmethod
    def _close_storage(self) -> None:
        """Blocking: close files or connections and release the lock(s)."""

    @abstractmethod
    async def load_data(self, msg_id: str) -> bytes: ...

    @abstractmethod
    def enumerate(self) -> AsyncIterator[tuple[str, bytes]]: ...

    async def start(self) -> None:
        if self._started:
            raise SpoolError("the spool is already started")
        await asyncio.to_thread(self._open)
        self._started = True
        self._writer.start(asyncio.get_running_loop())

    async def store(self, msg_id: str, data: bytes | None, meta: bytes) -> None:
        self.stats.stores += 1
        await self._writer.submit([(STORE, check_spool_id(msg_id), data, meta)])

    async def store_many(self, items: list[tuple[str, bytes | None, bytes]]) -> None:
        if not items:
            return
        self.stats.stores += len(items)
        await self._writer.submit([(STORE, check_spool_id(i), d, m) for i, d, m in items])

    async def remove(self, msg_id: str) -> None:
        self.stats.removes += 1
        await self._writer.submit([(REMOVE, check_spool_id(msg_id), None, None)])

    async def close(self) -> None:
        if not self._started:
            return
        self._started = False
        await self._writer.close()
        await asyncio.to_thread(self._close_storage)
