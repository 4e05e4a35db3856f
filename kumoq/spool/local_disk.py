"""``kind='LocalDisk'``: KumoMTA's file layout, written with group commit.

Each of the two spools (``data`` and ``meta``) is a KumoMTA LocalDisk directory of its own::

    <path>/lock                         flock-ed pid file (kumoq.spool.lock)
    <path>/new/<id>                     temporary files, deleted on start
    <path>/data/a1/a2/a3/a4/<rest>      one file per message
    <path>/quarantine/<id>              records moved aside by ``quarantine`` (kumoq), with
    <meta path>/quarantine/<id>.reason  when and why

where ``a1..a4`` are the first 8 hex digits of the spool id (the UUID ``time_low`` bytes,
big-endian) and ``rest`` the other 24 (reference §7). So with KumoMTA's usual policy the data
of a message lives in ``/var/spool/kumo/data/data/...`` and its meta in
``/var/spool/kumo/meta/data/...``. The meta files hold kumoq's JSON record (KumoMTA's plus
``num_attempts`` and ``due``).

A batch is committed as: move what the batch quarantines (renames, not synced), remove what
the batch removes (unlink, then prune the emptied directories; not synced), write every temp
file, make them durable (``sync_mode``), rename each into place (creating its directories),
make the renames durable by fsyncing each affected directory once. Data is renamed before
meta, so a crash can leave an orphan data file (wasted space) but never a meta record whose
data was not written.

How the batch is made durable (both knobs measured by ``python -m bench.spool``):
- ``sync_mode="fdatasync"``: fdatasync each temp file, then fsync each affected directory
  once; ``sync_mode="syncfs"``: one ``syncfs(2)`` before the renames and one after, however
  big the batch (it also writes back other dirty data of that filesystem);
- ``io_threads=N``: the per-file work of a batch (create + write [+ fdatasync], rename
  [+ mkdir], fsync of directories, unlink) is spread over N threads, so the filesystem can
  overlap it and merge the syncs into fewer journal commits; 0 keeps it all on the writer.

Blocking IO runs on the writer thread and in ``asyncio.to_thread``. Imports kumoq.config.spool,
kumoq.errors and kumoq.spool.{base,lock,writer}.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, Literal, TypeVar, final

from kumoq.config.spool import SpoolDefinition, check_spool_pair
from kumoq.errors import SpoolCorruptError, SpoolError
from kumoq.spool.base import Op, Payload, check_spool_id, fold_ops
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
_ENUM_PAGE: Final = 512
_WRITE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
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
class _Tree:
    """One KumoMTA LocalDisk directory (the ``data`` or the ``meta`` spool)."""

    __slots__ = ("data_dir", "flush", "new_dir", "quarantine_dir", "root")

    def __init__(self, definition: SpoolDefinition) -> None:
        self.root = Path(definition.path)
        self.data_dir = str(self.root / "data")
        self.new_dir = str(self.root / "new")
        self.quarantine_dir = str(self.root / "quarantine")
        self.flush = definition.flush

    def path_for(self, msg_id: str) -> str:
        i = msg_id
        return f"{self.data_dir}/{i[0:2]}/{i[2:4]}/{i[4:6]}/{i[6:8]}/{i[8:]}"

    def temp_for(self, msg_id: str) -> str:
        return f"{self.new_dir}/{msg_id}"

    def clean_new(self) -> int:
        """Delete the temp files a crash left behind; returns how many."""
        removed = 0
        with os.scandir(self.new_dir) as entries:
            for entry in entries:
                try:
                    os.unlink(entry.path)
                    removed += 1
                except IsADirectoryError:
                    log.warning("spool %s: unexpected directory %s", self.root, entry.path)
                except FileNotFoundError:
                    pass
        return removed

    def unlink(self, msg_id: str) -> None:
        """Remove one file and prune the directories it leaves empty (never ``data/``).

        A missing file is fine; any other error raises, so the remove is retried."""
        path = self.path_for(msg_id)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return  # already gone: a remove is idempotent
        _prune(path)

    def move_out(self, msg_id: str, dest: str) -> bool:
        """Rename the file of ``msg_id`` to ``dest`` (in an existing directory on the same
        filesystem) and prune what that leaves empty; False if there was no file."""
        path = self.path_for(msg_id)
        try:
            os.rename(path, dest)
        except FileNotFoundError:
            return False
        _prune(path)
        return True

    def scan(self) -> Iterator[list[tuple[str, bytes]]]:
        """Pages of ``(id, file bytes)`` in id-prefix order; prunes empty directories."""
        page: list[tuple[str, bytes]] = []
        for prefix, path in self._walk(self.data_dir, "", 0):
            try:
                with open(path, "rb") as f:
                    page.append((prefix, f.read()))
            except FileNotFoundError:
                continue
            except OSError as exc:  # permissions, a directory, EIO: one entry, not the spool
                log.error("spool %s: cannot read %s, leaving it in place: %s", self.root, path, exc)
                continue
            if len(page) >= _ENUM_PAGE:
                yield page
                page = []
        if page:
            yield page

    def _walk(self, directory: str, prefix: str, depth: int) -> Iterator[tuple[str, str]]:
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return
        if not names and depth:
            with contextlib.suppress(OSError):
                os.rmdir(directory)
            return
        for name in names:
            path = f"{directory}/{name}"
            if depth < 4:
                if len(name) == 2:
                    yield from self._walk(path, prefix + name, depth + 1)
                    continue
            elif len(name) == 24:
                try:
                    yield check_spool_id(prefix + name), path
                    continue
                except SpoolError:
                    pass
            log.warning("spool %s: ignoring %s: not a spool entry", self.root, path)


def _prune(path: str) -> None:
    """Remove the directories below ``data/`` that the removal of ``path`` left empty."""
    for _ in range(4):
        path = os.path.dirname(path)
        try:
            os.rmdir(path)
        except OSError:
            return


@final
class _File:
    """A temp file written in this batch: its fd (-1 once closed) and where it goes."""

    __slots__ = ("fd", "final", "flush", "temp", "tree")

    def __init__(self, fd: int, temp: str, final: str, tree: _Tree) -> None:
        self.fd = fd
        self.temp = temp
        self.final = final
        self.tree = tree
        self.flush = tree.flush


@final
class LocalDiskSpool(BatchingSpool):
    """Data and meta as files in two KumoMTA LocalDisk directories, with group commit.

    ``fdatasync``, ``fsync_dir`` and ``syncfs`` are instance attributes so tests can observe
    or delay the sync calls.
    """

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
        self._data = _Tree(data)
        self._meta = _Tree(meta)
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
                os.makedirs(tree.new_dir, exist_ok=True)
                os.makedirs(tree.data_dir, exist_ok=True)
                removed = tree.clean_new()
                if removed:
                    log.info("spool %s: removed %d leftover temp files", tree.root, removed)
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
        if folded.removes:
            self._map(self._remove_one, folded.removes)
        stores = folded.stores
        syncs = 0
        for start in range(0, len(stores), _CHUNK):
            syncs += self._commit_stores(stores[start : start + _CHUNK])
        return syncs

    def _remove_one(self, msg_id: str) -> None:
        # Meta first: a crash between the two leaves data without meta, which nothing
        # enumerates (a leak, swept at start), never a meta that points at no data.
        self._meta.unlink(msg_id)
        self._data.unlink(msg_id)

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
        jobs: list[tuple[_Tree, str, Payload]] = []
        for msg_id, data, meta in stores:
            if data is not None:
                jobs.append((data_tree, msg_id, data))
            jobs.append((meta_tree, msg_id, meta))
        results = self._map(self._write_one, jobs)
        files = [r for r in results if not isinstance(r, BaseException)]
        done: set[str] = set()  # temps renamed into place
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
                batch = [f for f in files if f.tree is tree]
                for f, new_dirs in zip(batch, self._map(self._rename, batch), strict=True):
                    done.add(f.temp)
                    if f.flush:
                        dirs.update(new_dirs)
            if dirs:
                if self.sync_mode == "fdatasync":
                    self._map(self.fsync_dir, sorted(dirs))
                    syncs += len(dirs)
                else:
                    syncs += self._syncfs_all()
            return syncs
        finally:
            for f in files:
                if f.fd >= 0:
                    os.close(f.fd)
                if f.temp not in done:
                    with contextlib.suppress(OSError):
                        os.unlink(f.temp)

    def _write_one(self, job: tuple[_Tree, str, Payload]) -> _File | BaseException:
        """Write (and, in fdatasync mode, sync) one temp file, its pieces one after the other
        (never joined); errors are returned."""
        tree, msg_id, payload = job
        temp = tree.temp_for(msg_id)
        try:
            fd = os.open(temp, _WRITE_FLAGS, 0o600)
        except OSError as exc:
            return exc
        try:
            for piece in (payload,) if isinstance(payload, bytes) else payload:
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view) :]
            if tree.flush and self.sync_mode == "fdatasync":
                self.fdatasync(fd)
        except BaseException as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp)
            return exc
        return _File(fd, temp, tree.path_for(msg_id), tree)

    def _syncfs_all(self) -> int:
        for fd in self._fs_fds:
            self.syncfs(fd)
        return len(self._fs_fds)

    def _rename(self, f: _File) -> list[str]:
        """Move a temp file into place; returns the directories whose entries changed."""
        parent = os.path.dirname(f.final)
        dirs = [parent]
        try:
            os.rename(f.temp, f.final)
        except FileNotFoundError:
            self._make_dirs(parent, dirs)
            os.rename(f.temp, f.final)
        return dirs

    def _make_dirs(self, path: str, dirs: list[str]) -> None:
        """``mkdir -p`` that records, for each directory it creates, the parent to fsync."""
        try:
            os.mkdir(path)
        except FileNotFoundError:
            self._make_dirs(os.path.dirname(path), dirs)
            try:
                os.mkdir(path)
            except FileExistsError:
                return
        except FileExistsError:
            return
        dirs.append(os.path.dirname(path))

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
