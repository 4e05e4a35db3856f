"""One KumoMTA LocalDisk directory (the ``data`` or the ``meta`` spool), and how kumoq keeps
its directory churn off the disk.

The layout is KumoMTA's (kumoq.spool.local_disk)::

    <path>/data/a1/a2/a3/a4/<rest>      one file per message
    <path>/new/<id>                     temporary files, deleted on start
    <path>/free/f<n>, <path>/free/d<n>  kumoq: recycled files and directories (see below)

Spool ids are time-ordered UUIDv1s, and ``a4`` is the low byte of the 100 ns timestamp, so
nearly every message gets directories of its own: ``a4`` always, ``a3`` (25.6 µs) almost
always, ``a2`` (6.5 ms) every few messages. Creating and deleting them, and the file itself,
costs an inode and a block allocated and freed each (and with ``-o discard`` a synchronous
TRIM per freed block): measured on the project's ext4 VM, ``mkdir`` and ``rmdir`` were most of
the spool's time (docs/benchmarks.md, "LocalDisk").

So a removed message's file and the directories it empties are **renamed into ``free/``**
instead of deleted, and later stores take them back by renaming: a store writes into a
recycled file (overwrite, then ``ftruncate``) and places recycled directories where its path
needs new ones. Nothing is allocated or freed in the steady state; the paths under ``data/``
stay exactly KumoMTA's.

The rules that keep this safe:
- **An inode is reused only after its retirement is durable.** What a batch retires is
  *pending* until a later disk sync has completed (``settle``): otherwise a power cut could
  revert the rename that removed message X while the bytes of message Y already overwrote X's
  file, and X would come back with Y's content. A tree without ``flush`` settles at once
  (kumoq promises nothing across a power cut there).
- **Only directories this process created are recycled**, and only once empty by its own
  bookkeeping: ``_leaf`` (the ids whose files are in each ``a4`` directory) and ``_count``
  (tracked children of each ``a1``/``a2``/``a3``). A leaf is checked to be empty before it is
  retired. Anything else (directories from before the start, or after the bookkeeping was
  reset at ``TRACK_MAX`` tracked leaves, which bounds its memory) is pruned with ``rmdir`` when
  its last file goes, as before.
- Pools are bounded (``FILE_POOL_MAX``, ``DIR_POOL_MAX``); files over ``RECYCLE_MAX_SIZE`` are
  deleted rather than kept. On start, ``free/`` is adopted again (its entries hold nothing
  that matters; a non-empty directory there is deleted).

All methods except ``scan`` run on the spool's writer thread (``scan`` runs on a worker
thread and only reads and prunes empty directories, which the writer copes with). Imports
kumoq.errors and kumoq.spool.base.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final, final

from kumoq.errors import SpoolError
from kumoq.spool.base import check_spool_id

__all__ = [
    "DIR_POOL_MAX",
    "FILE_POOL_MAX",
    "RECYCLE_MAX_SIZE",
    "TRACK_MAX",
    "DiskTree",
]

log = logging.getLogger(__name__)

FILE_POOL_MAX: Final = 2048
"""Recycled files kept per tree (pending and available); beyond it a removed file is deleted."""
DIR_POOL_MAX: Final = 4096
"""Recycled directories kept per tree."""
RECYCLE_MAX_SIZE: Final = 32 * 1024
"""A removed file larger than this is deleted, so the pool never holds much disk space."""
TRACK_MAX: Final = 32768
"""Leaves tracked per tree; past it the bookkeeping starts afresh (about 10 MB at most)."""
_ENUM_PAGE: Final = 512
_NOT_THERE: Final = (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR)


@final
class DiskTree:
    """One LocalDisk directory: paths, the recycling pools and the directory bookkeeping."""

    __slots__ = (
        "_count",
        "_dirs",
        "_files",
        "_foreign",
        "_leaf",
        "_pending_dirs",
        "_pending_files",
        "_seq",
        "data_dir",
        "flush",
        "free_dir",
        "new_dir",
        "quarantine_dir",
        "root",
    )

    def __init__(self, path: str, flush: bool) -> None:
        self.root = Path(path)
        self.data_dir = str(self.root / "data")
        self.new_dir = str(self.root / "new")
        self.free_dir = str(self.root / "free")
        self.quarantine_dir = str(self.root / "quarantine")
        self.flush = flush
        self._files: list[tuple[str, int]] = []  # (path, size): reusable now
        self._pending_files: list[tuple[str, int]] = []  # retired, not yet durable
        self._dirs: list[str] = []
        self._pending_dirs: list[str] = []
        self._seq = time.time_ns()  # names in free/: unique across restarts
        self._leaf: dict[str, str | set[str]] = {}  # a1a2a3a4 -> id(s) with a file there
        self._count: dict[str, int] = {}  # a1a2a3, a1a2 or a1 -> tracked children
        self._foreign: set[str] = set()  # untracked directories known to exist

    # -- paths ------------------------------------------------------------------------------

    def path_for(self, msg_id: str) -> str:
        i = msg_id
        return f"{self.data_dir}/{i[0:2]}/{i[2:4]}/{i[4:6]}/{i[6:8]}/{i[8:]}"

    def _dir(self, prefix: str) -> str:
        """The directory of a 2, 4, 6 or 8 hex-digit id prefix."""
        parts = [prefix[k : k + 2] for k in range(0, len(prefix), 2)]
        return f"{self.data_dir}/{'/'.join(parts)}"

    def _free_name(self, kind: str) -> str:
        self._seq += 1
        return f"{self.free_dir}/{kind}{self._seq:x}"

    # -- start ------------------------------------------------------------------------------

    def open(self) -> tuple[int, int]:
        """Create the directories, delete the temp files a crash left behind, adopt ``free/``.
        Returns (temp files deleted, pool entries adopted)."""
        for d in (self.new_dir, self.data_dir, self.free_dir):
            os.makedirs(d, exist_ok=True)
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
        return removed, self._adopt()

    def _adopt(self) -> int:
        """Take ``free/`` back as the pools (already durable: a previous run retired them)."""
        adopted = 0
        with os.scandir(self.free_dir) as entries:
            for entry in entries:
                path = entry.path
                if entry.is_dir(follow_symlinks=False):
                    if len(self._dirs) < DIR_POOL_MAX and not os.listdir(path):
                        self._dirs.append(path)
                        adopted += 1
                    else:
                        shutil.rmtree(path, ignore_errors=True)
                    continue
                size = entry.stat(follow_symlinks=False).st_size if entry.is_file() else -1
                if (
                    self.flush
                    and 0 <= size <= RECYCLE_MAX_SIZE
                    and (len(self._files) < FILE_POOL_MAX)
                ):
                    self._files.append((path, size))
                    adopted += 1
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
        return adopted

    # -- stores -----------------------------------------------------------------------------

    def take_file(self, msg_id: str) -> tuple[str, int]:
        """Where to write ``msg_id``'s new file: a recycled file and its current size, or a
        new temp file in ``new/`` (size -1)."""
        if self._files:
            return self._files.pop()
        return f"{self.new_dir}/{msg_id}", -1

    def place(self, msg_id: str, src: str) -> list[str]:
        """Rename ``src`` to ``msg_id``'s path, making its directories (recycled ones first);
        returns the directories whose entries changed (to fsync)."""
        changed: list[str] = []
        p8 = msg_id[:8]
        leaf = self._dir(p8)
        entry = self._leaf.get(p8)
        if entry is None:
            try:
                tracked = self._need(p8, changed)
            except FileNotFoundError:
                # A directory the bookkeeping knew was pruned meanwhile (by an enumeration, or
                # by the pruning of an untracked neighbour): make the path, untracked.
                self._foreign.difference_update((p8[:2], p8[:4], p8[:6], p8))
                self._untrack(p8[:6])
                os.makedirs(leaf, exist_ok=True)
                changed.extend(self._dir(p8[:k]) for k in (2, 4, 6))
                changed.append(self.data_dir)
                tracked = False
            if tracked:
                self._leaf[p8] = msg_id
                if len(self._leaf) > TRACK_MAX:
                    self._forget()
        elif entry != msg_id:  # a second id in one leaf: ids of another node, or a bug
            if isinstance(entry, str):
                self._leaf[p8] = {entry, msg_id}
            else:
                entry.add(msg_id)
        final = f"{leaf}/{msg_id[8:]}"
        try:
            os.rename(src, final)
        except FileNotFoundError:
            if not os.path.exists(src):
                raise
            # A directory just placed was pruned by a concurrent enumeration: make it again.
            os.makedirs(leaf, exist_ok=True)
            os.rename(src, final)
        changed.append(leaf)
        return changed

    def _need(self, prefix: str, changed: list[str]) -> bool:
        """Make sure the directory of ``prefix`` exists; True if it is tracked (this process
        made it, so every entry in it is known)."""
        if prefix in self._count:
            return True
        if prefix in self._foreign:
            return False
        parent = prefix[:-2]
        parent_tracked = bool(parent) and self._need(parent, changed)
        if not self._make_dir(self._dir(prefix)):
            if parent_tracked:  # an entry nobody tracked under a tracked parent: stop tracking
                self._untrack(parent)
            if len(self._foreign) > 4096:
                self._foreign.clear()
            self._foreign.add(prefix)
            return False
        changed.append(self._dir(parent) if parent else self.data_dir)
        if parent_tracked:
            self._count[parent] += 1
        if len(prefix) < 8:
            self._count[prefix] = 0
        return True

    def _make_dir(self, path: str) -> bool:
        """Create ``path`` from the pool (a rename) or with mkdir; False if it existed."""
        while self._dirs:
            src = self._dirs.pop()
            try:
                os.rename(src, path)
            except OSError as exc:
                if exc.errno in _NOT_THERE:
                    self._dirs.append(src)
                    return False
                if exc.errno == errno.ENOENT and not os.path.lexists(src):
                    continue  # a pool entry someone deleted: try the next one
                self._dirs.append(src)
                raise
            return True
        try:
            os.mkdir(path)
        except FileExistsError:
            return False
        return True

    def _untrack(self, prefix: str) -> None:
        """Drop ``prefix`` and its ancestors from the bookkeeping: never retired at runtime."""
        while prefix:
            self._count.pop(prefix, None)
            prefix = prefix[:-2]

    def _forget(self) -> None:
        """Start the bookkeeping afresh (bounds its memory): what it tracked becomes untracked,
        pruned when emptied, as directories from before the start are."""
        self._leaf.clear()
        self._count.clear()
        self._foreign.clear()

    # -- removes ----------------------------------------------------------------------------

    def remove(self, msg_id: str) -> None:
        """Remove ``msg_id``'s file (recycled, or deleted); then retire or prune the directories
        that leaves empty. A missing file is fine; any other error raises (retried)."""
        path = self.path_for(msg_id)
        if self.flush and len(self._files) + len(self._pending_files) < FILE_POOL_MAX:
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                self._release(msg_id)
                return
            if size <= RECYCLE_MAX_SIZE:
                dest = self._free_name("f")
                try:
                    os.rename(path, dest)
                except FileNotFoundError:
                    self._release(msg_id)
                    return
                self._pending_files.append((dest, size))
                if not self._release(msg_id):
                    self._prune(msg_id)
                return
        try:
            os.unlink(path)
        except FileNotFoundError:
            self._release(msg_id)
            return
        if not self._release(msg_id):
            self._prune(msg_id)

    def _prune(self, msg_id: str, depth: int = 8) -> None:
        """Remove the untracked directories below ``data/`` that the removal of ``msg_id``'s
        file left empty, from its ``depth``-digit prefix up, and forget that they existed."""
        for k in range(depth, 0, -2):
            prefix = msg_id[:k]
            try:
                os.rmdir(self._dir(prefix))
            except OSError:
                return
            self._foreign.discard(prefix)

    def move_out(self, msg_id: str, dest: str) -> bool:
        """Rename the file of ``msg_id`` to ``dest`` (in an existing directory on the same
        filesystem), then retire or prune what that leaves empty; False if there was no file."""
        path = self.path_for(msg_id)
        try:
            os.rename(path, dest)
        except FileNotFoundError:
            return False
        if not self._release(msg_id):
            self._prune(msg_id)
        return True

    def _release(self, msg_id: str) -> bool:
        """``msg_id``'s file is gone; retire the tracked directories now empty. False if its
        leaf is not tracked (the caller prunes)."""
        p8 = msg_id[:8]
        entry = self._leaf.get(p8)
        if entry is None:
            return False
        if isinstance(entry, set):
            entry.discard(msg_id)
            if len(entry) > 1:
                return True
            if entry:
                self._leaf[p8] = next(iter(entry))
                return True
        elif entry != msg_id:
            return True  # not registered here: the leaf still holds the other id
        del self._leaf[p8]
        if not self._retire(self._dir(p8), leaf=True):
            self._untrack(p8[:6])
            return True
        prefix = p8[:-2]
        while prefix:
            n = self._count.get(prefix)
            if n is None:  # an untracked ancestor (from before the start): prune it if empty
                self._prune(msg_id, len(prefix))
                break
            if n > 1:
                self._count[prefix] = n - 1
                break
            del self._count[prefix]
            if not self._retire(self._dir(prefix), leaf=False):
                self._untrack(prefix[:-2])
                break
            prefix = prefix[:-2]
        return True

    def _retire(self, path: str, *, leaf: bool) -> bool:
        """Move an empty tracked directory into the pool (or rmdir it when the pool is full);
        False if it was not empty after all (then it stays, untracked)."""
        try:
            if leaf and os.listdir(path):  # cheap, and no file ever goes into the pool with it
                log.warning("spool %s: %s holds an unknown entry; left in place", self.root, path)
                return False
            if len(self._dirs) + len(self._pending_dirs) < DIR_POOL_MAX:
                dest = self._free_name("d")
                os.rename(path, dest)
                self._pending_dirs.append(dest)
            else:
                os.rmdir(path)
        except FileNotFoundError:
            pass  # pruned by a concurrent enumeration
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise
            return False
        return True

    def settle(self) -> None:
        """A disk sync that started after the last retirements has completed: what they
        retired may be reused (see the module docstring)."""
        if self._pending_files:
            self._files.extend(self._pending_files)
            self._pending_files.clear()
        if self._pending_dirs:
            self._dirs.extend(self._pending_dirs)
            self._pending_dirs.clear()

    @property
    def unsettled(self) -> bool:
        """Retired entries wait for a sync."""
        return bool(self._pending_files or self._pending_dirs)

    def pool_sizes(self) -> tuple[int, int]:
        """(files, directories) in ``free/``, pending or not."""
        return (
            len(self._files) + len(self._pending_files),
            len(self._dirs) + len(self._pending_dirs),
        )

    # -- enumeration (a worker thread) ------------------------------------------------------

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
