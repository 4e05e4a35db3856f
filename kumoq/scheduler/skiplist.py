"""The SkipList strategy's structure: entries in whole-second buckets, the buckets in a heap.

Owns ``SkipList``. Pure (L0): no asyncio, no clock, no IO. Imports only ``kumoq.scheduler.timeq``.

KumoMTA orders its SkipList by due time truncated to whole seconds, so that entries of the same
second compare equal and batch cheaply (reference §4). We keep the seconds buckets and drop the
skiplist: a dict maps each bucket (``tick = ceil(due / res)``, ``res`` = 1 s by default) to a
FIFO list of its entries, and a min-heap holds the bucket numbers. The maintainer sleeps until
the head bucket and is woken only when an insert makes the head earlier.

Why not a real ordered structure (``python -m bench.timeq --candidates --no-gc``: 1,000,000
random due times over a day, ns per insert / per pop): these buckets 1,700 / 1,700; heapq with
lazy deletion 1,000 / 4,900 (and no ordered listing); sortedcontainers' SortedList 7,200 /
2,600; a bisect list-of-lists 5,400 / 1,500; a linked skiplist 13,500 / 2,100. Almost every
insert only appends to an existing bucket, and popping walks whole buckets. Only the listing
needs buckets in order; ``page`` gets it from a sorted index of bucket numbers, built on first
use and kept up to date cheaply.

Differences from KumoMTA: buckets round the due time *up* (``ceil``), not down, so nothing pops
before its due time and the caller need not sleep off the rounding; entries can be removed by key.
"""

from __future__ import annotations

import bisect
import heapq
from math import ceil, floor
from operator import itemgetter
from typing import Final, TypeVar, final

from kumoq.scheduler.timeq import (
    EMPTY,
    INSERTED,
    INSERTED_HEAD,
    SEQ_BITS,
    Cursor,
    Entry,
    InsertResult,
    Items,
    KeyedEntries,
    Page,
    PopResult,
    Sleep,
    due_tick,
)

__all__ = ["SkipList"]

T = TypeVar("T")

_order = itemgetter(0)
_INDEX_MERGE_MAX: Final = 64  # new buckets merged into the page index one by one up to this many


