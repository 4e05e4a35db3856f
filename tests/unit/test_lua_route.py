"""kumoq.egress.lua_route: a custom Lua message's source and ready queue, with the path's
source selection rates, behind fake policy events and a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from kumoq.clock import FakeClock, SystemClock
from kumoq.config.egress import EgressPathConfig, EgressPool, EgressPoolEntry, EgressSource
from kumoq.config.values import ThrottleSpec
from kumoq.egress.lua_route import LuaRoute, LuaRouter
from kumoq.egress.sources import SourceSelector
from kumoq.errors import PolicyError, PolicyWouldBlock
from kumoq.logs.records import RecordType
from kumoq.message import parse_queue_name
from kumoq.scheduler.attempt import Attempt
from kumoq.scheduler.context import InsertReason
from kumoq.throttle import Throttle

PARTS = parse_queue_name("hook.test")


class Policy:
    """get_egress_pool/source/path_config; each call is counted. ``block`` makes the next
    ``block`` path calls wait for an answer first; ``fail`` makes them raise."""

    def __init__(self, paths: dict[str, dict[str, Any]]) -> None:
        self.paths = paths
        self.path_calls: list[tuple[str, str, str]] = []
        self.block = 0
        self.fail: str | None = None
        self.waited = 0
        self.pools_until_failure: int | None = None  # pools (never cached) given, then an error

    def get_egress_pool(self, name: str) -> EgressPool:
        if self.pools_until_failure is not None:
            if self.pools_until_failure == 0:
                raise PolicyError("policy.lua:3: get_egress_pool failed")
            self.pools_until_failure -= 1
        entries = (EgressPoolEntry(name="ip-a"), EgressPoolEntry(name="ip-b"))
        ttl = 0.0 if self.pools_until_failure is not None else 60.0
        return EgressPool(name=name, entries=entries, ttl=ttl)

    def get_egress_source(self, name: str) -> EgressSource:
        return EgressSource(name=name)

    def get_egress_path_config(
        self, routing_domain: str, source: str, site_name: str
    ) -> EgressPathConfig | None:
        if self.fail is not None:
            raise PolicyError(self.fail)
        if self.block:
            self.block -= 1

            async def answer() -> None:
                self.waited += 1

            raise PolicyWouldBlock("a DNS answer", answer)
        self.path_calls.append((routing_domain, source, site_name))
        mapping = self.paths.get(source)
        return None if mapping is None else EgressPathConfig.from_mapping(mapping)


def router(policy: Policy, clock: FakeClock) -> LuaRouter:
    return LuaRouter(clock, sources=SourceSelector(policy, clock), policy=policy)


async def test_an_exhausted_source_is_skipped_and_the_path_asked_with_the_routing_domain() -> None:
    clock = FakeClock(1000.0)
    policy = Policy({"ip-a": {"source_selection_rate": "1/h"}})
    lua = router(policy, clock)
    routes = [await lua.route("hook.test", PARTS, "pool-1", "make.x") for _ in range(6)]
    assert all(isinstance(r, LuaRoute) for r in routes)
    sources = [r.source for r in routes if isinstance(r, LuaRoute)]
    assert sources.count("ip-a") == 1
    assert sources.count("ip-b") == 5
    first = routes[0]
    assert isinstance(first, LuaRoute)
    assert first.ready_queue == f"{first.source}->hook.test@lua:make.x"
    # Each path asked once (cached for refresh_interval), site = the routing domain.
    assert sorted(policy.path_calls) == [
        ("hook.test", "ip-a", "hook.test"),
        ("hook.test", "ip-b", "hook.test"),
    ]


async def test_every_source_exhausted_is_a_transient_failure() -> None:
    clock = FakeClock(1000.0)
    shared = {"additional_source_selection_rates": {"lua-wide": "1/h"}}
    lua = router(Policy({"ip-a": shared, "ip-b": shared}), clock)
    assert isinstance(await lua.route("hook.test", PARTS, "pool-1", "make.x"), LuaRoute)
    refused = await lua.route("hook.test", PARTS, "pool-1", "make.x")
    assert isinstance(refused, Attempt)
    assert refused.disposition is RecordType.TransientFailure
    assert refused.response.code == 451
    assert refused.response.content == (
        "KumoMTA internal: no sources for hook.test pool=`pool-1` "
        "are eligible for selection at this time"
    )
    clock.advance(3600)  # the throttle refills
    assert isinstance(await lua.route("hook.test", PARTS, "pool-1", "make.x"), LuaRoute)


async def test_the_unspecified_source_is_throttled_too() -> None:
    clock = FakeClock(1000.0)
    policy = Policy({"unspecified": {"source_selection_rate": "1/h"}})
    lua = router(policy, clock)
    assert isinstance(await lua.route("hook.test", PARTS, "unspecified", "make.x"), LuaRoute)
    refused = await lua.route("hook.test", PARTS, "unspecified", "make.x")
    assert isinstance(refused, Attempt)
    assert "pool=`unspecified` are eligible" in refused.response.content


async def test_a_path_event_waiting_for_dns_is_called_again() -> None:
    clock = FakeClock(1000.0)
    policy = Policy({})
    policy.block = 2
    lua = router(policy, clock)
    route = await lua.route("hook.test", PARTS, "pool-1", "make.x")
    assert isinstance(route, LuaRoute)
    assert route.source == "ip-a"  # the source picked before the waits kept its turn
    assert policy.waited == 2
    again = await lua.route("hook.test", PARTS, "pool-1", "make.x")
    assert isinstance(again, LuaRoute)
    assert again.source == "ip-b"


async def test_a_failing_path_event_is_a_transient_failure_naming_it() -> None:
    clock = FakeClock(1000.0)
    policy = Policy({})
    policy.fail = "policy.lua:12: attempt to index a nil value"
    failed = await router(policy, clock).route("hook.test", PARTS, "pool-1", "make.x")
    assert isinstance(failed, Attempt)
    assert failed.disposition is RecordType.TransientFailure
    assert (
        failed.response.content == "KumoMTA internal: policy.lua:12: attempt to index a nil value"
    )


@pytest.mark.parametrize("how", ["refresh_interval", "expire_paths", "forget"])
async def test_the_path_is_asked_again(how: str) -> None:
    clock = FakeClock(1000.0)
    policy = Policy({"unspecified": {"refresh_interval": "30s"}})
    lua = router(policy, clock)
    route = await lua.route("hook.test", PARTS, "unspecified", "make.x")
    assert isinstance(route, LuaRoute)
    await lua.route("hook.test", PARTS, "unspecified", "make.x")
    assert len(policy.path_calls) == 1
    if how == "refresh_interval":
        clock.advance(30)
    elif how == "expire_paths":
        lua.expire_paths()
    else:
        lua.forget(route.ready_queue)
    await lua.route("hook.test", PARTS, "unspecified", "make.x")
    assert len(policy.path_calls) == 2


async def test_without_a_policy_no_path_is_asked() -> None:
    lua = LuaRouter(FakeClock(1000.0))
    route = await lua.route("hook.test", PARTS, "pool-1", "make.x")
    assert route == LuaRoute(PARTS, "pool-1", "unspecified", "unspecified->hook.test@lua:make.x")


async def test_a_pool_event_failing_after_a_skip_is_a_transient_failure() -> None:
    clock = FakeClock(1000.0)
    policy = Policy({"ip-a": {"source_selection_rate": "1/h"}})
    throttle = Throttle()
    key = "kumomta.source_selection_rate.ip-a->hook.test@lua:make.x.ip-a"
    await throttle.throttle(key, ThrottleSpec.parse("t", "1/h"), clock.now())  # exhausted
    policy.pools_until_failure = 1  # the pick's pool, then the candidates' fails
    lua = LuaRouter(clock, sources=SourceSelector(policy, clock), policy=policy, throttle=throttle)
    failed = await lua.route("hook.test", PARTS, "pool-1", "make.x")
    assert isinstance(failed, Attempt)
    assert failed.disposition is RecordType.TransientFailure
    assert failed.response.content == "KumoMTA internal: policy.lua:3: get_egress_pool failed"


def routed(
    path: dict[str, Any] | None, name: str = "unspecified->hook.test@lua:make.x"
) -> LuaRoute:
    config = None if path is None else EgressPathConfig.from_mapping(path)
    return LuaRoute(PARTS, "unspecified", "unspecified", name, config)


async def test_without_a_path_every_call_is_admitted() -> None:
    lua = LuaRouter(FakeClock(1000.0))
    assert await lua.admit(routed(None), 50) is None


async def test_a_message_rate_exhausted_past_idle_timeout_delays_the_call() -> None:
    lua = LuaRouter(FakeClock(1000.0))
    route = routed({"max_message_rate": "1/h"})
    assert await lua.admit(route, 1) is None
    held = await lua.admit(route, 1)
    assert held is not None
    assert held.disposition is RecordType.Delayed
    assert held.reason is InsertReason.MessageRateThrottle
    assert held.requeue_delay is not None
    assert 3500 < held.requeue_delay <= 3600
    assert held.response.content == "throttled"


async def test_a_shared_message_throttle_holds_across_lua_ready_queues() -> None:
    lua = LuaRouter(FakeClock(1000.0))
    shared = {"additional_message_rate_throttles": {"webhooks": "2/h"}}
    one = routed(shared, "ip-a->a.test@lua:make.x")
    other = routed(shared, "ip-b->b.test@lua:make.x")
    assert await lua.admit(one, 2) is None  # a batch of two takes both
    held = await lua.admit(other, 1)
    assert held is not None
    assert held.disposition is RecordType.Delayed


async def test_a_short_wait_is_slept_inline() -> None:
    lua = LuaRouter(SystemClock())  # the inline sleep is real time: the clock must move
    route = routed({"max_message_rate": "20/s"})
    for _ in range(3):
        assert await lua.admit(route, 10) is None  # 30 at 20/s: a wait well under idle_timeout
