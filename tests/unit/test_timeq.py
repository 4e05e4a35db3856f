"""TimerWheel and SkipList against a sorted-list model (hypothesis stateful), plus targeted cases.

The model stores ``(tick, seq, due, key, item)`` with ``tick = due_tick(due, res)`` and pops
every row with ``tick <= now_tick(now, res)`` sorted by ``(tick, seq)``: the documented rounding
of both structures, so for the same resolution they must return the same items in the same order.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from itertools import count
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from kumoq.scheduler.skiplist import SkipList
from kumoq.scheduler.timeq import (
    DUE_NOW,
    EMPTY,
    Cursor,
    Inserted,
    Items,
    Sleep,
    TimeQ,
    due_tick,
    now_tick,
)
from kumoq.scheduler.timerwheel import TimerWheel

NOW0 = 1_700_000_000.0


class Model:
    """The specification: a list sorted on demand."""

    def __init__(self, res: float) -> None:
        self.res = res
        self.rows: list[tuple[int, int, float, str, str]] = []
        self.seq = count()

    def keys(self) -> list[str]:
        return [r[3] for r in self.rows]

    def insert(self, due: float, key: str, item: str) -> None:
        self.rows.append((due_tick(due, self.res), next(self.seq), due, key, item))

    def pop(self, now: float) -> list[str]:
        nt = now_tick(now, self.res)
        due = sorted(r for r in self.rows if r[0] <= nt)
        self.rows = [r for r in self.rows if r[0] > nt]
        return [r[4] for r in due]

    def remove(self, key: str) -> str | None:
        for i, r in enumerate(self.rows):
            if r[3] == key:
                del self.rows[i]
                return r[4]
        return None

    def listing(self) -> list[tuple[float, str, str]]:
        return [(r[2], r[3], r[4]) for r in sorted(self.rows)]

    def min_tick(self) -> int | None:
        return min((r[0] for r in self.rows), default=None)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-6)


class TimeQMachine(RuleBasedStateMachine):
    """Random insert/remove/advance/pop/page/drain; the structure must match the model."""

    kind: ClassVar[str]
    exact_sleep: ClassVar[bool]

    def __init__(self) -> None:
        super().__init__()
        self.q = MACHINES[self.kind]()
        self.model = Model(self.q.resolution)
        self.now = 0.0
        self.items = count()
        self.wake = math.inf  # when a maintainer driven by pop()/head_changed would pop next

    @initialize(start=st.sampled_from([0.0, 3.7, NOW0]))
    def start(self, start: float) -> None:
        self.now = start

    def _offsets(self) -> st.SearchStrategy[float]:
        res = self.q.resolution
        return st.one_of(
            st.integers(-2, 300).map(lambda k: k * res),  # exactly on tick boundaries
            st.floats(-2 * res, 5 * res),
            st.floats(0, 300 * res),
            st.floats(0, 100_000 * res),
            st.floats(0, 2**34 * res),  # beyond 4 x 256 slots: the overflow
        )

    @rule(data=st.data(), k=st.integers(0, 40))
    def insert(self, data: st.DataObject, k: int) -> None:
        self._insert(self.now + data.draw(self._offsets(), label="offset"), k)

    def _insert(self, due: float, k: int) -> None:
        key = f"k{k}"
        item = f"{key}#{next(self.items)}"
        if key in self.model.keys():  # noqa: SIM118
            with pytest.raises(ValueError, match="already scheduled"):
                self.q.insert(due, key, item, self.now)
            return
        live_min = self.model.min_tick()
        result = self.q.insert(due, key, item, self.now)
        if due <= self.now:
            assert result is DUE_NOW
            return
        assert isinstance(result, Inserted)
        tick = due_tick(due, self.model.res)
        self.model.insert(due, key, item)
        if result.head_changed:
            self.wake = self.now
            if isinstance(self.q, SkipList):  # exact: no spurious wake-ups
                assert live_min is None or tick < live_min
        # No missed wake-up: nothing is due before the maintainer's next pop.
        assert tick * self.model.res >= self.wake - 1e-6

    @precondition(lambda self: self.now < self.wake < math.inf)
    @rule(data=st.data(), k=st.integers(0, 40), ticks=st.integers(-2, 1))
    def insert_near_wake(self, data: st.DataObject, k: int, ticks: int) -> None:
        """Insert around the maintainer's planned wake-up, where a missed notification hides."""
        res = self.q.resolution
        base = math.floor(self.wake / res) + ticks
        due = max(self.now + res / 2, base * res - data.draw(st.sampled_from([0.0, res / 3])))
        if f"k{k}" not in self.model.keys():  # noqa: SIM118
            self._insert(due, k)

    @precondition(lambda self: self.model.rows)
    @rule(data=st.data())
    def remove_existing(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(self.model.keys()))
        assert self.q.remove(key) == self.model.remove(key)
        assert key not in self.q

    @rule(k=st.integers(0, 40))
    def remove_any(self, k: int) -> None:
        assert self.q.remove(f"k{k}") == self.model.remove(f"k{k}")

    @rule(
        dt=st.one_of(
            st.just(0.0), st.floats(0, 3.0), st.floats(0, 1000.0), st.floats(0, 2**34 * 1.0)
        )
    )
    def advance(self, dt: float) -> None:
        self.now += dt * self.q.resolution

    @rule()
    def pop(self) -> None:
        result = self.q.pop(self.now)
        expected = self.model.pop(self.now)
        if expected:
            assert isinstance(result, Items)
            assert result.items == expected
            self.wake = self.now
            return
        if not self.model.rows:
            assert result is EMPTY
            self.wake = math.inf
            return
        assert isinstance(result, Sleep), result
        min_tick = self.model.min_tick()
        assert min_tick is not None
        exact = max(0.0, min_tick * self.model.res - self.now)
        assert result.seconds >= 0
        if self.exact_sleep:
            assert _close(result.seconds, exact), (result.seconds, exact)
        else:
            assert result.seconds <= exact + 1e-6, (result.seconds, exact)
        self.wake = self.now + result.seconds

    @rule(size=st.integers(1, 7))
    def page_through(self, size: int) -> None:
        assert list(self.q.items(page_size=size)) == self.model.listing()

    @rule()
    def next_due(self) -> None:
        expected = min((r[2] for r in self.model.rows), default=None)
        assert self.q.next_due() == expected

    @precondition(lambda self: len(self.model.rows) < 3)
    @rule()
    def drain(self) -> None:
        expected = [r[4] for r in sorted(self.model.rows)]
        assert self.q.drain() == expected
        self.model.rows = []
        self.wake = math.inf  # a maintainer that drained will pop again before sleeping

    @invariant()
    def consistent(self) -> None:
        self.q._check()
        assert len(self.q) == len(self.model.rows)


