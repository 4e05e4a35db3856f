"""kumoq.spool: durable storage of received messages (reference §7).

``open_spool(data, meta)`` turns the two ``define_spool`` definitions into one ``Spool``:

- ``kind='LocalDisk'`` (default): KumoMTA's file layout, one directory per definition
  (``kumoq.spool.local_disk``);
- ``kind='RocksDB'``: one RocksDB database for both halves (``kumoq.spool.rocks``);
- ``kind='SQLite'``: one SQLite database in WAL mode (``kumoq.spool.sqlite``).

All three commit concurrent stores in groups (``kumoq.spool.writer``): many messages share each
disk sync, and none is acknowledged before it is durable when ``flush`` is on (the default).
Startup takes a pid-file lock per spool directory (``kumoq.spool.lock``);
``check_free_space`` applies the ``min_free_space``/``min_free_inodes`` floors once, and
``FreeSpaceMonitor`` every few seconds on a thread (``kumoq.spool.health``).

Imports kumoq.config.spool, kumoq.errors and its own modules; nothing above it.
"""

from __future__ import annotations

from kumoq.config.spool import SpoolDefinition, SpoolKind, check_spool_pair
from kumoq.spool.base import Spool, SpoolStats
from kumoq.spool.health import FreeSpaceMonitor, check_free_space
from kumoq.spool.local_disk import LocalDiskSpool, SyncMode
from kumoq.spool.rocks import RocksSpool
from kumoq.spool.sqlite import SqliteSpool

__all__ = [
    "FreeSpaceMonitor",
    "LocalDiskSpool",
    "RocksSpool",
    "Spool",
    "SpoolStats",
    "SqliteSpool",
    "check_free_space",
    "open_spool",
]


def open_spool(
    data: SpoolDefinition, meta: SpoolDefinition, *, sync_mode: SyncMode | None = None
) -> LocalDiskSpool | RocksSpool | SqliteSpool:
    """The spool for a ``data``/``meta`` pair; call ``await spool.start()`` before use.

    Raises ConfigError if the pair cannot work together (different kinds, or two LocalDisk
    spools on one path). ``sync_mode`` overrides LocalDisk's measured default. No IO here.
    """
    check_spool_pair(data, meta)
    if data.kind is SpoolKind.SQLITE:
        return SqliteSpool(data, meta)
    if data.kind is SpoolKind.ROCKSDB:
        return RocksSpool(data, meta)
    if sync_mode is None:
        return LocalDiskSpool(data, meta)
    return LocalDiskSpool(data, meta, sync_mode=sync_mode)
