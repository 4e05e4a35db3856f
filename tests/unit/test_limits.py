"""Connection-limit leases (``kumoq.throttle.Limits``), rate ordering and the async seam."""

from __future__ import annotations

import pytest

from kumoq.config.values import LimitSpec, ThrottleSpec
from kumoq.throttle import Leases, Limits, Refused, Throttle, ThrottleResult, by_rate


def spec(text: str) -> ThrottleSpec:
    return ThrottleSpec.parse("t", text)


async def test_leases_count_per_key_smallest_limit_first() -> None:
    limits = Limits()
    wanted = [("big", LimitSpec(10)), ("shared", LimitSpec(2))]
    first = await limits.acquire(wanted)
    second = await limits.acquire([("other", LimitSpec(5)), ("shared", LimitSpec(2))])
    assert isinstance(first, Leases)
    assert isinstance(second, Leases)
    assert first.keys == ["shared", "big"]  # the smallest limit is taken first
    assert limits.local.held("shared") == 2
    refused = await limits.acquire(wanted)
    assert refused == Refused("shared")
    assert limits.local.held("big") == 1  # nothing kept from a refused acquire
    await first.release()
    await first.release()  # idempotent
    assert limits.local.held("shared") == 1
    assert limits.local.held("big") == 0


async def test_a_release_runs_each_waiting_callback_once() -> None:
    limits = Limits()
    lease = await limits.acquire([("k", LimitSpec(1))])
    assert isinstance(lease, Leases)
    calls: list[str] = []
    limits.local.on_release("k", 1, lambda: calls.append("a"))
    limits.local.on_release("k", 1, lambda: calls.append("a again"))  # same token: replaces
    limits.local.on_release("k", 2, lambda: calls.append("b"))
    await lease.release()
    assert sorted(calls) == ["a again", "b"]
    again = await limits.acquire([("k", LimitSpec(1))])
    assert isinstance(again, Leases)
    await again.release()
    assert sorted(calls) == ["a again", "b"]  # once only


def test_by_rate_orders_smallest_rate_first() -> None:
    pairs = [("a", spec("10/s")), ("b", spec("100/min")), ("c", spec("1/s")), ("d", spec("5/h"))]
    assert [k for k, _ in by_rate(pairs)] == ["d", "c", "b", "a"]


class Shared:
    """A stand-in for a shared backend (the redis seam): records the keys it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def check_async(
        self, key: str, spec: ThrottleSpec, now: float, quantity: int = 1
    ) -> ThrottleResult:
        self.asked.append(key)
        return ThrottleResult(True, 1, 0, 1.0, 1.0)


async def test_throttle_uses_the_shared_backend_except_for_local_specs() -> None:
    shared = Shared()
    throttle = Throttle(shared=shared)
    assert (await throttle.throttle("k", spec("1/s"), 100.0)).throttled
    assert not (await throttle.throttle("k", spec("local:1/s"), 100.0)).throttled
    assert shared.asked == ["k"]
    assert not (await Throttle().throttle("k", spec("1/s"), 100.0)).throttled


@pytest.mark.parametrize("limit", [1, 3])
async def test_limit_of_n_admits_n(limit: int) -> None:
    limits = Limits()
    held = [await limits.acquire([("k", LimitSpec(limit))]) for _ in range(limit + 1)]
    assert [isinstance(h, Leases) for h in held] == [True] * limit + [False]
