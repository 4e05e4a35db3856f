"""kumoq.throttle: GCRA as reference §3.4 states it, the local backend and the Throttle seam."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kumoq.config.values import ThrottleSpec
from kumoq.throttle import (
    LocalThrottleBackend,
    Throttle,
    ThrottleBackend,
    ThrottleResult,
    throttle_key,
)

BASE = 1_700_000_000.0
EPS = 1e-3  # well above float resolution at BASE, well below any T here


def spec(text: str) -> ThrottleSpec:
    return ThrottleSpec.parse("rate", text)


def interval(s: ThrottleSpec) -> Fraction:
    return Fraction(s.period, s.limit)


def burst_of(s: ThrottleSpec) -> int:
    return s.limit if s.max_burst is None else s.max_burst


@pytest.mark.parametrize(
    "text", ["10/s", "50/min", "1,000/hr", "60/minute,max_burst=1", "5/s,max_burst=2", "3/20s"]
)
def test_fresh_key_admits_exactly_burst_then_one_per_interval(text):
    s = spec(text)
    b = LocalThrottleBackend()
    burst = burst_of(s)
    results = [b.check("k", s, BASE) for _ in range(burst + 1)]
    assert [r.throttled for r in results] == [False] * burst + [True]
    assert [r.remaining for r in results[:-1]] == list(range(burst - 1, -1, -1))
    T = float(interval(s))
    for j in range(1, 6):
        assert b.check("k", s, BASE + j * T - EPS).throttled
        assert not b.check("k", s, BASE + j * T + EPS).throttled
        assert b.check("k", s, BASE + j * T + EPS).throttled
    b._check()


def test_result_fields_for_ten_per_second():
    b = LocalThrottleBackend()
    first = b.check("k", spec("10/s"), BASE)
    assert first == ThrottleResult(False, 10, 9, 1.0, None)
    for _ in range(9):
        b.check("k", spec("10/s"), BASE)
    assert b.check("k", spec("10/s"), BASE) == ThrottleResult(True, 10, 0, 1.0, 1.0)
    # half a second later five more fit; the sixth waits 0.1s, rounded up to 1s
    for left in (4, 3, 2, 1, 0):
        assert b.check("k", spec("10/s"), BASE + 0.5).remaining == left
    r = b.check("k", spec("10/s"), BASE + 0.5)
    assert (r.throttled, r.retry_after) == (True, 1.0)


def test_ten_per_second_over_sixty_requests_spans_five_seconds():
    s = spec("10/s")
    b = LocalThrottleBackend()
    now = BASE
    admitted: list[float] = []
    while len(admitted) < 60:
        r = b.check("queue", s, now)
        if r.throttled:
            assert r.retry_after is not None
            now += r.retry_after
        else:
            admitted.append(now)
    assert admitted[:10] == [BASE] * 10
    assert admitted[-1] - admitted[0] == 5.0
    assert [admitted.count(BASE + k) for k in range(6)] == [10] * 6


def test_max_burst_one_spaces_every_request():
    s = spec("60/minute,max_burst=1")
    b = LocalThrottleBackend()
    assert not b.check("k", s, BASE).throttled
    r = b.check("k", s, BASE + 0.5)
    assert (r.throttled, r.retry_after, r.limit) == (True, 1.0, 1)
    assert not b.check("k", s, BASE + 1.0).throttled
    assert b.check("k", s, BASE + 1.0).throttled
    # arriving as fast as allowed: one per second
    now = BASE + 2.0
    times: list[float] = []
    while len(times) < 5:
        r = b.check("k", s, now)
        if r.throttled:
            assert r.retry_after is not None
            now += r.retry_after
        else:
            times.append(now)
    assert [t - times[0] for t in times] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_retry_after_is_rounded_up_to_whole_seconds():
    s = spec("1/hr")
    b = LocalThrottleBackend()
    assert not b.check("k", s, BASE).throttled
    r = b.check("k", s, BASE + 0.25)
    assert r.retry_after == 3600.0  # 3599.75 rounded up
    assert r.reset_after == 3600.0
    assert b.check("k", s, BASE + 3599.9).throttled
    assert not b.check("k", s, BASE + 3600).throttled


def test_changing_the_spec_changes_the_key():
    b = LocalThrottleBackend()
    old = spec("2/s")
    assert throttle_key("q", old) == "q:2:2:1"
    assert throttle_key("q", spec("60/minute,max_burst=1")) == "q:60:1:60"
    assert throttle_key("q", spec("local:2/s")) == "q:2:2:1"
    for _ in range(2):
        b.check("q", old, BASE)
    assert b.check("q", old, BASE).throttled
    for changed in ("3/s", "2/s,max_burst=1", "2/2s"):
        assert not b.check("q", spec(changed), BASE).throttled, changed
    assert not b.check("other", old, BASE).throttled
    assert len(b) == 5


def test_quantity():
    s = spec("10/s")
    b = LocalThrottleBackend()
    assert b.check("k", s, BASE, 3).remaining == 7
    assert b.check("k", s, BASE, 8).throttled  # only 7 left, nothing consumed
    r = b.check("k", s, BASE, 7)
    assert (r.throttled, r.remaining) == (False, 0)
    assert b.check("k", s, BASE, 11).retry_after is not None
    # quantity 0 asks without consuming; throttled with no retry_after once nothing remains
    assert b.check("k", s, BASE, 0) == ThrottleResult(True, 10, 0, 1.0, None)
    fresh = b.check("fresh", s, BASE, 0)
    assert (fresh.throttled, fresh.remaining) == (False, 10)
    with pytest.raises(ValueError, match="quantity must not be negative"):
        b.check("k", s, BASE, -1)


def test_zero_burst_never_admits():
    b = LocalThrottleBackend()
    r = b.check("k", spec("10/s,max_burst=0"), BASE)
    assert r.throttled
    assert r.retry_after == 1.0


def test_stale_keys_are_dropped_so_memory_stays_bounded():
    b = LocalThrottleBackend(min_sweep=8)
    s = spec("1/s")
    for i in range(1000):
        # every key is fresh and goes stale a second later
        assert not b.check(f"k{i}", s, BASE + i).throttled
        b._check()
        assert len(b) <= 16
    # live keys are never dropped
    live = LocalThrottleBackend(min_sweep=4)
    slow = spec("1/hr")
    for i in range(100):
        live.check(f"k{i}", slow, BASE + i)
        live._check()
    assert len(live) == 100
    assert all(live.check(f"k{i}", slow, BASE + 200).throttled for i in range(100))


def test_min_sweep_must_be_positive():
    with pytest.raises(ValueError, match="min_sweep"):
        LocalThrottleBackend(min_sweep=0)


class Recording:
    def __init__(self) -> None:
        self.keys: list[str] = []

    def check(self, key: str, spec: ThrottleSpec, now: float, quantity: int = 1) -> ThrottleResult:
        self.keys.append(key)
        return ThrottleResult(True, 1, 0, 9.0, 9.0)


def test_throttle_routes_local_specs_to_the_local_backend():
    shared = Recording()
    backend: ThrottleBackend = shared
    t = Throttle(backend)
    assert t.check("a", spec("10/s"), BASE).throttled
    assert not t.check("b", spec("local:10/s"), BASE).throttled
    assert shared.keys == ["a"]
    assert len(t.local) == 1


def test_throttle_defaults_to_one_local_backend():
    local = LocalThrottleBackend()
    for t in (Throttle(local), Throttle(local=local), Throttle()):
        t.check("k", spec("1/s"), BASE)
        assert t.check("k", spec("local:1/s"), BASE).throttled
    assert len(local) == 1


# -- properties ------------------------------------------------------------------------------

specs = st.builds(
    ThrottleSpec,
    limit=st.integers(1, 50),
    period=st.sampled_from([1, 2, 60, 90, 3600]),
    max_burst=st.none() | st.integers(1, 60),
)
# offsets on a 1/256 s grid: exact as floats and as nanoseconds
offsets = st.lists(st.integers(0, 256 * 7200), min_size=1, max_size=60).map(sorted)


@settings(max_examples=300, deadline=None)
@given(s=specs, ticks=offsets, quantities=st.lists(st.integers(1, 3), min_size=60, max_size=60))
def test_never_more_than_burst_plus_elapsed_over_interval(s, ticks, quantities):
    b = LocalThrottleBackend(min_sweep=2)
    burst = burst_of(s)
    start = Fraction(ticks[0], 256)
    admitted = 0
    for tick, q in zip(ticks, quantities, strict=False):
        r = b.check("k", s, BASE + tick / 256, q)
        if not r.throttled:
            admitted += q
        elapsed = Fraction(tick, 256) - start
        assert admitted <= burst + int(elapsed / interval(s))
        assert r.limit == burst
        assert r.remaining >= 0
        assert r.reset_after == int(r.reset_after) >= 0
        b._check()


@settings(max_examples=300, deadline=None)
@given(s=specs, ticks=offsets)
def test_waiting_retry_after_makes_the_next_check_pass(s, ticks):
    b = LocalThrottleBackend()
    not_before = 0
    for tick in ticks:
        tick = max(tick, not_before)
        now = BASE + tick / 256
        r = b.check("k", s, now)
        if r.throttled:
            assert r.retry_after is not None
            assert r.retry_after == int(r.retry_after) >= 1
            again = b.check("k", s, now + r.retry_after)
            assert not again.throttled
            not_before = tick + int(r.retry_after) * 256
        else:
            assert r.retry_after is None


@settings(max_examples=100, deadline=None)
@given(s=specs, seconds=st.integers(0, 600))
def test_greedy_arrivals_get_exactly_burst_plus_one_per_interval(s, seconds):
    b = LocalThrottleBackend()
    burst = burst_of(s)
    # one request at every multiple of T (exact in ns when T divides evenly), and at the end
    now = BASE + seconds
    admitted = sum(not b.check("k", s, BASE).throttled for _ in range(burst + 2))
    assert admitted == burst
    later = sum(not b.check("k", s, now).throttled for _ in range(burst + 2))
    assert later == min(burst, int(Fraction(seconds) / interval(s)))
