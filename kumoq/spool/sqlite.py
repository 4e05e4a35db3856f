"""``kind='SQLite'`` (a kumoq extension): data and meta in one SQLite database in WAL mode.

The database is ``<data path>/spool.sqlite3`` with two tables::

    spool(id TEXT PRIMARY KEY, meta BLOB NOT NULL, data BLOB)
    quarantine(id TEXT NOT NULL, meta BLOB, data BLOB, reason TEXT NOT NULL,
               quarantined_at TEXT NOT NULL)

``quarantine`` holds the rows moved aside by ``SqliteSpool.quarantine`` (the time is UTC, RFC
3339); nothing deletes them. A database SQLite reports as damaged (``SQLITE_CORRUPT``,
``SQLITE_NOTADB``) at open or enumeration raises a SpoolError that tells the operator what to
do (``unreadable_database``).

Both spool directories are locked with the same pid-file lock as LocalDisk (a ``meta`` path
different from the ``data`` one only holds its lock). The writer thread commits each batch in
one transaction; with ``flush`` (on either definition) a batch that stores anything commits
with ``synchronous=FULL``, so each commit is one WAL fsync however many messages it carries;
batches of removes only, and every batch without ``flush``, commit with
``synchronous=NORMAL`` (durable against a process crash, not a power cut). Reads
(``load_data``, ``enumerate``) use a second connection on worker threads; WAL lets them run
while the writer commits.

Imports kumoq.config.spool, kumoq.errors and kumoq.spool.{base,lock,writer}.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Final, final

from kumoq.config.spool import SpoolDefinition, check_spool_pair
from kumoq.errors import SpoolCorruptError, SpoolError
from kumoq.spool.base import Op, check_spool_id, fold_ops, joined
from kumoq.spool.lock import SpoolLock
from kumoq.spool.writer import BatchingSpool

__all__ = ["DB_NAME", "SqliteSpool", "unreadable_database"]

log = logging.getLogger(__name__)

DB_NAME: Final = "spool.sqlite3"
_ENUM_PAGE: Final = 1000

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS spool (id TEXT PRIMARY KEY, meta BLOB NOT NULL, data BLOB)"
)
_QUARANTINE_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS quarantine (id TEXT NOT NULL, meta BLOB, data BLOB, "
    "reason TEXT NOT NULL, quarantined_at TEXT NOT NULL)"
)
_QUARANTINE: Final = (
    "INSERT INTO quarantine (id, meta, data, reason, quarantined_at) "
    "SELECT id, meta, data, ?, strftime('%Y-%m-%dT%H:%M:%SZ', 'now') FROM spool WHERE id = ?"
)
_UPSERT_FULL: Final = (
    "INSERT INTO spool (id, meta, data) VALUES (?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET meta = excluded.meta, data = excluded.data"
)
_UPSERT_META: Final = (
    "INSERT INTO spool (id, meta) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET meta = excluded.meta"
)
_DELETE: Final = "DELETE FROM spool WHERE id = ?"
_SELECT_DATA: Final = "SELECT data FROM spool WHERE id = ?"
_SELECT_PAGE: Final = "SELECT id, meta FROM spool WHERE id > ? ORDER BY id LIMIT ?"


def _connect(path: Path, *, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise SpoolError(f"spool {path}: cannot switch the database to WAL mode ({mode})")
        conn.execute(f"PRAGMA synchronous={synchronous}")
    except BaseException:
        conn.close()
        raise
    return conn


@final
class SqliteSpool(BatchingSpool):
    """Data and meta rows in one SQLite database, with group commit.

    ``commit`` is an instance attribute (it runs ``COMMIT``) so tests can observe or delay it.
    """

    def __init__(self, data: SpoolDefinition, meta: SpoolDefinition) -> None:
        check_spool_pair(data, meta)
        super().__init__(f"spool-writer-{Path(data.path).name}", data.kind.value)
        self._dirs = [Path(data.path), Path(meta.path)]
        self.db_path = Path(data.path) / DB_NAME
        self.flush = data.flush or meta.flush
        self._locks: list[SpoolLock] = []
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._rlock = threading.Lock()  # the read connection is used by one thread at a time
        self._synchronous = "FULL" if self.flush else "NORMAL"
        self.commit: Callable[[], None] = self._sql_commit

    def __repr__(self) -> str:
        return f"<SqliteSpool {self.db_path} flush={self.flush}>"

    # -- lifecycle (worker threads) ---------------------------------------------------------

    def _open(self) -> None:
        try:
            data_dir, meta_dir = self._dirs
            self._locks.append(SpoolLock.acquire(data_dir))
            if meta_dir.resolve() != data_dir.resolve():
                self._locks.append(SpoolLock.acquire(meta_dir))
            self._wconn = _connect(self.db_path, synchronous=self._synchronous)
            self._wconn.execute(_SCHEMA)
            self._wconn.execute(_QUARANTINE_SCHEMA)
            self._rconn = _connect(self.db_path, synchronous="NORMAL")
        except sqlite3.Error as exc:
            self._close_storage()
            if _is_damaged(exc):
                raise SpoolError(unreadable_database(self.db_path, exc)) from exc
            raise SpoolError(f"spool {self.db_path}: cannot open the database: {exc}") from exc
        except BaseException:
            self._close_storage()
            raise

    def _close_storage(self) -> None:
        for conn in (self._rconn, self._wconn):
            if conn is not None:
                conn.close()
        self._rconn = self._wconn = None
        for lock in self._locks:
            lock.release()
        self._locks.clear()

    # -- the writer thread ------------------------------------------------------------------

    def _sql_commit(self) -> None:
        assert self._wconn is not None
        self._wconn.execute("COMMIT")

    def _commit(self, ops: list[Op]) -> int:
        conn = self._wconn
        assert conn is not None
        folded = fold_ops(ops)
        # Data in pieces are joined one message at a time, as executemany binds them.
        full = ((i, m, joined(d)) for i, d, m in folded.stores if d is not None)
        any_full = any(d is not None for _, d, _ in folded.stores)
        meta_only = [(i, m) for i, d, m in folded.stores if d is None]
        # A batch of removes only needs no WAL fsync (a lost remove means a redelivery); the
        # next synchronous commit makes its frames durable along with its own.
        synchronous = "FULL" if self.flush and folded.stores else "NORMAL"
        if synchronous != self._synchronous:
            conn.execute(f"PRAGMA synchronous={synchronous}")
            self._synchronous = synchronous
        conn.execute("BEGIN")
        try:
            for msg_id, reason in folded.quarantines:
                conn.execute(_QUARANTINE, (reason, msg_id))
                conn.execute(_DELETE, (msg_id,))
            if folded.removes:
                conn.executemany(_DELETE, [(i,) for i in folded.removes])
            if any_full:
                conn.executemany(_UPSERT_FULL, full)
            if meta_only:
                conn.executemany(_UPSERT_META, meta_only)
            self.commit()
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        return 1 if synchronous == "FULL" else 0

    # -- reads (asyncio.to_thread) ----------------------------------------------------------

    def _read(self, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        with self._rlock:
            conn = self._rconn
            if conn is None:
                raise SpoolError("the spool is closed")
            return conn.execute(sql, params).fetchall()

    async def load_data(self, msg_id: str) -> bytes:
        try:
            rows = await asyncio.to_thread(self._read, _SELECT_DATA, (check_spool_id(msg_id),))
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot read the data of {msg_id}: {exc}") from exc
        if not rows or not isinstance(rows[0][0], bytes):
            raise SpoolCorruptError(f"spool has no data for {msg_id}")
        if not rows[0][0]:
            raise SpoolCorruptError(f"spool data of {msg_id} is empty")
        return rows[0][0]

    async def enumerate(self) -> AsyncIterator[tuple[str, bytes]]:
        last = ""
        while True:
            try:
                rows = await asyncio.to_thread(self._read, _SELECT_PAGE, (last, _ENUM_PAGE))
            except sqlite3.Error as exc:
                if _is_damaged(exc):
                    raise SpoolError(unreadable_database(self.db_path, exc)) from exc
                raise SpoolError(f"cannot enumerate {self.db_path}: {exc}") from exc
            for msg_id, meta in rows:
                assert isinstance(msg_id, str)
                yield msg_id, meta if isinstance(meta, bytes) else bytes(str(meta), "utf-8")
            if len(rows) < _ENUM_PAGE:
                return
            last = str(rows[-1][0])


_DAMAGED: Final = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB (primary result codes)


def _is_damaged(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _DAMAGED


def unreadable_database(db_path: Path, exc: BaseException) -> str:
    """What the operator sees when SQLite reports the spool database as damaged: which file,
    SQLite's error, and the commands that salvage what is still readable."""
    db = db_path.absolute()
    name = db.name
    return (
        f"spool database {db} is unreadable: {exc}\n"
        f"kumoq cannot start on it. With kumoq stopped, in {db.parent}:\n"
        f"  1. back it up: cp -p {name}* /some/safe/place/\n"
        f"  2. copy out what is readable: sqlite3 {name} .recover | sqlite3 recovered.sqlite3\n"
        f"     (a sqlite3 without .recover: sqlite3 {name} .dump "
        "| sed 's/^ROLLBACK; -- due to errors$/COMMIT;/' | sqlite3 recovered.sqlite3)\n"
        f"  3. put the copy in place: mv {name} {name}.damaged && rm -f {name}-wal {name}-shm "
        f"&& mv recovered.sqlite3 {name}\n"
        f"Or, to start at once with an empty spool, move {name} and its -wal and -shm files "
        "aside (their messages are not delivered unless recovered later as above). See "
        "docs/operations.md, 'Spool quarantine'."
    )
