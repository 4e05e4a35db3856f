"""``kind='RocksDB'``: data and meta in one RocksDB database (``rocksdict``), with group commit.

The database is the directory ``<data path>/spool.rocksdb``. Everything is in its default
column family, under one-byte prefixes::

    b"d" + <16-byte spool id>          the message bytes
    b"m" + <16-byte spool id>          the meta record (JSON)
    b"q" + b"<id>[.<n>]/meta"          records moved aside by ``quarantine``: the meta, the
    b"q" + b"<id>[.<n>]/data"          data and b"<UTC time> <reason>"; ``.1``, ``.2``... when
    b"q" + b"<id>[.<n>]/reason"        the id was quarantined before (nothing is overwritten)

The 16-byte id is the spool id's UUID bytes, as KumoMTA keys its RocksDB spool. KumoMTA opens
one database per spool definition; kumoq keeps both halves in one, so that each group commit is
one WriteBatch and one WAL sync, and data and meta are written or removed together. Measured on
a 2-core VM (median of 400 commits of 2 KB data + 300 B meta, then their removes): one commit of
1 message took 0.25 ms in one database and 0.43 ms in two, of 20 messages 0.68 ms and 0.96 ms,
of 100 messages 2.0 ms and 2.5 ms. Column families were as fast as prefixes, but
``Rdict.repair`` (what an operator runs on a damaged database) drops every column family but
the default one, so prefixes it is.

Each batch: the quarantines (read what earlier batches stored, copy it under ``q``, delete it),
the removes, the stores, in one WriteBatch (a batch of more than 16 MiB in several, each
message whole in one, only the last synced). With ``flush`` (on either definition) a batch that
stores anything is written with ``sync=True`` (one WAL fdatasync however many messages it
carries); other batches are not synced (the WAL is in the page cache: a process crash keeps
them, a power cut may lose them). Writes use ``no_slowdown``: while RocksDB stalls writes the
batch is retried with backoff, for at most ``rocks_params.store_deadline`` seconds, then its
stores fail. After any other failed write RocksDB refuses every write until the database is
reopened (a full disk does that), so the next batch closes and reopens it first. Closing never
flushes the memtable (see ``_close_db``): the WAL is replayed at the next open.

Both spool directories are locked with the same pid-file lock as the other kinds (a ``meta``
path different from the ``data`` one only holds its lock). The data spool's ``rocks_params``
apply (the meta spool's when the data spool sets none). Reads (``load_data``, ``enumerate`` in
pages of 1,000) run on worker threads, under a lock that the reopen takes too. rocksdict
releases the GIL while RocksDB writes and syncs (measured: a 160 ms synced write left the main
thread running), so the writer thread does not stall the event loop.

Imports kumoq.config.spool, kumoq.errors, kumoq.spool.{base,lock,writer} and rocksdict.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from itertools import islice
from pathlib import Path
from typing import Final, final

from rocksdict import DBCompressionType, Options, Rdict, WriteBatch, WriteOptions

from kumoq.config.spool import RocksParams, SpoolDefinition, check_spool_pair
from kumoq.errors import SpoolCorruptError, SpoolError
from kumoq.spool.base import Folded, Op, Payload, check_spool_id, fold_ops, joined
from kumoq.spool.lock import SpoolLock
from kumoq.spool.writer import BatchingSpool

__all__ = ["DATA", "DB_DIR", "META", "QUARANTINE", "RocksSpool", "rocks_options"]

log = logging.getLogger(__name__)

DB_DIR: Final = "spool.rocksdb"
DATA: Final = b"d"
META: Final = b"m"
QUARANTINE: Final = b"q"
_ENUM_PAGE: Final = 1000
_BACKOFF_INITIAL: Final = 0.0005
_BACKOFF_MAX: Final = 0.05
_KEY_LEN: Final = 17  # prefix + 16 bytes
_BATCH_BYTES: Final = 16 * 1024 * 1024
_CLOSED: Final = "the spool database is closed (or being reopened after a failed write)"

Store = tuple[str, Payload | None, bytes]


def rocks_options(params: RocksParams) -> Options:
    """The rocksdict ``Options`` for ``params`` (raw bytes keys and values)."""
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_keep_log_file_num(10)  # as KumoMTA: RocksDB keeps 1000 LOG files by default
    if params.increase_parallelism is not None:
        opts.increase_parallelism(params.increase_parallelism)
    if params.optimize_level_style_compaction is not None:
        opts.optimize_level_style_compaction(params.optimize_level_style_compaction)
    if params.optimize_universal_style_compaction is not None:
        opts.optimize_universal_style_compaction(params.optimize_universal_style_compaction)
    if params.compaction_readahead_size is not None:
        opts.set_compaction_readahead_size(params.compaction_readahead_size)
    if params.max_open_files is not None:
        opts.set_max_open_files(params.max_open_files)
    if params.write_buffer_size is not None:
        opts.set_write_buffer_size(params.write_buffer_size)
    if params.level0_stop_writes_trigger is not None:
        opts.set_level_zero_stop_writes_trigger(params.level0_stop_writes_trigger)
    if params.memtable_huge_page_size is not None:
        opts.set_memtable_huge_page_size(params.memtable_huge_page_size)
    opts.set_paranoid_checks(params.paranoid_checks)
    opts.set_level_compaction_dynamic_level_bytes(params.level_compaction_dynamic_level_bytes)
    opts.set_compression_type(getattr(DBCompressionType, params.compression_type.lower())())
    opts.set_log_file_time_to_roll(int(params.log_file_time_to_roll))
    opts.set_delete_obsolete_files_period_micros(int(params.obsolete_files_period * 1e6))
    return opts


def _write_options(*, sync: bool) -> WriteOptions:
    opts = WriteOptions()
    opts.sync = sync
    opts.no_slowdown = True
    return opts


def _is_stall(exc: BaseException) -> bool:
    # rocksdict raises a plain Exception with RocksDB's status text.
    return str(exc).startswith("Result incomplete")


def _is_damaged(exc: BaseException) -> bool:
    return str(exc).startswith("Corruption")


@final
class RocksSpool(BatchingSpool):
    """Data and meta in one RocksDB database, with group commit.

    ``write`` (``db.write(batch, options)``) is an instance attribute so tests can observe,
    delay or fail the write that carries the sync.
    """

    def __init__(self, data: SpoolDefinition, meta: SpoolDefinition) -> None:
        check_spool_pair(data, meta)
        super().__init__(f"spool-writer-{Path(data.path).name}", data.kind.value)
        self._dirs = [Path(data.path), Path(meta.path)]
        self.db_path = Path(data.path) / DB_DIR
        self.flush = data.flush or meta.flush
        self.params = data.rocks_params or meta.rocks_params or RocksParams()
        self._locks: list[SpoolLock] = []
        self._db: Rdict | None = None
        self._db_lock = threading.Lock()  # reads against the reopen
        self._failed = False  # a write failed: reopen before the next one
        self._sync = _write_options(sync=True)
        self._no_sync = _write_options(sync=False)
        limit = self.params.limit_concurrent_loads
        self._loads = asyncio.Semaphore(limit) if limit is not None else None
        self.write: Callable[[WriteBatch, WriteOptions], None] = self._db_write

    def __repr__(self) -> str:
        return f"<RocksSpool {self.db_path} flush={self.flush}>"

    # -- lifecycle (worker threads, or the writer thread for a reopen) ------------------------

    def _open(self) -> None:
        try:
            data_dir, meta_dir = self._dirs
            self._locks.append(SpoolLock.acquire(data_dir))
            if meta_dir.resolve() != data_dir.resolve():
                self._locks.append(SpoolLock.acquire(meta_dir))
            with self._db_lock:
                self._open_db()
        except BaseException:
            self._close_storage()
            raise

    def _open_db(self) -> None:
        try:
            self._db = Rdict(str(self.db_path), rocks_options(self.params))
        except Exception as exc:
            if _is_damaged(exc):
                raise SpoolError(unreadable_database(self.db_path, exc)) from exc
            raise SpoolError(f"spool {self.db_path}: cannot open the database: {exc}") from exc

    def _close_db(self) -> None:
        # Closing flushes the memtable (rocksdict does, in ``close()`` and when the Rdict is
        # dropped). After a failed write (a full disk) that flush waits forever, holding the
        # GIL. Cancelling the background work first makes it return at once; the WAL holds
        # what the memtable held. The last reference going closes the database and releases
        # RocksDB's LOCK, so no method here keeps the Rdict in a local variable, where a
        # traceback could keep it alive: always ``self._db``.
        if self._db is not None:
            self._db.cancel_all_background(False)
        self._db = None

    def _close_storage(self) -> None:
        with self._db_lock:
            self._close_db()
        for lock in self._locks:
            lock.release()
        self._locks.clear()

    def _reopen(self) -> None:
        log.warning("spool %s: reopening the database after a failed write", self.db_path)
        with self._db_lock:
            self._close_db()
            self._open_db()
        self._failed = False

    # -- the writer thread ------------------------------------------------------------------

    def _db_write(self, batch: WriteBatch, options: WriteOptions) -> None:
        if self._db is None:
            raise SpoolError("the spool database is not open")
        self._db.write(batch, options)

    def _commit(self, ops: list[Op]) -> int:
        if self._failed:
            self._reopen()
        folded = fold_ops(ops)
        sync = self.flush and bool(folded.stores)
        # Big batches go in several WriteBatches (each message whole in one), so that a
        # transaction of 200 copies of a 1 MiB message is not one 200 MiB WriteBatch in memory.
        # Only the last one syncs: the WAL is sequential, its sync makes the others durable too.
        groups = _groups(folded.stores)
        for n, group in enumerate(groups):
            first, last = n == 0, n == len(groups) - 1
            self._write(
                Folded(folded.removes if first else [], group,
                       folded.quarantines if first else []),
                sync and last,
            )  # fmt: skip
        return 1 if sync else 0

    def _write(self, folded: Folded, sync: bool) -> None:
        """Write ``folded`` in one WriteBatch; retried while RocksDB stalls writes (a write
        consumes its WriteBatch, so each try builds it again), up to ``store_deadline``."""
        options = self._sync if sync else self._no_sync
        deadline: float | None = None
        delay = _BACKOFF_INITIAL
        while True:
            batch = self._batch(folded)
            if batch.is_empty():
                return
            try:
                self.write(batch, options)
                return
            except Exception as exc:
                if not _is_stall(exc):
                    self._failed = True
                    raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.params.store_deadline
            elif now >= deadline:
                raise SpoolError(
                    f"spool write timed out: RocksDB held writes back for more than "
                    f"{self.params.store_deadline:g} s (rocks_params.store_deadline)"
                )
            time.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX)

    def _batch(self, folded: Folded) -> WriteBatch:
        batch = WriteBatch(raw_mode=True)
        for msg_id, reason in folded.quarantines:
            self._quarantine_into(batch, msg_id, reason)
        for msg_id in folded.removes:
            key = bytes.fromhex(msg_id)
            batch.delete(META + key)
            batch.delete(DATA + key)
        for msg_id, data, meta in folded.stores:
            key = bytes.fromhex(msg_id)
            if data is not None:
                batch.put(DATA + key, joined(data))
            batch.put(META + key, meta)
        return batch

    def _quarantine_into(self, batch: WriteBatch, msg_id: str, reason: str) -> None:
        assert self._db is not None
        key = bytes.fromhex(msg_id)
        meta, data = self._db.get(META + key), self._db.get(DATA + key)
        if meta is None and data is None:
            return
        name, n = msg_id, 0
        while self._db.get(QUARANTINE + f"{name}/reason".encode()) is not None:
            n += 1
            name = f"{msg_id}.{n}"
        q = QUARANTINE + name.encode()
        if meta is not None:
            batch.put(q + b"/meta", meta)
            batch.delete(META + key)
        if data is not None:
            batch.put(q + b"/data", data)
            batch.delete(DATA + key)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        batch.put(q + b"/reason", f"{stamp} {reason}".encode())

    # -- reads (asyncio.to_thread) ----------------------------------------------------------

    def _get(self, key: bytes) -> bytes | None:
        with self._db_lock:
            if self._db is None:
                raise SpoolError(_CLOSED)
            value = self._db.get(key)
        return None if value is None else bytes(value)

    def _page(self, start: bytes) -> list[tuple[bytes, bytes]]:
        with self._db_lock:
            if self._db is None:
                raise SpoolError(_CLOSED)
            page: list[tuple[bytes, bytes]] = []
            for key, value in islice(self._db.items(from_key=start), _ENUM_PAGE):
                if not isinstance(key, bytes) or not key.startswith(META):
                    break
                page.append((key, value))
            return page

    async def load_data(self, msg_id: str) -> bytes:
        key = DATA + bytes.fromhex(check_spool_id(msg_id))
        try:
            if self._loads is None:
                data = await asyncio.to_thread(self._get, key)
            else:
                async with self._loads:
                    data = await asyncio.to_thread(self._get, key)
        except SpoolError:
            raise
        except Exception as exc:
            raise SpoolError(f"cannot read the data of {msg_id}: {exc}") from exc
        if data is None:
            raise SpoolCorruptError(f"spool has no data for {msg_id}")
        if not data:
            raise SpoolCorruptError(f"spool data of {msg_id} is empty")
        return data

    async def enumerate(self) -> AsyncIterator[tuple[str, bytes]]:
        start = META
        while True:
            try:
                page = await asyncio.to_thread(self._page, start)
            except SpoolError:
                raise
            except Exception as exc:
                if _is_damaged(exc):
                    raise SpoolError(unreadable_database(self.db_path, exc)) from exc
                raise SpoolError(f"cannot enumerate {self.db_path}: {exc}") from exc
            for key, meta in page:
                if len(key) != _KEY_LEN:
                    log.warning("spool %s: ignoring key %r: not a spool entry", self.db_path, key)
                    continue
                yield key[1:].hex(), meta
            if len(page) < _ENUM_PAGE:
                return
            start = page[-1][0] + b"\0"  # the smallest key after the last one


def _size(data: Payload | None) -> int:
    if data is None:
        return 0
    return len(data) if isinstance(data, bytes) else sum(len(p) for p in data)


def _groups(stores: list[Store]) -> list[list[Store]]:
    """``stores`` cut into groups of about ``_BATCH_BYTES`` (always at least one group)."""
    groups: list[list[Store]] = [[]]
    size = 0
    for store in stores:
        n = _size(store[1]) + len(store[2])
        if groups[-1] and size + n > _BATCH_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(store)
        size += n
    return groups


def unreadable_database(db_path: Path, exc: BaseException) -> str:
    """What the operator sees when RocksDB reports the spool database as damaged: which
    directory, RocksDB's error, and how to salvage what is still readable."""
    db = db_path.absolute()
    return (
        f"spool database {db} is unreadable: {exc}\n"
        f"kumoq cannot start on it. With kumoq stopped:\n"
        f"  1. back it up: cp -a {db} /some/safe/place/\n"
        f"  2. let RocksDB rebuild it from the files it can read, with kumoq's Python:\n"
        f"     python -c \"import rocksdict; rocksdict.Rdict.repair('{db}', "
        f'rocksdict.Options(raw_mode=True))"\n'
        f"  3. start kumoq again.\n"
        f"Or, to start at once with an empty spool, move {db.name} aside (its messages are not "
        "delivered unless repaired later as above). See docs/operations.md, 'Spool quarantine'."
    )
