"""Throttles and connection limits shared through redis (``kumo.configure_redis_throttles``).

``RedisThrottles`` is both seams of kumoq.throttle: ``SharedThrottleBackend`` (``check_async``)
and ``SharedLimitBackend`` (``acquire_async``, ``extend_async``, ``release_async``). Keys,
arguments and answers are KumoMTA's, so kumoq and KumoMTA nodes can share one redis:

- A throttle check runs ``CL.THROTTLE key max_burst limit period quantity`` when the server has
  redis-cell (``COMMAND INFO CL.THROTTLE`` answers something at connect), else ``GCRA_SCRIPT``
  (through EVALSHA, loaded again if the server forgot it): the formula of kumoq.throttle on the
  redis clock's whole seconds, the ``tat`` stored under the key with ``EX reset_after``. Its
  result's ``limit`` is ``max_burst + 1``, as KumoMTA reports it.
- A connection-limit lease is a member (a uuid4) of the sorted set ``key``, scored by its
  expiry in unix seconds: ``LEASE_SCRIPT`` drops the expired ones and adds one if fewer than
  ``limit`` remain, else answers the whole seconds until the soonest expires. ``extend_async``
  is ``ZADD key XX CH expires uuid``, ``release_async`` is ``ZREM``.

Redis down: every method answers None (and counts ``redis_throttle_fallbacks_total{kind}``),
and kumoq.throttle decides locally. Each call is bounded by ``response_timeout``
(``CALL_TIMEOUT``, 5 s, when unset): a redis that accepts connections and never answers is
down too. The first failure logs one WARNING and sets ``redis_throttles_connected`` to 0;
from then on redis is asked again at most every ``retry_every`` seconds, by a ``PING`` in the
background (no caller waits for it), and the first answer logs INFO and shares again. A
lease that could not be released is released when redis answers again (else it would hold
its slot until it expires).

``open_shared_throttles`` is what the daemon calls: the ``Throttle`` and ``Limits`` every part
of the process shares, through redis when the policy configured it.

L1 (IO adapter): imports redis-py, kumoq.throttle, kumoq.config and kumoq.metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar, final
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.cluster import LoadBalancingStrategy
from redis.exceptions import RedisError

from kumoq.config.redis import RedisThrottleConfig
from kumoq.config.values import LimitSpec, ThrottleSpec
from kumoq.metrics import REDIS_THROTTLE_FALLBACKS, REDIS_THROTTLES_CONNECTED
from kumoq.throttle import Limits, Refused, Throttle, ThrottleResult, throttle_key

__all__ = [
    "GCRA_SCRIPT",
    "LEASE_SCRIPT",
    "RETRY_EVERY",
    "RedisLease",
    "RedisThrottles",
    "SharedThrottles",
    "open_shared_throttles",
]

log = logging.getLogger("kumoq.throttle")

T = TypeVar("T")

RETRY_EVERY: Final = 1.0
"""While redis does not answer, it is tried again at most this often (seconds)."""

CALL_TIMEOUT: Final = 5.0
"""How long one call to redis may take (the start's probe included) when the policy sets no
``response_timeout``: past it the call falls back, so a redis that accepts connections and
never answers neither holds the start nor stops mail."""


def _script(name: str) -> str:
    """A script run inside redis: kumoq/lua/redis/<name> (Lua lives in .lua files; these are
    not policy chunks, so they sit apart from kumoq.lua's)."""
    return (Path(__file__).parent / "lua" / "redis" / name).read_text(encoding="utf-8")


GCRA_SCRIPT: Final = _script("gcra.lua")

LEASE_SCRIPT: Final = _script("lease.lua")

_ERRORS: Final = (RedisError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class RedisLease:
    """A lease held in redis: the member of the key's sorted set."""

    uuid: str


def _client(config: RedisThrottleConfig) -> Redis | RedisCluster:
    """A pooled client; no retries of its own (a failure falls back at once)."""
    no_retry = Retry(NoBackoff(), 0)
    if config.is_cluster:
        nodes = [ClusterNode(u.hostname or "", u.port or 6379) for u in map(urlsplit, config.node)]
        return RedisCluster(
            startup_nodes=nodes,
            # redis-py's name for read_from_replicas (the old keyword is deprecated)
            load_balancing_strategy=(
                LoadBalancingStrategy.ROUND_ROBIN if config.read_from_replicas else None
            ),
            username=config.username,
            password=config.password,
            max_connections=config.pool_size,
            socket_connect_timeout=config.connect_timeout,
            socket_timeout=config.response_timeout,
            retry=no_retry,
            ssl=any(node.startswith("rediss:") for node in config.node),
        )
    pool = BlockingConnectionPool.from_url(
        config.node[0],
        max_connections=config.pool_size,
        timeout=config.wait_timeout,
        socket_connect_timeout=config.connect_timeout,
        socket_timeout=config.response_timeout,
        retry=no_retry,
    )
    return Redis.from_pool(pool)  # closed with the client


@final
class RedisThrottles:
    """The redis of ``kumo.configure_redis_throttles``; ``await connect()`` first (it never
    raises: unreachable, it starts in fallback), ``await close()`` at the end.

    ``wall`` (unix seconds) dates leases, ``monotonic`` spaces the retries while redis is down.
    """

    def __init__(
        self,
        config: RedisThrottleConfig,
        *,
        retry_every: float = RETRY_EVERY,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._client = _client(config)
        self._gcra = self._client.register_script(GCRA_SCRIPT)
        self._lease = self._client.register_script(LEASE_SCRIPT)
        self._retry_every = retry_every
        self._wall = wall
        self._monotonic = monotonic
        self.has_redis_cell = False
        self._down = True  # until connect() has an answer
        self._warned = False
        self._probing: asyncio.Task[None] | None = None  # a probe while down, in the background
        self._next_try = 0.0
        self._unreleased: set[tuple[str, str]] = set()
        self._bound = config.response_timeout or CALL_TIMEOUT

    @property
    def connected(self) -> bool:
        return not self._down

    async def connect(self) -> bool:
        """Ask redis (and whether it has redis-cell); False, logged, when it does not answer
        within ``response_timeout`` (``CALL_TIMEOUT`` when unset)."""
        try:
            async with asyncio.timeout(self._bound):
                await self._probe()
        except _ERRORS as exc:
            self._went_down(exc)
            return False
        self._came_up(first=True)
        return True

    async def close(self) -> None:
        probing, self._probing = self._probing, None
        if probing is not None:
            probing.cancel()
            await asyncio.wait((probing,))
        await self._client.aclose()
        REDIS_THROTTLES_CONNECTED.set(0)

    async def check_async(
        self, key: str, spec: ThrottleSpec, now: float, quantity: int = 1
    ) -> ThrottleResult | None:
        """The GCRA check of ``key`` in redis (``now`` is not used: redis's clock is)."""
        burst = spec.limit if spec.max_burst is None else spec.max_burst
        stored = throttle_key(key, spec)

        async def cell() -> ThrottleResult:
            args = (stored, burst, spec.limit, spec.period, quantity)
            got = [int(v) for v in await self._client.execute_command("CL.THROTTLE", *args)]
            retry = float(got[3]) if got[3] > 0 else None
            return ThrottleResult(got[0] != 0, got[1], max(got[2], 0), float(got[4]), retry)

        async def script() -> ThrottleResult:
            args = (spec.limit, spec.period, burst, quantity)
            got = await self._gcra(keys=[stored], args=args)
            throttled, remaining, reset_after, retry_after = (int(v) for v in got[:4])
            retry = float(retry_after) if retry_after > 0 else None
            return ThrottleResult(
                throttled == 1, burst + 1, max(remaining, 0), float(reset_after), retry
            )

        return await self._run("throttle", cell if self.has_redis_cell else script)

    async def acquire_async(
        self, key: str, spec: LimitSpec, duration: float
    ) -> RedisLease | Refused | None:
        """A lease of ``key`` expiring ``duration`` s from now, or Refused with the seconds
        until the soonest lease of ``key`` expires."""

        async def acquire() -> RedisLease | Refused:
            lease = RedisLease(str(uuid.uuid4()))
            now = self._wall()
            args = (repr(now), repr(now + duration), spec.limit, lease.uuid)
            got = await self._lease(keys=[key], args=args)
            if isinstance(got, int | float):
                return Refused(key, max(float(got), 0.0))
            return lease

        return await self._run("lease", acquire)

    async def extend_async(self, key: str, lease: object, duration: float) -> bool | None:
        """``ZADD key XX CH`` the lease's new expiry; False when the lease is gone."""
        assert isinstance(lease, RedisLease)

        async def extend() -> bool:
            expires = self._wall() + duration
            changed = await self._client.zadd(key, {lease.uuid: expires}, xx=True, ch=True)
            return changed == 1 or await self._client.zscore(key, lease.uuid) is not None

        return await self._run("extend", extend)

    async def release_async(self, key: str, lease: object) -> None:
        """``ZREM`` the lease; kept to be released when redis answers again if it does not."""
        assert isinstance(lease, RedisLease)

        async def release() -> bool:
            await self._client.zrem(key, lease.uuid)
            return True

        if await self._run("release", release) is None:
            self._unreleased.add((key, lease.uuid))

    async def _run(self, kind: str, op: Callable[[], Awaitable[T]]) -> T | None:
        """``op()``'s answer, or None (counted) when redis does not answer."""
        if self._down:
            if self._probing is None and self._monotonic() >= self._next_try:
                self._probing = asyncio.ensure_future(self._reprobe())
            REDIS_THROTTLE_FALLBACKS.labels(kind).inc()
            return None
        try:
            async with asyncio.timeout(self._bound):
                return await op()
        except _ERRORS as exc:
            self._went_down(exc)
            REDIS_THROTTLE_FALLBACKS.labels(kind).inc()
            return None

    async def _reprobe(self) -> None:
        """Ask redis again while it is down (in the background: no caller waits for it)."""
        try:
            async with asyncio.timeout(self._bound):
                await self._probe()
        except _ERRORS as exc:
            self._went_down(exc)
        else:
            self._came_up(first=False)
            await self._release_unreleased()
        finally:
            self._probing = None

    async def _probe(self) -> None:
        """PING, then whether the server has redis-cell (KumoMTA asks ``COMMAND INFO``)."""
        await self._client.ping()
        # One word for redis-py ("COMMAND" alone would be parsed, and fail on a nil).
        # A cluster client must be told where a keyless command goes: any node will do.
        where = (
            {"target_nodes": RedisCluster.RANDOM} if isinstance(self._client, RedisCluster) else {}
        )
        info: Any = await self._client.execute_command("COMMAND INFO", "CL.THROTTLE", **where)
        self.has_redis_cell = isinstance(info, list) and any(v for v in info)

    async def _release_unreleased(self) -> None:
        for key, member in list(self._unreleased):
            try:
                async with asyncio.timeout(self._bound):
                    await self._client.zrem(key, member)
            except _ERRORS:
                return  # the rest when redis answers again after its next outage, or expired
            self._unreleased.discard((key, member))

    def _went_down(self, exc: BaseException) -> None:
        self._next_try = self._monotonic() + self._retry_every
        if self._down and self._warned:
            return
        self._down = True
        self._warned = True
        REDIS_THROTTLES_CONNECTED.set(0)
        log.warning(
            "redis throttles: %s does not answer (%s); throttles and connection limits are "
            "kept in this process until it does (tried again every %gs)",
            self.config.describe(), str(exc) or type(exc).__name__, self._retry_every,
        )  # fmt: skip

    def _came_up(self, *, first: bool) -> None:
        self._down = False
        self._warned = False
        REDIS_THROTTLES_CONNECTED.set(1)
        how = "redis-cell CL.THROTTLE" if self.has_redis_cell else "the GCRA script"
        if first:
            log.info(
                "redis throttles: throttles and connection limits are shared through %s (%s)",
                self.config.describe(), how,
            )  # fmt: skip
        else:
            log.info(
                "redis throttles: %s answers again; throttles and connection limits are "
                "shared again (%s)", self.config.describe(), how,
            )  # fmt: skip


class SharedBackend(Protocol):
    """What shares the state (redis, or the workers' files of kumoq.worker_limits)."""

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SharedThrottles:
    """The process's throttle state and connection limits; ``backend`` when shared."""

    throttle: Throttle
    limits: Limits
    backend: SharedBackend | None = None

    async def close(self) -> None:
        if self.backend is not None:
            await self.backend.close()


async def open_shared_throttles(
    config: RedisThrottleConfig | None, throttle: Throttle
) -> SharedThrottles:
    """``throttle`` and fresh ``Limits``, both shared through redis when ``config`` is given
    (connected now; an unreachable redis is logged and tried again later, never fatal)."""
    if config is None:
        return SharedThrottles(throttle, Limits())
    backend = RedisThrottles(config)
    await backend.connect()
    shared = Throttle(local=throttle.local, shared=backend)
    return SharedThrottles(shared, Limits(shared=backend), backend)
