"""The spool seam: the ``Spool`` Protocol, its counters, and how a batch of operations folds.

KumoMTA keeps two spools, ``data`` (message bytes) and ``meta`` (a JSON record); kumoq pairs
them behind one ``Spool`` so that both halves of a message are written, and made durable, in
the same group commit. The meta bytes are opaque here (the caller encodes
``Message.to_spool_meta()``); ids are 32-hex spool ids (``kumoq.message.new_spool_id``).

Every method is called from the event loop; implementations do their blocking IO in threads.

Pure: imports only kumoq.errors and the standard library; no IO here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol, runtime_checkable

from kumoq.errors import SpoolError

__all__ = [
    "QUARANTINE",
    "REMOVE",
    "STORE",
    "Folded",
    "Op",
    "Payload",
    "Spool",
    "SpoolStats",
    "check_spool_id",
    "fold_ops",
    "joined",
]


Payload = bytes | tuple[bytes, ...]
"""Message bytes to store: whole, or as pieces the spool writes one after the other (a
message's own prefix and the body it shares with the other messages of its transaction), so
that nobody has to join them into one copy per message."""


def joined(data: Payload) -> bytes:
    """``data`` as one bytes object (a copy only when it is in several pieces)."""
    if isinstance(data, bytes):
        return data
    return data[0] if len(data) == 1 else b"".join(data)


@runtime_checkable
class Spool(Protocol):
    """Durable storage of (data, meta) pairs keyed by spool id.

    Durability contract: when ``flush`` is on (the default), ``store`` returns only after the
    data and meta it wrote are on stable storage, so the caller may answer 250. Concurrent
    stores share disk syncs (group commit). ``remove`` is not synced: a remove lost in a crash
    means a redelivery, never a loss.
    """

    async def start(self) -> None:
        """Take the lock (SpoolLockedError if another live process holds it), then recover:
        delete temporary files left by a crash. Must be called before anything else."""

    async def store(self, msg_id: str, data: Payload | None, meta: bytes) -> None:
        """Write ``meta`` and, unless ``data`` is None (a meta-only update), ``data`` (its
        pieces one after the other when it is a tuple; they are not copied).

        Durable before it returns (when flush). Raises SpoolError if the write failed.
        """

    async def store_many(self, items: Sequence[tuple[str, Payload | None, bytes]]) -> None:
        """``store`` for several messages at once; all of them land in the same batch."""

    async def load_data(self, msg_id: str) -> bytes:
        """The message bytes; SpoolCorruptError if the spool has none (or none but an empty
        file) for ``msg_id``."""

    async def remove(self, msg_id: str) -> None:
        """Delete both halves (missing ones are ignored); not synced. Never raises for a
        failed write: the spool retries the remove in the background."""

    def enumerate(self) -> AsyncIterator[tuple[str, bytes]]:
        """``(id, meta bytes)`` of every stored message, read in pages, without the data."""

    async def quarantine(self, msg_id: str, reason: str) -> None:
        """Move both halves of ``msg_id`` (those present) out of the spool into its quarantine,
        with ``reason``, so that ``enumerate`` no longer returns it. Nothing is deleted: the
        operator decides what becomes of it (docs/operations.md, "Spool quarantine").

        Acts on what earlier batches stored; not synced (a quarantine lost in a crash is done
        again at the next start). Raises SpoolError if the move failed.
        """

    async def close(self) -> None:
        """Finish pending work, close the storage and release the lock."""


@dataclass(slots=True)
class SpoolStats:
    """Counters kept by the writer thread (read them from anywhere; ints, single writer).

    ``batches``: group commits done; ``ops``: operations they carried (stores and removes);
    ``syncs``: disk-sync calls made (fdatasync, fsync, syncfs, or SQLite commits when flush);
    ``max_batch``: the largest batch seen; ``errors``: batches that failed;
    ``quarantines``: records moved to the quarantine.
    """

    batches: int = 0
    ops: int = 0
    stores: int = 0
    removes: int = 0
    syncs: int = 0
    max_batch: int = 0
    errors: int = 0
    quarantines: int = 0


STORE: Final = 0
REMOVE: Final = 1
QUARANTINE: Final = 2

# One queued operation: (STORE, id, data | None, meta), (REMOVE, id, None, None) or
# (QUARANTINE, id, None, reason as UTF-8).
Op = tuple[int, str, Payload | None, bytes | None]


@dataclass(slots=True)
class Folded:
    """A batch reduced to its effect: first move ``quarantines`` aside, then delete
    ``removes``, then write ``stores``.

    ``stores`` holds ``(id, data | None, meta)``; data None keeps the stored data as it is.
    ``quarantines`` holds ``(id, reason)``.
    """

    removes: list[str]
    stores: list[tuple[str, Payload | None, bytes]]
    quarantines: list[tuple[str, str]] = field(default_factory=list)


class _Entry:
    __slots__ = ("data", "dropped", "meta")

    def __init__(self) -> None:
        self.data: Payload | None = None
        self.meta: bytes | None = None
        self.dropped = False


def fold_ops(ops: Iterable[Op]) -> Folded:
    """Fold a batch in arrival order so that each id is written or deleted at most once.

    The last write of an id wins (meta-only updates keep the data of an earlier write in the
    batch); a remove cancels earlier writes, and a write after a remove starts afresh. A
    quarantine leaves the batch's writes alone: it moves what earlier batches stored (a
    quarantine never drops a write). O(len(ops)).
    """
    entries: dict[str, _Entry] = {}
    quarantines: dict[str, str] = {}
    for kind, msg_id, data, meta in ops:
        if kind == QUARANTINE:
            quarantines[msg_id] = (meta or b"").decode("utf-8", "replace")
            continue
        entry = entries.get(msg_id)
        if entry is None:
            entry = entries[msg_id] = _Entry()
        if kind == REMOVE:
            entry.data = entry.meta = None
            entry.dropped = True
        else:
            if data is not None:
                entry.data = data
            entry.meta = meta
    removes: list[str] = []
    stores: list[tuple[str, Payload | None, bytes]] = []
    for msg_id, entry in entries.items():
        if entry.dropped:
            removes.append(msg_id)
        if entry.meta is not None:
            stores.append((msg_id, entry.data, entry.meta))
    return Folded(removes, stores, list(quarantines.items()))


_HEX: Final = frozenset("0123456789abcdef")


def check_spool_id(msg_id: str) -> str:
    """``msg_id`` if it is 32 lowercase hex digits (a spool id), else SpoolError.

    Ids become file names, so anything else (``/``, ``..``) is refused before any IO.
    """
    if len(msg_id) != 32 or not _HEX.issuperset(msg_id):
        raise SpoolError(f"not a spool id: {msg_id!r}")
    return msg_id