MACHINES: dict[str, Callable[[], TimeQ[str]]] = {}


def _machine(name: str, make: Callable[[], TimeQ[str]], exact: bool) -> Any:
    MACHINES[name] = make
    machine: Any = type(name, (TimeQMachine,), {"kind": name, "exact_sleep": exact})
    case = machine.TestCase
    case.settings = settings(
        max_examples=int(os.environ.get("TIMEQ_EXAMPLES", "50")),
        stateful_step_count=50,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    return case


TestSkipList = _machine("SkipListMachine", SkipList, exact=True)
TestSkipListQuarterSecond = _machine("SkipListQuarter", lambda: SkipList(0.25), exact=True)
TestTimerWheel = _machine("TimerWheelMachine", lambda: TimerWheel(1.0), exact=False)
TestTimerWheelMinute = _machine("TimerWheelMinute", lambda: TimerWheel(60.0), exact=False)
# A tiny shape (2 levels x 4 slots) makes cascades and the overflow list common.
TestTimerWheelTiny = _machine(
    "TimerWheelTiny", lambda: TimerWheel(0.5, slot_bits=2, levels=2), exact=False
)
TestTimerWheelBinary = _machine(
    "TimerWheelBinary", lambda: TimerWheel(3.0, slot_bits=1, levels=3), exact=False
)


# -- targeted cases ---------------------------------------------------------------------------

STRUCTURES: dict[str, Callable[[], TimeQ[str]]] = {
    "skiplist": lambda: SkipList(),
    "wheel": lambda: TimerWheel(1.0, now=NOW0),
    "wheel-tiny": lambda: TimerWheel(1.0, now=NOW0, slot_bits=2, levels=2),
}


@pytest.fixture(params=sorted(STRUCTURES))
def q(request: pytest.FixtureRequest) -> TimeQ[str]:
    return STRUCTURES[request.param]()


def test_due_now_stores_nothing(q: TimeQ[str]) -> None:
    assert q.insert(NOW0, "a", "A", NOW0) is DUE_NOW
    assert q.insert(NOW0 - 5, "b", "B", NOW0) is DUE_NOW
    assert len(q) == 0
    assert q.pop(NOW0) is EMPTY
    assert q.next_due() is None


def test_never_early_at_most_one_tick_late(q: TimeQ[str]) -> None:
    assert q.insert(NOW0 + 10.2, "a", "A", NOW0) == Inserted(head_changed=True)
    result = q.pop(NOW0 + 10.2)
    assert isinstance(result, Sleep)
    assert 0 < result.seconds <= 0.8 + 1e-6
    if isinstance(q, SkipList):
        assert result.seconds == pytest.approx(0.8)
    assert not isinstance(q.pop(NOW0 + 10.99), Items)
    assert q.pop(NOW0 + 11.0) == Items(["A"])
    assert q.pop(NOW0 + 11.0) is EMPTY


def test_exact_tick_boundary_is_not_rounded_up(q: TimeQ[str]) -> None:
    q.insert(NOW0 + 5.0, "a", "A", NOW0)
    assert not isinstance(q.pop(NOW0 + 4.999), Items)
    assert q.pop(NOW0 + 5.0) == Items(["A"])


def test_ties_pop_fifo_and_in_tick_order(q: TimeQ[str]) -> None:
    q.insert(NOW0 + 2.9, "c", "C", NOW0)
    q.insert(NOW0 + 2.1, "a", "A", NOW0)  # same tick as c, inserted later
    q.insert(NOW0 + 1.5, "b", "B", NOW0)
    assert q.pop(NOW0 + 100) == Items(["B", "C", "A"])


def test_sleep_and_empty(q: TimeQ[str]) -> None:
    assert q.pop(NOW0) is EMPTY
    q.insert(NOW0 + 90.5, "a", "A", NOW0)
    result = q.pop(NOW0 + 0.25)
    assert isinstance(result, Sleep)
    assert 0 < result.seconds <= 91 - 0.25
    if isinstance(q, SkipList):
        assert result.seconds == pytest.approx(90.75)
    assert q.remove("a") == "A"
    assert q.pop(NOW0 + 1) is EMPTY


def test_wheel_sleep_is_exact_within_level_zero() -> None:
    wheel: TimerWheel[str] = TimerWheel(1.0, now=NOW0)  # NOW0 is a multiple of 256 + 0
    base = (int(NOW0) | 255) - 100  # keep the entry inside the current 256-tick block
    wheel.pop(base)
    wheel.insert(base + 40.5, "a", "A", base)
    assert wheel.pop(base + 10) == Sleep(31.0)


def test_head_changed_only_when_earlier(q: TimeQ[str]) -> None:
    assert q.insert(NOW0 + 100, "a", "A", NOW0) == Inserted(head_changed=True)
    assert isinstance(q.pop(NOW0), Sleep)
    assert q.insert(NOW0 + 500, "b", "B", NOW0) == Inserted(head_changed=False)
    assert q.insert(NOW0 + 100.5, "c", "C", NOW0) == Inserted(head_changed=False)
    assert q.insert(NOW0 + 10, "d", "D", NOW0) == Inserted(head_changed=True)


def test_wheel_head_changed_against_its_sleep() -> None:
    wheel: TimerWheel[str] = TimerWheel(1.0, now=NOW0)
    wheel.insert(NOW0 + 200.5, "a", "A", NOW0)  # tick NOW0 + 201, level 0
    assert wheel.pop(NOW0 + 100) == Sleep(101.0)
    assert wheel.insert(NOW0 + 201, "b", "B", NOW0 + 100) == Inserted(head_changed=False)
    assert wheel.insert(NOW0 + 199.5, "c", "C", NOW0 + 100) == Inserted(head_changed=True)
    assert wheel.insert(NOW0 + 199.7, "d", "D", NOW0 + 100) == Inserted(head_changed=False)
    assert wheel.pop(NOW0 + 200) == Items(["C", "D"])
    assert wheel.insert(NOW0 + 200.5, "e", "E", NOW0 + 200) == Inserted(head_changed=False)


def test_duplicate_key_is_rejected(q: TimeQ[str]) -> None:
    q.insert(NOW0 + 10, "a", "A", NOW0)
    with pytest.raises(ValueError, match="already scheduled"):
        q.insert(NOW0 + 20, "a", "A2", NOW0)
    assert q.get("a") == "A"
    assert q.remove("a") == "A"
    q.insert(NOW0 + 20, "a", "A2", NOW0)  # re-insert after removal
    assert not isinstance(q.pop(NOW0 + 10), Items)
    assert q.pop(NOW0 + 20) == Items(["A2"])


def test_far_future_overflow_and_long_idle_jump() -> None:
    # 1 ms ticks as KumoMTA: 4 x 256 slots cover 49.7 days, the rest is overflow.
    wheel: TimerWheel[str] = TimerWheel(0.001, now=NOW0)
    wheel.insert(NOW0 + 100 * 86400, "far", "FAR", NOW0)
    wheel.insert(NOW0 + 60 * 86400, "mid", "MID", NOW0)
    wheel.insert(NOW0 + 1, "near", "NEAR", NOW0)
    assert wheel._overflow  # the far entries are past the top level
    wheel._check()
    assert wheel.pop(NOW0 + 1) == Items(["NEAR"])
    # 60 days of 1 ms ticks is 5.2e9 ticks: must be skipped, not walked.
    assert wheel.pop(NOW0 + 60 * 86400) == Items(["MID"])
    wheel._check()
    assert wheel.next_due() == NOW0 + 100 * 86400
    assert not isinstance(wheel.pop(NOW0 + 100 * 86400 - 0.001), Items)
    assert wheel.pop(NOW0 + 100 * 86400) == Items(["FAR"])
    assert wheel.pop(NOW0 + 200 * 86400) is EMPTY


def test_idle_jump_over_empty_wheel_is_cheap() -> None:
    wheel: TimerWheel[str] = TimerWheel(0.001, now=0.0)
    assert wheel.pop(NOW0) is EMPTY  # 1.7e12 ticks
    wheel.insert(NOW0 + 5, "a", "A", NOW0)
    wheel._check()
    assert wheel.pop(NOW0 + 5) == Items(["A"])


def test_paging_ten_thousand_entries(q: TimeQ[str]) -> None:
    import random

    rnd = random.Random(7)
    for i in range(10_000):
        q.insert(NOW0 + rnd.uniform(0.5, 200_000), f"k{i:05}", f"v{i}", NOW0)
    expected = list(q.items(page_size=10_000))
    assert len(expected) == 10_000
    listed: list[tuple[float, str, str]] = []
    cursor: Cursor | None = None
    pages = 0
    while True:
        page = q.page(cursor, 333)
        listed += page.entries
        pages += 1
        if page.next is None:
            break
        cursor = page.next
    assert listed == expected
    assert pages == 10_000 // 333 + 1
    q._check()
    ticks = [due_tick(d, q.resolution) for d, _k, _v in listed]
    assert ticks == sorted(ticks)


def test_paging_while_the_queue_changes(q: TimeQ[str]) -> None:
    for i in range(300):
        q.insert(NOW0 + 10 + i, f"k{i:03}", f"v{i}", NOW0)
    first = q.page(None, 100)
    assert [k for _d, k, _v in first.entries] == [f"k{i:03}" for i in range(100)]
    q.insert(NOW0 + 5, "early", "E", NOW0)  # before the cursor: not listed
    q.insert(NOW0 + 500, "late", "L", NOW0)  # after it: listed
    assert q.remove("k150") == "v150"
    rest: list[tuple[float, str, str]] = []
    cursor = first.next
    while cursor is not None:
        page = q.page(cursor, 100)
        rest += page.entries
        cursor = page.next
    keys = [k for _d, k, _v in rest]
    assert keys == [f"k{i:03}" for i in range(100, 300) if i != 150] + ["late"]


def test_remove_many_compacts(q: TimeQ[str]) -> None:
    for i in range(20_000):
        q.insert(NOW0 + 1 + i % 5000, f"k{i}", f"v{i}", NOW0)
    for i in range(0, 20_000, 2):
        assert q.remove(f"k{i}") == f"v{i}"
    for i in range(1, 19_000, 2):
        q.remove(f"k{i}")
    q._check()
    assert len(q) == 500
    assert q._dead <= max(4096, len(q))  # type: ignore[attr-defined]
    assert q.remove("k0") is None
    result = q.pop(NOW0 + 10_000)
    assert isinstance(result, Items)
    assert result.items == [f"v{i}" for i in range(19_001, 20_000, 2)]


def test_drain_returns_pop_order(q: TimeQ[str]) -> None:
    q.insert(NOW0 + 3000, "a", "A", NOW0)
    q.insert(NOW0 + 2, "b", "B", NOW0)
    q.insert(NOW0 + 70_000, "c", "C", NOW0)
    q.remove("b")
    assert q.drain() == ["A", "C"]
    assert len(q) == 0
    q._check()
    assert q.pop(NOW0 + 10**6) is EMPTY


def test_get_contains_len(q: TimeQ[str]) -> None:
    q.insert(NOW0 + 3, "a", "A", NOW0)
    assert "a" in q
    assert "b" not in q
    assert q.get("a") == "A"
    assert q.get("b") is None
    assert len(q) == 1


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan])
def test_bad_resolution_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        TimerWheel(bad)
    with pytest.raises(ValueError, match="positive"):
        SkipList(bad)


def test_page_limit_must_be_positive(q: TimeQ[str]) -> None:
    with pytest.raises(ValueError, match="positive"):
        q.page(None, 0)
