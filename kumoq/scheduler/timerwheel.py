"""The TimerWheel strategy's structure: a hierarchical hashed timing wheel with an overflow list.

Owns ``TimerWheel``. Pure (L0): no asyncio, no clock, no IO. Imports only ``kumoq.scheduler.timeq``.

Shape (KumoMTA's ``QuadWheelWithOverflow``, reference §4): ``levels`` wheels of ``2**slot_bits``
slots (default 4 x 256), at a resolution of one *tick* (``timerwheel_tick_interval``, seconds).
Ticks are absolute: tick ``n`` ends at ``n * tick`` seconds. An entry due at ``due`` belongs to
tick ``e = ceil(due / tick)`` and is returned by the first ``pop(now)`` with
``floor(now / tick) >= e``: never before ``due``, at most one tick after it.

Placement is aligned (as in Linux's timer wheel): with ``cur`` the last tick processed, an entry
goes to level ``k``, the highest ``slot_bits``-digit in which ``e`` and ``cur`` differ, at slot
``digit k of e``; past the top level it goes to the overflow list. Level 0 thus holds the rest
of ``cur``'s 256-tick block, one tick per slot; level 1 the rest of its 65,536-tick block, 256
ticks per slot; and so on (4 x 256 covers 2**32 ticks: 136 years at 1 s). When ``cur`` crosses
a multiple of ``256**k`` the matching level-``k`` slot (and at ``2**32`` the overflow's
matching entries) is re-placed one level down: cascading. Each entry cascades at most
``levels`` times, so insert and pop are O(1) per entry. Advancing over idle time skips whole
blocks whose lower levels are empty, so a jump of millions of ticks costs O(levels x 256).

Order: pop returns entries by tick, then FIFO by insertion (a slot receives its cascaded
entries, which are older, before any direct insert); ``page`` lists in that same order.

Differences from KumoMTA: the tick is the configured interval (not 1 ms); ``insert`` reports
``head_changed`` (KumoMTA's TimerWheel never notifies; a caller may ignore it); entries can be
removed by key; ``pop`` reports a ``Sleep`` lower bound instead of the tick.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
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
    now_tick,
)

__all__ = ["TimerWheel"]

T = TypeVar("T")

_order = itemgetter(0)
_OVERFLOW: Final = -1  # _sorted keys for the two lists that are not slots
_LATE: Final = -2
_INSORT_MAX: Final = 32  # page(): new entries merged into a sorted slot one by one up to this


@final
class TimerWheel(KeyedEntries[T]):
    """A hierarchical hashed timing wheel keyed by string, see the module docstring.

    Costs (n entries): insert O(1); pop O(1) per entry returned or cascaded, plus O(slots
    crossed), at most O(levels x 2**slot_bits) per idle jump; remove amortised O(1) (lazy);
    ``next_due`` O(levels x 2**slot_bits + size of the earliest occupied slot); ``page``
    O(levels x 2**slot_bits + log s + limit) plus, for a slot of s entries changed since it was
    last listed, O(s) to keep it sorted; ``drain`` O(n log n).
    """

    __slots__ = (
        "_bits",
        "_counts",
        "_cur",
        "_late",
        "_levels",
        "_mask",
        "_overflow",
        "_slots",
        "_sorted",
        "_tick",
        "_wake",
    )

    def __init__(
        self, tick: float, *, now: float = 0.0, slot_bits: int = 8, levels: int = 4
    ) -> None:
        """``tick``: the resolution in seconds; ``now``: the start time (an optimisation only:
        an empty wheel also jumps to the ``now`` of its next insert); ``slot_bits``/``levels``:
        the shape (2**slot_bits slots per level)."""
        if not tick > 0:
            raise ValueError(f"tick must be positive, got {tick!r}")
        if slot_bits < 1 or levels < 1:
            raise ValueError("slot_bits and levels must be at least 1")
        super().__init__()
        self._tick = float(tick)
        self._bits = slot_bits
        self._levels = levels
        self._mask = (1 << slot_bits) - 1
        # Slots are made on first use: a wheel per queue must not cost levels x 2**bits lists
        # (57 KB) when it holds a few entries; reads use .get() so they create nothing.
        self._slots: defaultdict[int, list[Entry[T]]] = defaultdict(list)
        self._counts = [0] * levels  # entries (live or dead) per level
        self._overflow: list[Entry[T]] = []  # ticks beyond the top level's block
        self._late: list[Entry[T]] = []  # ticks <= _cur (a now that went backwards)
        self._cur = max(0, now_tick(now, self._tick))  # last tick processed
        self._sorted: dict[int, int] = {}  # page(): slot -> length of its prefix sorted by order
        self._wake: float = math.inf  # tick at which the caller pops next, per the last pop

    @property
    def resolution(self) -> float:
        """The tick in seconds."""
        return self._tick

    def insert(self, due: float, key: str, item: T, now: float) -> InsertResult:
        """Store ``item`` under ``key`` until ``due``. O(1).

        Returns ``DUE_NOW`` (nothing stored) if ``due <= now``; otherwise
        ``Inserted(head_changed)``, true when the entry's tick is before the wake-up the last
        ``pop`` implied (the ``Sleep`` it returned; never after ``Items``, after which the
        caller pops again; always after ``EMPTY`` or before the first pop).
        Raises ``ValueError`` if ``key`` is already stored.
        """
        if due <= now:
            return self._due_now(key)
        tick = ceil(due / self._tick)  # due_tick()
        cur = self._cur
        if not self._entries and not self._dead:
            nt = floor(now / self._tick)  # now_tick(); an empty wheel may jump ahead for free
            if nt > cur:
                self._cur = cur = nt
        entry = ((tick << SEQ_BITS) | next(self._seq), due, key, item)
        if self._entries.setdefault(key, entry) is not entry:
            raise ValueError(f"key {key!r} is already scheduled")
        if tick > cur:
            bits = self._bits
            lvl = ((tick ^ cur).bit_length() - 1) // bits
            if lvl < self._levels:
                self._slots[(lvl << bits) | ((tick >> (lvl * bits)) & self._mask)].append(entry)
                self._counts[lvl] += 1
            else:
                self._overflow.append(entry)
        else:
            self._late.append(entry)
        if tick < self._wake:
            self._wake = tick
            return INSERTED_HEAD
        return INSERTED

    def pop(self, now: float) -> PopResult[T]:
        """Advance to ``floor(now / tick)`` and remove every entry whose tick has elapsed, in
        pop order; else ``Sleep`` (a lower bound); else ``EMPTY``.
        O(1) per entry returned or cascaded plus the slots crossed (see the class docstring)."""
        target = floor(now / self._tick)  # now_tick()
        out: list[T] = []
        if self._late:
            late = sorted(self._late)
            self._late = []
            self._sorted.pop(_LATE, None)
            self._take_live(late, out)
        if target > self._cur:
            self._advance(target, out)
        if out:
            self._wake = self._cur
            return Items(out)
        if not self._entries:
            self._wake = math.inf
            return EMPTY
        lb = self._lower_bound()
        self._wake = lb
        return Sleep(max(0.0, lb * self._tick - now))

    def next_due(self) -> float | None:
        """The earliest due time stored, or ``None``. O(levels x 2**slot_bits + slot size)."""
        entries = self._entries
        for _key, lst, _lo, _hi in self._segments():
            dues = [e[1] for e in lst if entries.get(e[2]) is e]
            if dues:
                return min(dues)
        return None

    def page(self, after: Cursor | None, limit: int) -> Page[T]:
        """Up to ``limit`` entries after ``after``, in pop order. Slots that end before the
        cursor are skipped unread; a slot holding several ticks is sorted in place the first
        time it is listed (harmless: same-tick entries keep their FIFO order) and kept sorted
        incrementally after that."""
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit!r}")
        c = after.order if after is not None else -1
        ctick = c >> SEQ_BITS
        entries = self._entries
        out: list[tuple[float, str, T]] = []
        level0_end = 1 << self._bits
        for key, lst, lo, hi in self._segments():
            if hi < ctick:
                continue
            if not 0 <= key < level0_end:
                self._sort_slot(key, lst)
            start = bisect.bisect_right(lst, c, key=_order) if lo <= ctick else 0
            for i in range(start, len(lst)):
                entry = lst[i]
                if entries.get(entry[2]) is entry:
                    out.append((entry[1], entry[2], entry[3]))
                    if len(out) == limit:
                        return Page(out, Cursor(entry[0]))
        return Page(out, None)

    def drain(self) -> list[T]:
        """Remove and return every item in pop order. O(n log n)."""
        stored = [*self._late, *self._overflow]
        for lst in self._slots.values():
            stored.extend(lst)
        self._slots.clear()
        stored.sort()
        out: list[T] = []
        self._take_live(stored, out)
        self._late = []
        self._overflow = []
        self._counts = [0] * self._levels
        self._sorted.clear()
        assert not self._entries
        self._dead = 0
        self._wake = math.inf
        return out

    # -- internals ---------------------------------------------------------------------------

    def _advance(self, target: int, out: list[T]) -> None:
        """Process ticks ``_cur + 1 .. target``: cascade at block boundaries, expire level-0
        slots into ``out``; jump over spans whose lower levels are empty."""
        cur = self._cur
        counts = self._counts
        slots = self._slots
        bits = self._bits
        mask = self._mask
        levels = self._levels
        while cur < target:
            if not counts[0]:
                k = 1
                while k < levels and not counts[k]:
                    k += 1
                if k < levels:
                    # Nothing expires or cascades before the next multiple of 2**(bits*k).
                    jump = cur | ((1 << (bits * k)) - 1)
                elif self._overflow:
                    # Only the overflow: go straight to the block of its earliest entry.
                    jump = max(cur, self._overflow_block() - 1)
                else:
                    cur = target
                    break
                if jump >= target:
                    cur = target
                    break
                cur = jump
            t = cur + 1
            if not t & mask:
                self._cascade(t)
            idx = t & mask
            lst = slots.pop(idx, None)
            if lst:
                counts[0] -= len(lst)
                self._take_live(lst, out)
            cur = t
        self._cur = cur

    def _cascade(self, t: int) -> None:
        """At tick ``t``, a multiple of ``2**bits``: re-place the slots whose block starts at
        ``t``, highest level first (the overflow's matching entries at the top boundary)."""
        bits = self._bits
        levels = self._levels
        full = bits * levels
        if not t & ((1 << full) - 1) and self._overflow:
            block = t >> full
            keep: list[Entry[T]] = []
            move: list[Entry[T]] = []
            for entry in self._overflow:
                (move if (entry[0] >> SEQ_BITS) >> full == block else keep).append(entry)
            self._overflow = keep
            self._sorted.pop(_OVERFLOW, None)
            self._replace(move, t)
        for k in range(levels - 1, 0, -1):
            if not t & ((1 << (bits * k)) - 1):
                idx = (k << bits) | ((t >> (bits * k)) & self._mask)
                lst = self._slots.pop(idx, None)
                if lst:
                    self._counts[k] -= len(lst)
                    self._sorted.pop(idx, None)
                    if k == 1:  # the common cascade: every entry lands in level 0
                        slots = self._slots
                        mask = self._mask
                        for entry in lst:
                            slots[(entry[0] >> SEQ_BITS) & mask].append(entry)
                        self._counts[0] += len(lst)
                    else:
                        self._replace(lst, t)

    def _replace(self, lst: list[Entry[T]], t: int) -> None:
        """Place entries whose ticks are ``>= t`` relative to ``t``, keeping their order."""
        bits = self._bits
        mask = self._mask
        levels = self._levels
        slots = self._slots
        counts = self._counts
        for entry in lst:
            tick = entry[0] >> SEQ_BITS
            lvl = (((tick ^ t) | 1).bit_length() - 1) // bits
            if lvl < levels:
                slots[(lvl << bits) | ((tick >> (lvl * bits)) & mask)].append(entry)
                counts[lvl] += 1
            else:
                self._overflow.append(entry)

    def _lower_bound(self) -> int:
        """A tick no stored entry is due before: the start of the earliest occupied slot."""
        cur = self._cur
        if self._late:
            return cur
        bits = self._bits
        mask = self._mask
        for k in range(self._levels):
            if self._counts[k]:
                span = bits * k
                base = (cur >> (span + bits)) << (span + bits)
                for s in range(((cur >> span) & mask) + 1, mask + 1):
                    if self._slots.get((k << bits) | s):
                        return base | (s << span)
                raise AssertionError("level count without entries")
        return self._overflow_block()

    def _overflow_block(self) -> int:
        """The first tick of the top-level block holding the overflow's earliest entry.
        O(len(overflow)); the overflow only holds entries 2**(bits*levels) ticks ahead."""
        full = self._bits * self._levels
        return (min(self._overflow)[0] >> SEQ_BITS >> full) << full

    def _segments(self) -> list[tuple[int, list[Entry[T]], float, float]]:
        """The non-empty lists in time order as ``(key, list, first tick, last tick)``; key is
        the slot index, or ``_LATE``/``_OVERFLOW``. Their tick ranges do not overlap."""
        cur = self._cur
        bits = self._bits
        mask = self._mask
        out: list[tuple[int, list[Entry[T]], float, float]] = []
        if self._late:
            out.append((_LATE, self._late, -math.inf, cur))
        for k in range(self._levels):
            if not self._counts[k]:
                continue
            span = bits * k
            base = (cur >> (span + bits)) << (span + bits)
            for s in range(((cur >> span) & mask) + 1, mask + 1):
                idx = (k << bits) | s
                lst = self._slots.get(idx)
                if lst:
                    lo = base | (s << span)
                    out.append((idx, lst, lo, lo + (1 << span) - 1))
        if self._overflow:
            full = bits * self._levels
            out.append((_OVERFLOW, self._overflow, ((cur >> full) + 1) << full, math.inf))
        return out

    def _sort_slot(self, key: int, lst: list[Entry[T]]) -> None:
        """Sort ``lst`` by order in place, reusing the prefix sorted by an earlier page()."""
        done = self._sorted.get(key, 0)
        n = len(lst)
        if done == n:
            return
        if done and n - done <= _INSORT_MAX:
            tail = lst[done:]
            del lst[done:]
            for entry in tail:
                bisect.insort(lst, entry)
        else:
            lst.sort()
        self._sorted[key] = n

    def _compact(self) -> None:
        """Sweep dead entries from every list. O(n + levels x 2**slot_bits)."""
        entries = self._entries
        counts = [0] * self._levels
        bits = self._bits
        for idx, lst in list(self._slots.items()):
            live = [e for e in lst if entries.get(e[2]) is e]
            if live:
                self._slots[idx] = live
                counts[idx >> bits] += len(live)
            else:
                del self._slots[idx]
        self._counts = counts
        self._overflow = [e for e in self._overflow if entries.get(e[2]) is e]
        self._late = [e for e in self._late if entries.get(e[2]) is e]
        self._sorted.clear()
        self._dead = 0

    def _check(self) -> None:
        """Assert the invariants. O(n + levels x 2**slot_bits)."""
        cur = self._cur
        bits = self._bits
        mask = self._mask
        res = self._tick
        stored: list[Entry[T]] = []
        for k in range(self._levels):
            span = bits * k
            level = [self._slots.get(i, []) for i in range(k << bits, (k + 1) << bits)]
            assert self._counts[k] == sum(map(len, level)), f"count of level {k}"
            for s, lst in enumerate(level):
                last_seq: dict[int, int] = {}
                for order, due, _key, _item in lst:
                    tick = order >> SEQ_BITS
                    assert tick == due_tick(due, res)
                    assert tick > cur, "slot entries are in the future"
                    assert ((tick ^ cur).bit_length() - 1) // bits == k, "right level"
                    assert (tick >> span) & mask == s, "right slot"
                    assert last_seq.get(tick, -1) < order, "FIFO within a tick"
                    last_seq[tick] = order
                if k == 0:
                    assert lst == sorted(lst), "level-0 slots are in pop order"
                stored.extend(lst)
        full = bits * self._levels
        for order, due, _key, _item in self._overflow:
            tick = order >> SEQ_BITS
            assert tick == due_tick(due, res)
            assert tick > cur
            assert (tick ^ cur) >> full, "overflow entries are beyond the top level"
        for order, due, _key, _item in self._late:
            assert order >> SEQ_BITS == due_tick(due, res) <= cur
        stored += self._overflow
        stored += self._late
        for key, done in self._sorted.items():
            if key == _LATE:
                lst = self._late
            elif key == _OVERFLOW:
                lst = self._overflow
            else:
                assert key >= 1 << bits, "level-0 slots are never sorted by page()"
                lst = self._slots.get(key, [])
            assert done <= len(lst)
            assert lst[:done] == sorted(lst[:done]), "sorted prefix"
        self._check_entries(stored)
