"""kumoq.redis_throttles against a real redis-server (the ``redis_server`` fixture).

GCRA parity with the local backend (on redis's whole-second clock), redis-cell detection on a
vanilla redis, connection-limit leases (limit, refusal with its hint, extend, release, expiry),
and the fallback to the process while redis is stopped, with its metrics and one warning."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from kumoq.config.redis import RedisThrottleConfig
from kumoq.config.values import LimitSpec, ThrottleSpec
from kumoq.metrics import REGISTRY
from kumoq.redis_throttles import (
    CALL_TIMEOUT,
    RedisLease,
    RedisThrottles,
    open_shared_throttles,
)
from kumoq.throttle import Leases, LocalThrottleBackend, Refused, Throttle, ThrottleResult
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration


def spec(text: str) -> ThrottleSpec:
    return ThrottleSpec.parse("t", text)


def config(url: str) -> RedisThrottleConfig:
    return RedisThrottleConfig.from_mapping({"node": url, "connect_timeout": "2s"})


@pytest.fixture
async def backend(redis_server: RedisServer) -> AsyncIterator[RedisThrottles]:
    started = RedisThrottles(config(redis_server.url), retry_every=0.2)
    assert await started.connect()
    yield started
    await started.close()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def fallbacks(kind: str) -> float:
    return REGISTRY.get_sample_value("redis_throttle_fallbacks_total", {"kind": kind}) or 0.0


def connected() -> float | None:
    return REGISTRY.get_sample_value("redis_throttles_connected")


def without_limit(result: ThrottleResult) -> tuple[object, ...]:
    return (result.throttled, result.remaining, result.reset_after, result.retry_after)


@pytest.mark.parametrize("text", ["4/s", "10/min", "8/min,max_burst=2", "1/h"])
async def test_the_gcra_script_matches_the_local_backend_on_whole_seconds(
    backend: RedisThrottles, raw: Redis, text: str
) -> None:
    rate = spec(text)
    burst = rate.limit if rate.max_burst is None else rate.max_burst
    for attempt in range(5):  # again if redis's second ticks over during a round
        key = f"parity-{text}-{attempt}"
        local = LocalThrottleBackend()
        before = (await raw.time())[0]
        pairs = []
        for _ in range(burst + 3):
            shared = await backend.check_async(key, rate, 0.0)
            assert shared is not None
            pairs.append((shared, local.check(key, rate, float(before))))
        if (await raw.time())[0] != before:
            continue
        for shared, mine in pairs:
            assert without_limit(shared) == without_limit(mine)
            assert shared.limit == burst + 1  # as KumoMTA's script reports it
        assert [s.throttled for s, _ in pairs] == [False] * burst + [True] * 3
        assert all(s.retry_after is not None and s.retry_after >= 1 for s, _ in pairs[burst:])
        stored = await raw.get(f"{key}:{rate.limit}:{burst}:{rate.period}")
        assert stored is not None  # KumoMTA's key: one redis serves kumoq and KumoMTA nodes
        assert 0 < await raw.ttl(f"{key}:{rate.limit}:{burst}:{rate.period}") <= rate.period
        return
    pytest.fail("redis's clock ticked over during every round")


async def test_a_vanilla_redis_has_no_redis_cell(backend: RedisThrottles) -> None:
    assert backend.has_redis_cell is False


async def test_leases_up_to_the_limit_then_refused_with_a_hint(
    backend: RedisThrottles, raw: Redis
) -> None:
    limit = LimitSpec(3)
    leases = [
        await backend.acquire_async("kumomta.connection_limit.q", limit, 60) for _ in range(3)
    ]
    assert all(isinstance(lease, RedisLease) for lease in leases)
    refused = await backend.acquire_async("kumomta.connection_limit.q", limit, 60)
    assert isinstance(refused, Refused)
    assert refused.key == "kumomta.connection_limit.q"
    assert refused.retry_after is not None
    assert 55 <= refused.retry_after <= 62
    assert await raw.zcard("kumomta.connection_limit.q") == 3

    first = leases[0]
    before = await raw.zscore("kumomta.connection_limit.q", first.uuid)  # type: ignore[union-attr]
    assert await backend.extend_async("kumomta.connection_limit.q", first, 600) is True
    after = await raw.zscore("kumomta.connection_limit.q", first.uuid)  # type: ignore[union-attr]
    assert before is not None
    assert after is not None
    assert after > before + 500

    await backend.release_async("kumomta.connection_limit.q", first)
    assert await raw.zcard("kumomta.connection_limit.q") == 2
    assert await backend.extend_async("kumomta.connection_limit.q", first, 600) is False
    again = await backend.acquire_async("kumomta.connection_limit.q", limit, 60)
    assert isinstance(again, RedisLease)


async def test_a_lease_not_extended_expires(backend: RedisThrottles) -> None:
    limit = LimitSpec(1)
    assert isinstance(await backend.acquire_async("short", limit, 1), RedisLease)
    assert isinstance(await backend.acquire_async("short", limit, 1), Refused)
    started = time.monotonic()
    while not isinstance(await backend.acquire_async("short", limit, 60), RedisLease):
        assert time.monotonic() - started < 10, "the unextended lease never expired"
        await asyncio.sleep(0.25)


async def test_limits_and_leases_through_redis(redis_server: RedisServer, raw: Redis) -> None:
    shared = await open_shared_throttles(config(redis_server.url), Throttle())
    try:
        wanted = [("kumomta.connection_limit.q", LimitSpec(2)), ("pool", LimitSpec(1))]
        held = await shared.limits.acquire(wanted, 30)
        assert isinstance(held, Leases)
        assert held.keys == ["pool", "kumomta.connection_limit.q"]
        assert await raw.zcard("pool") == 1
        refused = await shared.limits.acquire(wanted, 30)
        assert isinstance(refused, Refused)
        assert refused.key == "pool"
        assert await raw.zcard("kumomta.connection_limit.q") == 1  # nothing kept
        assert await held.extend(60) is True
        await held.release()
        assert await raw.zcard("pool") == 0
        assert await raw.zcard("kumomta.connection_limit.q") == 0
        local = await shared.limits.acquire([("mine", LimitSpec.parse("l", "local:1"))], 30)
        assert isinstance(local, Leases)
        assert await raw.exists("mine") == 0
        assert shared.limits.local.held("mine") == 1
        await local.release()
    finally:
        await shared.close()


async def test_redis_down_falls_back_to_the_process_and_resumes(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kumoq.throttle")
    shared = await open_shared_throttles(config(redis_server.url), Throttle())
    backend = shared.backend
    assert isinstance(backend, RedisThrottles)
    assert backend is not None
    try:
        rate = spec("2/h")
        assert connected() == 1
        assert not (await shared.throttle.throttle("k", rate, 1000.0)).throttled  # in redis
        redis_server.stop()
        throttles, leases = fallbacks("throttle"), fallbacks("lease")
        # The local state starts empty: 2 admitted, the 3rd throttled, on the local clock.
        results = [await shared.throttle.throttle("k", rate, 1000.0) for _ in range(3)]
        assert [r.throttled for r in results] == [False, False, True]
        assert results[2].wait is not None  # the local backend's exact wait
        assert fallbacks("throttle") == throttles + 3
        assert connected() == 0
        held = await shared.limits.acquire([("conn", LimitSpec(1))], 30)
        assert isinstance(held, Leases)  # a local lease
        assert shared.limits.local.held("conn") == 1
        assert isinstance(await shared.limits.acquire([("conn", LimitSpec(1))], 30), Refused)
        assert await held.extend(30) is True
        await held.release()  # released locally
        assert shared.limits.local.held("conn") == 0
        assert fallbacks("lease") >= leases + 2
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings  # one per outage, not one per call
        assert "does not answer" in warnings[0].getMessage()

        redis_server.start()
        deadline = time.monotonic() + 10
        while (await backend.check_async("k2", rate, 1000.0)) is None:
            assert time.monotonic() < deadline, "sharing never resumed"
            await asyncio.sleep(0.1)
        assert connected() == 1
        assert any("answers again" in r.getMessage() for r in caplog.records)
        lease = await shared.limits.acquire([("conn", LimitSpec(1))], 30)
        assert isinstance(lease, Leases)
        assert shared.limits.local.held("conn") == 0
        await lease.release()
    finally:
        await shared.close()


async def test_while_down_redis_is_tried_at_most_every_retry_interval(
    redis_server: RedisServer,
) -> None:
    redis_server.stop()
    backend = RedisThrottles(config(redis_server.url), retry_every=30.0)
    try:
        assert await backend.connect() is False
        redis_server.start()
        # Redis answers again, but the next try is 30 s away: every call falls back at once.
        assert await backend.check_async("k", spec("1/s"), 0.0) is None
        assert await backend.acquire_async("k", LimitSpec(1), 10) is None
    finally:
        await backend.close()


@pytest.fixture
async def silent_redis() -> AsyncIterator[str]:
    """A server that accepts connections and never answers (a hung redis, or another service
    on its port): the URL to reach it."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"redis://127.0.0.1:{port}/"
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_a_redis_that_never_answers_is_down_after_the_call_timeout(
    silent_redis: str,
) -> None:
    # No response_timeout: the start still ends, after CALL_TIMEOUT, in the fallback.
    backend = RedisThrottles(config(silent_redis), retry_every=0.2)
    try:
        assert await asyncio.wait_for(backend.connect(), CALL_TIMEOUT * 4) is False
        assert not backend.connected
        assert connected() == 0
    finally:
        await backend.close()


async def test_while_redis_hangs_no_check_waits_for_it(silent_redis: str) -> None:
    hung = RedisThrottleConfig.from_mapping({"node": silent_redis, "response_timeout": "30s"})
    backend = RedisThrottles(hung, retry_every=0.0)
    throttles = fallbacks("throttle")
    try:
        for _ in range(3):  # not connected yet: down, as after a failed start
            # The probe of the hung redis runs in the background: each check falls back now.
            got = await asyncio.wait_for(backend.check_async("k", spec("1/s"), 0.0), 5.0)
            assert got is None
            lease = await asyncio.wait_for(backend.acquire_async("k", LimitSpec(1), 10), 5.0)
            assert lease is None
        assert fallbacks("throttle") == throttles + 3
    finally:
        await backend.close()  # cancels the probe that is still waiting
