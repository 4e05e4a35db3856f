"""The scheduled-queue time structure interface: what TimerWheel and SkipList both provide.

Owns: the ``TimeQ`` Protocol, its result values (``Inserted``/``DueNow`` from ``insert``,
``Items``/``Sleep``/``Empty`` from ``pop``, ``Page``/``Cursor`` for listing), the rounding of due
times to ticks, and ``KeyedEntries``, the key index and lazy-deletion bookkeeping both structures
share. Pure (L0): no asyncio, no clock, no IO; ``now`` is always an argument (seconds, float, never
negative, and not going backwards between calls). Imports nothing from kumoq.

Semantics shared by every structure (KumoMTA's ``crates/timeq``, see reference §4):

- ``insert(due, key, item, now)`` with ``due <= now`` stores nothing and returns ``DUE_NOW``:
  the caller sends the item straight to the ready path.
- Each structure has a resolution ``res`` (the TimerWheel's tick, the SkipList's bucket width,
  1 s by default). An entry's *tick* is ``due_tick(due, res) = ceil(due / res)``: its due time
  rounded **up** to the resolution. ``pop(now)`` returns exactly the entries whose tick is
  ``<= now_tick(now, res) = floor(now / res)``: never before ``due``, at most ``res`` late.
- ``pop`` returns them in *pop order*: by tick, then FIFO by insertion (a sequence number).
  Every stored entry carries ``order = tick << 64 | seq``, which encodes that order in one int.
- Entries are keyed by a string (the message id) so they can be removed (admin bounce, delete)
  and listed in pages (``page``/``items``) while the queue keeps changing.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count
from typing import Final, Generic, Protocol, TypeAlias, TypeVar, final

__all__ = [
    "DUE_NOW",
    "EMPTY",
    "INSERTED",
    "INSERTED_HEAD",
    "SEQ_BITS",
    "Cursor",
    "DueNow",
    "Empty",
    "Entry",
    "InsertResult",
    "Inserted",
    "Items",
    "KeyedEntries",
    "Page",
    "PopResult",
    "Sleep",
    "TimeQ",
    "due_tick",
    "now_tick",
]

T = TypeVar("T")

SEQ_BITS: Final = 64
"""``order = tick << SEQ_BITS | seq``; 2**64 inserts never wrap."""

COMPACT_MIN: Final = 4096
"""Lazily deleted entries are swept once there are more of them than this and than live ones."""

Entry: TypeAlias = tuple[int, float, str, T]
"""A stored entry: ``(order, due, key, item)``. Liveness: ``entries[key] is entry``."""


# -- results ----------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class Inserted:
    """The entry was stored. ``head_changed``: the maintainer should wake up and pop again,
    because this entry is due before what the queue's last ``pop`` reported (or it was empty)."""

    head_changed: bool


@final
@dataclass(frozen=True, slots=True)
class DueNow:
    """``due <= now``: nothing was stored; send the item to the ready path now."""


@final
@dataclass(frozen=True, slots=True)
class Items(Generic[T]):
    """These items are due, in pop order; they are no longer in the structure."""

    items: list[T]


@final
@dataclass(frozen=True, slots=True)
class Sleep:
    """Nothing becomes due for at least ``seconds`` (SkipList: exactly; TimerWheel: a lower
    bound, the start of the earliest occupied slot)."""

    seconds: float


@final
@dataclass(frozen=True, slots=True)
class Empty:
    """The structure holds nothing."""


InsertResult: TypeAlias = Inserted | DueNow
PopResult: TypeAlias = Items[T] | Sleep | Empty

DUE_NOW: Final = DueNow()
EMPTY: Final = Empty()
INSERTED: Final = Inserted(head_changed=False)
INSERTED_HEAD: Final = Inserted(head_changed=True)


@final
@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """Where a listing stopped: the pop-order key of the last entry returned."""

    order: int