@final
class SkipList(KeyedEntries[T]):
    """Entries bucketed by ``ceil(due / resolution)``, buckets in a min-heap.

    Costs (n entries, B distinct buckets): insert O(1) into an existing bucket, O(log B) for a
    new one; pop O(1) per entry returned plus O(log B) per bucket emptied; remove amortised
    O(1) (lazy); ``next_due`` O(size of the head bucket); ``page`` O(log B + limit) once the
    index is built (O(B log B) the first time, O(B) per bucket created since the last call).
    """

    __slots__ = ("_buckets", "_heap", "_index", "_index_new", "_res")

    def __init__(self, resolution: float = 1.0) -> None:
        """``resolution``: bucket width in seconds (KumoMTA: 1 s)."""
        if not resolution > 0:
            raise ValueError(f"resolution must be positive, got {resolution!r}")
        super().__init__()
        self._res = float(resolution)
        self._buckets: dict[int, list[Entry[T]]] = {}
        self._heap: list[int] = []
        self._index: list[int] | None = None  # sorted bucket numbers, possibly stale ones
        self._index_new: list[int] = []  # buckets created since _index was built

    @property
    def resolution(self) -> float:
        """Bucket width in seconds."""
        return self._res

    def insert(self, due: float, key: str, item: T, now: float) -> InsertResult:
        """Store ``item`` under ``key`` until ``due``. O(1), or O(log B) for a new bucket.

        Returns ``DUE_NOW`` (nothing stored) if ``due <= now``; otherwise
        ``Inserted(head_changed)``, true when the queue was empty or the entry's bucket is
        earlier than the head bucket (the maintainer sleeps until the head, so wake it).
        Raises ``ValueError`` if ``key`` is already stored.
        """
        if due <= now:
            return self._due_now(key)
        tick = ceil(due / self._res)  # due_tick(), inlined: this is the hot path
        entry = ((tick << SEQ_BITS) | next(self._seq), due, key, item)
        if self._entries.setdefault(key, entry) is not entry:
            raise ValueError(f"key {key!r} is already scheduled")
        lst = self._buckets.get(tick)
        if lst is not None:
            lst.append(entry)
            return INSERTED
        heap = self._heap
        head_changed = not heap or tick < heap[0]
        self._buckets[tick] = [entry]
        heapq.heappush(heap, tick)
        if self._index is not None:
            self._index_new.append(tick)
        return INSERTED_HEAD if head_changed else INSERTED

    def pop(self, now: float) -> PopResult[T]:
        """Remove and return every entry whose bucket ``<= floor(now / resolution)``, in pop
        order; else ``Sleep`` until the head bucket; else ``EMPTY``.
        O(1) per entry returned plus O(log B) per bucket emptied."""
        nt = floor(now / self._res)  # now_tick()
        heap = self._heap
        buckets = self._buckets
        out: list[T] = []
        while heap and heap[0] <= nt:
            self._take_live(buckets.pop(heapq.heappop(heap)), out)
        if out:
            return Items(out)
        head = self._live_head()
        if head is None:
            return EMPTY
        return Sleep(max(0.0, head * self._res - now))

    def next_due(self) -> float | None:
        """The earliest due time stored, or ``None``. O(size of the head bucket)."""
        head = self._live_head()
        if head is None:
            return None
        entries = self._entries
        return min(e[1] for e in self._buckets[head] if entries.get(e[2]) is e)

    def page(self, after: Cursor | None, limit: int) -> Page[T]:
        """Up to ``limit`` entries after ``after``, in pop order. O(log B + limit + dead
        entries skipped), plus index upkeep (see the class docstring)."""
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit!r}")
        c = after.order if after is not None else -1
        ctick = c >> SEQ_BITS
        index = self._page_index()
        entries = self._entries
        buckets = self._buckets
        out: list[tuple[float, str, T]] = []
        for tick in index[bisect.bisect_left(index, ctick) :]:
            lst = buckets.get(tick)
            if lst is None:
                continue
            start = bisect.bisect_right(lst, c, key=_order) if tick == ctick else 0
            for i in range(start, len(lst)):
                entry = lst[i]
                if entries.get(entry[2]) is entry:
                    out.append((entry[1], entry[2], entry[3]))
                    if len(out) == limit:
                        return Page(out, Cursor(entry[0]))
        return Page(out, None)

    def drain(self) -> list[T]:
        """Remove and return every item in pop order. O(n + B log B)."""
        out: list[T] = []
        buckets = self._buckets
        for tick in sorted(buckets):
            self._take_live(buckets[tick], out)
        buckets.clear()
        self._heap.clear()
        self._index = None
        self._index_new.clear()
        assert not self._entries
        self._dead = 0
        return out

    # -- internals ---------------------------------------------------------------------------

    def _live_head(self) -> int | None:
        """The head bucket after discarding leading buckets that hold only dead entries."""
        heap = self._heap
        buckets = self._buckets
        entries = self._entries
        while heap:
            tick = heap[0]
            lst = buckets[tick]
            for e in lst:
                if entries.get(e[2]) is e:
                    return tick
            heapq.heappop(heap)
            del buckets[tick]
            self._dead -= len(lst)
        return None

    def _page_index(self) -> list[int]:
        """The sorted bucket numbers (stale ones allowed, duplicates not), brought up to date."""
        index = self._index
        new = self._index_new
        if index is None or len(new) > _INDEX_MERGE_MAX or len(index) > 2 * len(self._buckets) + 64:
            index = self._index = sorted(self._buckets)
            new.clear()
            return index
        for tick in new:
            i = bisect.bisect_left(index, tick)
            if i == len(index) or index[i] != tick:
                index.insert(i, tick)
        new.clear()
        return index

    def _compact(self) -> None:
        """Sweep dead entries and empty buckets. O(n + B)."""
        entries = self._entries
        buckets = self._buckets
        for tick in list(buckets):
            live = [e for e in buckets[tick] if entries.get(e[2]) is e]
            if live:
                buckets[tick] = live
            else:
                del buckets[tick]
        self._heap = list(buckets)
        heapq.heapify(self._heap)
        self._index = None
        self._index_new.clear()
        self._dead = 0

    def _check(self) -> None:
        """Assert the invariants. O(n + B log B)."""
        heap = self._heap
        buckets = self._buckets
        for i in range(1, len(heap)):
            assert heap[(i - 1) // 2] <= heap[i], "heap order"
        assert sorted(heap) == sorted(buckets), "one heap element per bucket"
        stored: list[Entry[T]] = []
        for tick, lst in buckets.items():
            assert lst, "no empty bucket"
            orders = [e[0] for e in lst]
            assert orders == sorted(orders), "buckets are FIFO"
            for order, due, _key, _item in lst:
                assert order >> SEQ_BITS == tick == due_tick(due, self._res)
            stored.extend(lst)
        self._check_entries(stored)
        if self._index is not None:
            index = self._index
            assert index == sorted(set(index)), "index sorted without duplicates"
            assert set(buckets) <= set(index) | set(self._index_new), "index covers buckets"
