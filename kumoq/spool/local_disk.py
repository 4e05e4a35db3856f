"""``kind='LocalDisk'``: KumoMTA's file layout, written with group commit.

Each of the two spools (``data`` and ``meta``) is a KumoMTA LocalDisk directory of its own::

    <path>/lock                         flock-ed pid file (kumoq.spool.lock)
    <path>/new/<id>                     temporary files, deleted on start
    <path>/data/a1/a2/a3/a4/<rest>      one file per message
    <path>/free/f<n>, <path>/free/d<n>  kumoq: removed files and directories, for reuse
    <path>/quarantine/<id>              records moved aside by ``quarantine`` (kumoq), with
    <meta path>/quarantine/<id>.reason  when and why

where ``a1..a4`` are the first 8 hex digits of the spool id (the UUID ``time_low`` bytes,
big-endian) and ``rest`` the other 24 (reference §7). So with KumoMTA's usual policy the data
of a message lives in ``/var/spool/kumo/data/data/...`` and its meta in
``/var/spool/kumo/meta/data/...``. The meta files hold kumoq's JSON record (KumoMTA's plus
``num_attempts`` and ``due``). The paths, the recycling through ``free/`` and its rules are
kumoq.spool.disk_tree's.

A batch is committed as: move what the batch quarantines (renames, not synced), remove what
the batch removes (each file and the directories it empties renamed into ``free/``, or deleted
and pruned; not synced), write every file (a recycled one when ``free/`` has one whose
removal a sync has made durable, else a temp file in ``new/``), make them durable
(``sync_mode``), rename each into place (its directories taken from ``free/`` or made), make
the renames durable by fsyncing each affected directory once. Data is renamed before meta, so
a crash can leave an orphan data file (wasted space) but never a meta record whose data was
not written. The writer commits the submissions that only remove after the others
(``removes_last``): a batch's ``250`` never waits for the removes that came with it.

How the batch is made durable (both knobs measured by ``python -m bench.spool``):
- ``sync_mode="fdatasync"``: fdatasync each file, then fsync each affected directory (and
  ``free/`` while retirements wait for a sync) once; ``sync_mode="syncfs"``: one
  ``syncfs(2)`` before the renames and one after, however big the batch (it also writes back
  other dirty data of that filesystem);
- ``io_threads=N``: the file writes of a batch (write [+ fdatasync]) and the fsyncs of
  directories are spread over N threads, so the filesystem can overlap them and merge the
  syncs into fewer journal commits; placing and recycling stay on the writer thread (one
  owner for the bookkeeping); 0 keeps it all on the writer.

Blocking IO runs on the writer thread and in ``asyncio.to_thread``. Imports kumoq.config.spool,
kumoq.errors and kumoq.spool.{base,disk_tree,lock,writer}.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, Literal, TypeVar, final

from kumoq.config.spool import SpoolDefinition, check_spool_pair
from kumoq.errors import SpoolCorruptError, SpoolError
from kumoq.spool.base import Op, Payload, check_spool_id, fold_ops
from kumoq.spool.disk_tree import DiskTree
from kumoq.spool.lock import SpoolLock
from kumoq.spool.writer import BatchingSpool

__all__ = [
    "DEFAULT_IO_THREADS",
    "DEFAULT_SYNC_MODE",
    "LocalDiskSpool",
    "SyncMode",
    "fsync_dir",
    "syncfs",
]

log = logging.getLogger(__name__)

SyncMode = Literal["fdatasync", "syncfs"]
DEFAULT_SYNC_MODE: Final[SyncMode] = "syncfs"
DEFAULT_IO_THREADS: Final = 0
_T = TypeVar("_T")
_R = TypeVar("_R")

_CHUNK: Final = 512  # stores per sync round: bounds the open temp files
_WRITE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
_REWRITE_FLAGS: Final = os.O_WRONLY | os.O_CLOEXEC  # a recycled file: no truncation to 0
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

_libc: ctypes.CDLL | None = None


def syncfs(fd: int) -> None:
    """``syncfs(2)``: write back and commit everything of the filesystem holding ``fd``."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def fsync_dir(path: str) -> None:
    fd = os.open(path, _DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@final
class _File:
    """A file written in this batch: its fd (-1 once closed), where it was written (a temp
    file in ``new/`` or a recycled one in ``free/``), and the id it is placed under."""

    __slots__ = ("fd", "flush", "msg_id", "temp", "tree")

    def __init__(self, fd: int, temp: str, msg_id: str, tree: DiskTree) -> None:
        self.fd = fd
        self.temp = temp
        self.msg_id = msg_id
        self.tree = tree
        self.flush = tree.flush


@final
class LocalDiskSpool(BatchingSpool):
    """Data and meta as files in two KumoMTA LocalDisk directories, with group commit.

    ``fdatasync``, ``fsync_dir`` and ``syncfs`` are instance attributes so tests can observe
    or delay the sync calls.
    """

    removes_last = True  # a remove costs about what a store does: the 250s do not wait for it

    def __init__(
        self,
        data: SpoolDefinition,
        meta: SpoolDefinition,
        *,
        sync_mode: SyncMode = DEFAULT_SYNC_MODE,
        io_threads: int = DEFAULT_IO_THREADS,
    ) -> None:
        check_spool_pair(data, meta)
        super().__init__(f"spool-writer-{Path(meta.path).name}", data.kind.value)
        self._data = DiskTree(data.path, data.flush)
        self._meta = DiskTree(meta.path, meta.flush)
        self.sync_mode = sync_mode
        self.io_threads = io_threads
        self._pool: ThreadPoolExecutor | None = None
        self._locks: list[SpoolLock] = []
        self._fs_fds: list[int] = []  # one open directory per filesystem, for syncfs
        self.fdatasync: Callable[[int], None] = os.fdatasync
        self.fsync_dir: Callable[[str], None] = fsync_dir
        self.syncfs: Callable[[int], None] = syncfs

    def __repr__(self) -> str:
        return (
            f"<LocalDiskSpool data={self._data.root} meta={self._meta.root} "
            f"{self.sync_mode} io_threads={self.io_threads}>"
        )

    # -- lifecycle (worker threads) ---------------------------------------------------------

    def _open(self) -> None:
        try:
            for tree in (self._data, self._meta):
                self._locks.append(SpoolLock.acquire(tree.root))
                removed, adopted = tree.open()
                if removed:
                    log.info("spool %s: removed %d leftover temp files", tree.root, removed)
                if adopted:
                    log.debug("spool %s: %d recycled entries in free/", tree.root, adopted)
            devices: set[int] = set()
            for tree in (self._data, self._meta):
                if tree.flush and (dev := os.stat(tree.data_dir).st_dev) not in devices:
                    devices.add(dev)
                    self._fs_fds.append(os.open(tree.data_dir, _DIR_FLAGS))
            if self.io_threads > 0:
                self._pool = ThreadPoolExecutor(self.io_threads, "spool-io")
        except BaseException:
            self._close_storage()
            raise

    def _close_storage(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        for fd in self._fs_fds:
            os.close(fd)
        self._fs_fds.clear()
        for lock in self._locks:
            lock.release()
        self._locks.clear()

    # -- the writer thread ------------------------------------------------------------------

    def _map(self, fn: Callable[[_T], _R], items: list[_T]) -> list[_R]:
        pool = self._pool
        if pool is None or len(items) < 2:
            return [fn(item) for item in items]
        return list(pool.map(fn, items))

    def _commit(self, ops: list[Op]) -> int:
        folded = fold_ops(ops)
        for msg_id, reason in folded.quarantines:
            self._quarantine_one(msg_id, reason)
        for msg_id in folded.removes:
            # Meta first: a crash between the two leaves data without meta, which nothing
            # enumerates (a leak), never a meta that points at no data.
            self._meta.remove(msg_id)
            self._data.remove(msg_id)
        stores = folded.stores
        syncs = 0
        for start in range(0, len(stores), _CHUNK):
            syncs += self._commit_stores(stores[start : start + _CHUNK])
        for tree in (self._data, self._meta):
            if not tree.flush:
                tree.settle()  # nothing is synced: nothing to wait for
        return syncs

    def _quarantine_one(self, msg_id: str, reason: str) -> None:
        """Move the meta, then the data, to ``<path>/quarantine/<id>`` in their own spools,
        and write the reason beside the meta as ``<id>.reason``. A name already taken (the
        same id quarantined before) gets a suffix ``.1``, ``.2``...: nothing is overwritten."""
        meta, data = self._meta, self._data
        for tree in (meta, data):
            os.makedirs(tree.quarantine_dir, exist_ok=True)
        name, n = msg_id, 0
        while any(
            os.path.lexists(p)
            for p in (f"{meta.quarantine_dir}/{name}", f"{meta.quarantine_dir}/{name}.reason",
                      f"{data.quarantine_dir}/{name}")
        ):  # fmt: skip
            n += 1
            name = f"{msg_id}.{n}"
        # Meta first, as in a remove: a crash in between leaves data without meta (never
        # enumerated, still on disk), never a meta without its data.
        moved = meta.move_out(msg_id, f"{meta.quarantine_dir}/{name}")
        moved = data.move_out(msg_id, f"{data.quarantine_dir}/{name}") or moved
        if moved:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            with open(f"{meta.quarantine_dir}/{name}.reason", "w", encoding="utf-8") as f:
                f.write(f"{stamp} {reason}\n")

    def _commit_stores(self, stores: list[tuple[str, Payload | None, bytes]]) -> int:
        data_tree, meta_tree = self._data, self._meta
        jobs: list[tuple[DiskTree, str, Payload, str, int]] = []
        for msg_id, data, meta in stores:
            if data is not None:
                jobs.append((data_tree, msg_id, data, *data_tree.take_file(msg_id)))
            jobs.append((meta_tree, msg_id, meta, *meta_tree.take_file(msg_id)))
        results = self._map(self._write_one, jobs)
        files = [r for r in results if not isinstance(r, BaseException)]
        done: set[str] = set()  # written files renamed into place
        try:
            for r in results:
                if isinstance(r, BaseException):
                    raise r
            syncs = 0
            if self.sync_mode == "fdatasync":
                syncs += sum(1 for f in files if f.flush)
            elif any(f.flush for f in files):
                syncs += self._syncfs_all()
            for f in files:
                fd, f.fd = f.fd, -1
                os.close(fd)
            dirs: set[str] = set()
            # data before meta: a crash may orphan data, never publish meta without data
            for tree in (data_tree, meta_tree):
                for f in files:
                    if f.tree is tree:
                        changed = tree.place(f.msg_id, f.temp)
                        done.add(f.temp)
                        if f.flush:
                            dirs.update(changed)
            if dirs:
                settled = [t for t in (data_tree, meta_tree) if t.flush]
                if self.sync_mode == "fdatasync":
                    # free/ too: its new entries are the durable end of the retirements
                    dirs.update(t.free_dir for t in settled if t.unsettled)
                    self._map(self.fsync_dir, sorted(dirs))
                    syncs += len(dirs)
                else:
                    syncs += self._syncfs_all()
                for tree in settled:  # that sync began after every retirement so far
                    tree.settle()
            return syncs
        finally:
            for f in files:
                if f.fd >= 0:
                    os.close(f.fd)
                if f.temp not in done:
                    with contextlib.suppress(OSError):
                        os.unlink(f.temp)

    def _write_one(self, job: tuple[DiskTree, str, Payload, str, int]) -> _File | BaseException:
        """Write (and, in fdatasync mode, sync) one file, its pieces one after the other
        (never joined): a new temp file, or a recycled one overwritten and cut to length
        (``size`` is its old length, -1 for a new file). Errors are returned."""
        tree, msg_id, payload, temp, size = job
        try:
            fd = os.open(temp, _WRITE_FLAGS if size < 0 else _REWRITE_FLAGS, 0o600)
        except OSError as exc:
            return exc
        try:
            written = 0
            for piece in (payload,) if isinstance(payload, bytes) else payload:
                view = memoryview(piece)
                while view:
                    n = os.write(fd, view)
                    written += n
                    view = view[n:]
            if written < size:
                os.ftruncate(fd, written)
            if tree.flush and self.sync_mode == "fdatasync":
                self.fdatasync(fd)
        except BaseException as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp)
            return exc
        return _File(fd, temp, msg_id, tree)

    def _syncfs_all(self) -> int:
        for fd in self._fs_fds:
            self.syncfs(fd)
        return len(self._fs_fds)

    # -- reads (asyncio.to_thread) ----------------------------------------------------------

    async def load_data(self, msg_id: str) -> bytes:
        path = self._data.path_for(check_spool_id(msg_id))
        try:
            data = await asyncio.to_thread(_read_file, path)
        except FileNotFoundError:
            raise SpoolCorruptError(f"spool has no data for {msg_id}") from None
        except OSError as exc:
            raise SpoolError(f"cannot read the data of {msg_id}: {exc}") from exc
        if not data:
            raise SpoolCorruptError(f"spool data of {msg_id} is empty")
        return data

    async def enumerate(self) -> AsyncIterator[tuple[str, bytes]]:
        pages = self._meta.scan()
        while (page := await asyncio.to_thread(next, pages, None)) is not None:
            for item in page:
                yield item


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