@final
@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing: ``(due, key, item)`` in pop order, and the cursor for the next
    page (``None`` once the listing has reached the end).

    An entry stored for the whole listing (not removed or re-inserted) is listed exactly once;
    entries inserted meanwhile are listed if they sort after the cursor.
    """

    entries: list[tuple[float, str, T]]
    next: Cursor | None


def due_tick(due: float, res: float) -> int:
    """The tick an entry due at ``due`` belongs to: ``ceil(due / res)``."""
    return math.ceil(due / res)


def now_tick(now: float, res: float) -> int:
    """The last tick that has fully elapsed at ``now``: ``floor(now / res)``."""
    return math.floor(now / res)


class TimeQ(Protocol[T]):
    """A scheduled queue's timer structure (see the module docstring for the semantics)."""

    @property
    def resolution(self) -> float:
        """Seconds per tick; entries pop at their due time rounded up to this."""
        ...

    def insert(self, due: float, key: str, item: T, now: float) -> InsertResult:
        """Store ``item`` under ``key`` until ``due``; ``DUE_NOW`` if ``due <= now``.
        Raises ``ValueError`` if ``key`` is already stored."""
        ...

    def pop(self, now: float) -> PopResult[T]:
        """Remove and return everything due at ``now``, else how long to sleep, else Empty."""
        ...

    def remove(self, key: str) -> T | None:
        """Remove the entry stored under ``key``; its item, or ``None`` if absent."""
        ...

    def get(self, key: str) -> T | None:
        """The item stored under ``key``, or ``None``."""
        ...

    def __len__(self) -> int: ...

    def __contains__(self, key: object) -> bool: ...

    def next_due(self) -> float | None:
        """The earliest stored due time (exact, not rounded), or ``None`` if empty."""
        ...

    def page(self, after: Cursor | None, limit: int) -> Page[T]:
        """Up to ``limit`` entries in pop order, starting after ``after`` (from the start if
        ``None``)."""
        ...

    def items(self, page_size: int = 1024) -> Iterator[tuple[float, str, T]]:
        """Every entry as ``(due, key, item)`` in pop order, fetched ``page_size`` at a time;
        safe to interleave with inserts, pops and removes."""
        ...

    def drain(self) -> list[T]:
        """Remove and return every item in pop order."""
        ...

    def _check(self) -> None:
        """Assert every internal invariant (O(n)); for tests."""
        ...


class KeyedEntries(ABC, Generic[T]):
    """The bookkeeping TimerWheel and SkipList share: the key index and lazy deletion.

    ``_entries`` maps each live key to its stored entry tuple. Removing an entry only deletes
    it from ``_entries``; the tuple stays where the structure stored it, *dead*, until a pop or
    cascade reaches it or ``_compact()`` sweeps it (once dead entries outnumber live ones, so
    the sweep is amortised O(1) per removal). ``_dead`` counts them.
    """

    __slots__ = ("_dead", "_entries", "_seq")

    def __init__(self) -> None:
        self._entries: dict[str, Entry[T]] = {}
        self._dead = 0
        self._seq = count()

    def __len__(self) -> int:
        """Live entries. O(1)."""
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        """O(1)."""
        return key in self._entries

    def get(self, key: str) -> T | None:
        """The item stored under ``key``, or ``None``. O(1)."""
        entry = self._entries.get(key)
        return None if entry is None else entry[3]

    def remove(self, key: str) -> T | None:
        """Remove the entry stored under ``key``; its item or ``None``. Amortised O(1)."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self._dead += 1
        if self._dead > COMPACT_MIN and self._dead > len(self._entries):
            self._compact()
        return entry[3]

    def items(self, page_size: int = 1024) -> Iterator[tuple[float, str, T]]:
        """Every entry as ``(due, key, item)`` in pop order, ``page_size`` per ``page()`` call.
        O(n) overall plus each page's cost."""
        cursor: Cursor | None = None
        while True:
            page = self.page(cursor, page_size)
            yield from page.entries
            if page.next is None:
                return
            if cursor is not None and page.next <= cursor:
                raise AssertionError(f"page() did not advance past {cursor}")
            cursor = page.next

    @abstractmethod
    def page(self, after: Cursor | None, limit: int) -> Page[T]:
        """Each structure lists its own storage in pop order."""

    @abstractmethod
    def _compact(self) -> None:
        """Each structure sweeps dead entries out of its own storage."""

    def _due_now(self, key: str) -> DueNow:
        """``insert``'s answer for ``due <= now``: nothing is stored, but the key is checked."""
        if key in self._entries:
            raise ValueError(f"key {key!r} is already scheduled")
        return DUE_NOW

    def _take_live(self, lst: list[Entry[T]], out: list[T]) -> None:
        """Append the items of ``lst``'s live entries to ``out`` and unindex them; count the
        dead ones as swept."""
        dpop = self._entries.pop
        dead = 0
        for entry in lst:
            key = entry[2]
            found = dpop(key, None)
            if found is entry:
                out.append(entry[3])
            else:
                if found is not None:
                    self._entries[key] = found
                dead += 1
        self._dead -= dead

    def _check_entries(self, stored: list[Entry[T]]) -> None:
        """Invariants about the stored tuples as a whole: each live one is stored exactly once,
        everything else is counted as dead, and sequence numbers are unique."""
        entries = self._entries
        live = [e for e in stored if entries.get(e[2]) is e]
        assert len(live) == len(entries), (len(live), len(entries))
        assert len({id(e) for e in live}) == len(live)
        assert len(stored) - len(live) == self._dead, (len(stored), len(live), self._dead)
        for key, entry in entries.items():
            assert entry[2] == key
        seqs = [e[0] & ((1 << SEQ_BITS) - 1) for e in stored]
        assert len(set(seqs)) == len(seqs)
