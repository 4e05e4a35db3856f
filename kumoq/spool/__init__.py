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

``open_worker_spool`` is ``open_spool`` for one worker of ``kumoq serve --workers N``: its own
directory under the configured one, plus the directories of workers that no longer run, which
it adopts (``kumoq.spool.spool_set``, ``kumoq.workers``).

Imports kumoq.config.spool, kumoq.errors and its own modules; nothing above it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from kumoq.config.spool import SpoolDefinition, SpoolKind, check_spool_pair
from kumoq.spool.base import Spool, SpoolStats
from kumoq.spool.health import FreeSpaceMonitor, check_free_space
from kumoq.spool.local_disk import LocalDiskSpool, SyncMode
from kumoq.spool.rocks import RocksSpool
from kumoq.spool.spool_set import SpoolSet
from kumoq.spool.sqlite import SqliteSpool
from kumoq.workers import WorkerSlot, adopted_paths, spool_path

__all__ = [
    "FreeSpaceMonitor",
    "LocalDiskSpool",
    "RocksSpool",
    "Spool",
    "SpoolSet",
    "SpoolStats",
    "SqliteSpool",
    "check_free_space",
    "open_spool",
    "open_worker_spool",
    "worker_spool_pair",
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


def worker_spool_pair(
    data: SpoolDefinition, meta: SpoolDefinition, slot: WorkerSlot | None
) -> tuple[SpoolDefinition, SpoolDefinition]:
    """The ``data``/``meta`` definitions with the paths ``slot`` uses (``spool_path``)."""
    if slot is None or slot.index == 0:
        return data, meta
    return (
        dataclasses.replace(data, path=spool_path(data.path, slot)),
        dataclasses.replace(meta, path=spool_path(meta.path, slot)),
    )


def open_worker_spool(
    data: SpoolDefinition, meta: SpoolDefinition, slot: WorkerSlot | None, found: Sequence[str]
) -> Spool:
    """The spool of ``slot`` (None: a process running alone) for the configured pair.

    ``found`` lists the names at the top of ``data.path`` (the caller reads the directory):
    the ``worker-<j>`` ones this slot adopts are opened behind its own spool in a
    ``SpoolSet``; with none, the worker's own spool is returned as it is. No IO here."""
    own = open_spool(*worker_spool_pair(data, meta, slot))
    adopted = adopted_paths(data.path, slot, list(found))
    if not adopted:
        return own
    behind: list[tuple[str, Spool]] = []
    for path in adopted:
        name = os.path.basename(path)
        behind.append(
            (
                path,
                open_spool(
                    dataclasses.replace(data, path=path),
                    dataclasses.replace(meta, path=os.path.join(meta.path, name)),
                ),
            )
        )
    return SpoolSet(own, behind)
