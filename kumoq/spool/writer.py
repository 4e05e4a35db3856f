"""Group commit: one writer thread turns many concurrent stores into few disk syncs.

The event loop side (``submit``) is lock-free and never blocks: it puts ``(ops, future)`` on a
``queue.SimpleQueue`` and returns the future. The writer thread takes everything queued,
hands the whole batch to the backend's ``commit`` (write, one sync round, rename), and then
resolves every future of the batch with a single ``loop.call_soon_threadsafe``. Stores that
arrive while a sync is in flight wait for the next batch, so under load each sync is shared
by as many messages as arrived during the previous one, and an idle spool syncs at once.

``BatchingSpool`` is the shared half of every ``Spool`` implementation built on this writer.

Metrics (kumoq.metrics): each commit's duration goes to ``kumoq_spool_commit_latency_seconds``
(label ``spool``: the kind), observed on the writer thread once per batch; each store's wait,
from ``submit`` until its batch is durable, goes to KumoMTA's ``message_save_latency``, observed
on the event loop once per stored message.

Imports kumoq.errors, kumoq.metrics and kumoq.spool.base; the backends supply the IO.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Final

from kumoq.errors import SpoolError
from kumoq.metrics import MESSAGE_SAVE_LATENCY, SPOOL_COMMIT_LATENCY
from kumoq.spool.base import (
    QUARANTINE,
    REMOVE,
    STORE,
    Op,
    Payload,
    SpoolStats,
    check_spool_id,
)

__all__ = ["BatchingSpool", "GroupCommitWriter"]

log = logging.getLogger(__name__)

_Item = tuple[list[Op], "asyncio.Future[None]"]
_STOP: Final = None
_SAVE_LATENCY: Final = MESSAGE_SAVE_LATENCY.child()


def _removes_last(items: list[_Item]) -> tuple[list[_Item], list[_Item]]:
    """``items`` as two batches: everything else, then the submissions that only remove.

    The stores of the first batch are durable, and their futures resolved, before the removes
    run. Kept as one batch when a remove and another operation name the same id (a remove
    then a store of it must leave it stored). O(operations)."""
    first: list[_Item] = []
    last: list[_Item] = []
    for item in items:
        (last if all(op[0] == REMOVE for op in item[0]) else first).append(item)
    if not first or not last:
        return items, []
    touched = {op[1] for item_ops, _ in first for op in item_ops}
    if any(op[1] in touched for item_ops, _ in last for op in item_ops):
        return items, []
    return first, last


def _resolve(outcomes: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for fut, error in outcomes:
        if fut.done():
            continue
        if error is None:
            fut.set_result(None)
        else:
            exc = SpoolError(f"spool write failed: {error}")
            exc.__cause__ = error
            fut.set_exception(exc)


class GroupCommitWriter:
    """A thread that commits queued operations in batches.

    ``commit(ops)`` runs on the writer thread, must be durable when it returns (if the spool
    flushes) and returns the number of sync calls it made. One writer per spool. ``kind``
    labels its commits in ``kumoq_spool_commit_latency_seconds``. With ``removes_last``, the
    submissions that only remove are committed after the others, in a batch of their own, so
    that the stores' ``250`` does not wait for them (``_removes_last``).
    """

    def __init__(
        self,
        name: str,
        commit: Callable[[list[Op]], int],
        stats: SpoolStats,
        kind: str = "unknown",
        *,
        removes_last: bool = False,
    ) -> None:
        self._name = name
        self._removes_last = removes_last
        self._commit = commit
        self._stats = stats
        self._commit_latency = SPOOL_COMMIT_LATENCY.labels(spool=kind)
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
        fut: asyncio.Future[None] = loop.create_future()
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
        loop = self._loop
        assert loop is not None
        stopping = False
        while not stopping:
            item = get()
            items: list[_Item] = []
            while True:
                if item is _STOP:
                    stopping = True
                else:
                    items.append(item)
                if empty():
                    break
                item = get_nowait()
            if not items:
                continue
            first, last = _removes_last(items) if self._removes_last else (items, [])
            for group in (first, last):
                if group and not self._commit_group(group, loop):
                    return  # the loop is closed: nobody is waiting any more

    def _commit_group(self, items: list[_Item], loop: asyncio.AbstractEventLoop) -> bool:
        """Commit ``items`` as one batch and resolve their futures; False if the loop is gone."""
        ops = [op for item_ops, _ in items for op in item_ops]
        error = self._commit_counted(ops)
        if error is not None and len(items) > 1:
            # One bad operation must not fail the others of its batch: commit each
            # submission on its own, so a remove is not failed by a store (full disk).
            outcomes = [(fut, self._commit_counted(item_ops)) for item_ops, fut in items]
        else:
            outcomes = [(fut, error) for _, fut in items]
        try:
            loop.call_soon_threadsafe(_resolve, outcomes)
        except RuntimeError:
            return False
        return True

    def _commit_counted(self, ops: list[Op]) -> BaseException | None:
        stats = self._stats
        error: BaseException | None = None
        started = time.perf_counter()
        try:
            stats.syncs += self._commit(ops)
        except Exception as exc:
            log.error("%s: commit of %d operations failed: %s", self._name, len(ops), exc)
            stats.errors += 1
            error = exc
        self._commit_latency.observe(time.perf_counter() - started)
        stats.batches += 1
        stats.ops += len(ops)
        stats.max_batch = max(stats.max_batch, len(ops))
        return error


class BatchingSpool(ABC):
    """The loop-side half of a group-committed ``Spool``; backends fill in the IO.

    Subclasses implement ``_open`` (lock + recovery, on a worker thread), ``_commit`` (on the
    writer thread; it also carries out quarantines), ``_close_storage`` (on a worker thread),
    ``load_data`` and ``enumerate``.
    """

    remove_retry_initial: float = 1.0
    """Seconds before the first retry of a failed remove; doubles up to ``remove_retry_max``."""
    remove_retry_max: float = 60.0
    removes_last: bool = False
    """Commit remove-only submissions after the others (``GroupCommitWriter``): for a backend
    whose removes cost as much as its stores (LocalDisk)."""

    def __init__(self, name: str, kind: str = "unknown") -> None:
        self.stats = SpoolStats()
        self._name = name
        self._writer = GroupCommitWriter(
            name, self._commit, self.stats, kind, removes_last=self.removes_last
        )
        self._started = False
        self._failed_removes: set[str] = set()
        self._remove_retrier: asyncio.Task[None] | None = None

    @abstractmethod
    def _open(self) -> None:
        """Blocking: take the lock(s), create directories or tables, recover."""

    @abstractmethod
    def _commit(self, ops: list[Op]) -> int:
        """Blocking, writer thread: apply ``ops`` durably; return the number of syncs made.

        ``fold_ops(ops)`` gives their effect: quarantines first, then removes, then stores."""

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

    async def store(self, msg_id: str, data: Payload | None, meta: bytes) -> None:
        self.stats.stores += 1
        started = time.perf_counter()
        await self._writer.submit([(STORE, check_spool_id(msg_id), data, meta)])
        _SAVE_LATENCY.observe(time.perf_counter() - started)

    async def store_many(self, items: Sequence[tuple[str, Payload | None, bytes]]) -> None:
        if not items:
            return
        self.stats.stores += len(items)
        started = time.perf_counter()
        await self._writer.submit([(STORE, check_spool_id(i), d, m) for i, d, m in items])
        _SAVE_LATENCY.observe_many(time.perf_counter() - started, len(items))

    async def remove(self, msg_id: str) -> None:
        """Delete both halves. Never raises for a failed write: a remove that fails is
        retried in the background (``pending_removes``), as KumoMTA's spool does, so that a
        delivered message is never handed back to be delivered again."""
        self.stats.removes += 1
        msg_id = check_spool_id(msg_id)
        try:
            await self._writer.submit([(REMOVE, msg_id, None, None)])
        except SpoolError as exc:
            log.warning("%s: remove of %s failed, retrying in the background: %s",
                        self._name, msg_id, exc)  # fmt: skip
            self._failed_removes.add(msg_id)
            if self._remove_retrier is None or self._remove_retrier.done():
                self._remove_retrier = asyncio.get_running_loop().create_task(
                    self._retry_removes(), name=f"{self._name}-remove-retry"
                )

    async def quarantine(self, msg_id: str, reason: str) -> None:
        """Move both halves of ``msg_id`` into the quarantine (the backend's ``_commit`` does
        it on the writer thread, before the batch's removes and stores); SpoolError if the move
        failed, and the record then stays where it was."""
        await self._writer.submit([(QUARANTINE, check_spool_id(msg_id), None, reason.encode())])
        self.stats.quarantines += 1

    @property
    def pending_removes(self) -> frozenset[str]:
        """Ids whose remove failed and is waiting for its next try."""
        return frozenset(self._failed_removes)

    async def _retry_removes(self) -> None:
        delay = self.remove_retry_initial
        while self._failed_removes:
            await asyncio.sleep(delay)
            if await self._remove_pending():
                return
            delay = min(delay * 2, self.remove_retry_max)

    async def _remove_pending(self) -> bool:
        """One try at every pending remove, in one batch; True when none is left."""
        ids = sorted(self._failed_removes)
        if not ids:
            return True
        try:
            await self._writer.submit([(REMOVE, i, None, None) for i in ids])
        except SpoolError as exc:
            log.warning("%s: %d removes still failing: %s", self._name, len(ids), exc)
            return False
        self._failed_removes.difference_update(ids)
        log.info("%s: %d removes that had failed are done", self._name, len(ids))
        return not self._failed_removes

    async def close(self) -> None:
        if not self._started:
            return
        self._started = False
        retrier = self._remove_retrier
        if retrier is not None and not retrier.done():
            retrier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retrier
        if self._failed_removes and not await self._remove_pending():
            log.error(
                "%s: closing with %d removes that failed; these messages will be enumerated "
                "again at the next start: %s",
                self._name, len(self._failed_removes), ", ".join(sorted(self._failed_removes)),
            )  # fmt: skip
        await self._writer.close()
        await asyncio.to_thread(self._close_storage)
