"""Where a custom Lua message goes: its egress source and ready queue (reference §1.6).

As for SMTP, the scheduled queue's ``egress_pool`` (``unspecified`` without one) gives the
source, by the pool's weighted round robin (``SourceSelector``), and the source names the ready
queue ``<source>-><routing_domain>@lua:<constructor>``: without an MX site, KumoMTA's site name
for a custom protocol is the routing domain.

The ready queue's path config comes from ``get_egress_path_config(routing_domain, source,
routing_domain)``, as KumoMTA asks it for every protocol, cached for its ``refresh_interval``
(and asked again after a policy reload, ``expire_paths``). Of its keys, custom Lua delivery
applies the message rates (``admit``: ``max_message_rate`` and
``additional_message_rate_throttles``, before each call, as SMTP's dispatcher does before each
message) and the source selection rates: when the path has a ``source_selection_rate`` (key
``kumomta.source_selection_rate.<ready queue>.<source>``) or
``additional_source_selection_rates`` and one of them (smallest rate first) is exhausted, the
source is skipped for this message and the round robin picks among the others; when every
source of the pool is skipped, the attempt fails transiently ("no sources ... are eligible for
selection at this time"), as KumoMTA's does. The checks go through ``Throttle``, so they are
shared through redis when the policy configured it.

An egress event that waits for DNS (``PolicyWouldBlock``) is called again (bounded), keeping
the source it was given.

L2: imports kumoq.config, kumoq.egress.sources/ready, kumoq.throttle, kumoq.clock and the
queue manager's ``Attempt``; never kumoq.lua (the policy comes in through ``EgressPathPolicy``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol, TypeVar, final

from kumoq.clock import Clock
from kumoq.config.egress import UNSPECIFIED, EgressPathConfig
from kumoq.egress.ready import RequeueQueue, SleepInline, throttle_decision
from kumoq.egress.sources import SourceSelector, selection_rates
from kumoq.errors import KumoqError, PolicyWouldBlock
from kumoq.logs.records import RecordType, Response
from kumoq.message import QueueNameParts
from kumoq.scheduler.attempt import POLICY_WAIT_RERUNS, Attempt
from kumoq.scheduler.context import InsertReason
from kumoq.throttle import Throttle, by_rate

__all__ = ["EgressPathPolicy", "LuaRoute", "LuaRouter", "lua_failure"]

T = TypeVar("T")


class EgressPathPolicy(Protocol):
    """The path event custom Lua delivery asks (the daemon's ``PolicyEgress`` has it)."""

    def get_egress_path_config(
        self, routing_domain: str, source: str, site_name: str
    ) -> EgressPathConfig | None: ...


@dataclass(frozen=True, slots=True)
class LuaRoute:
    """Where a message goes: its queue's parts (for the constructor), the egress pool and
    source it was given (for the records) and the ready queue they name."""

    parts: QueueNameParts
    pool: str
    source: str
    ready_queue: str
    path: EgressPathConfig | None = None  # None: no policy asked, no rate applies


def lua_failure(content: str) -> Attempt:
    """A message that could not be given a ready queue: a transient failure, as for SMTP."""
    response = Response(451, (4, 4, 4), content, None)
    return Attempt(RecordType.TransientFailure, response, delivery_protocol="Lua")


@final
class LuaRouter:
    """Picks each custom Lua message's source and ready queue, applying the path's source
    selection rates. ``sources`` None: every message uses the source ``unspecified``;
    ``policy`` None: no path config is asked, so no selection rate applies."""

    def __init__(
        self,
        clock: Clock,
        *,
        sources: SourceSelector | None = None,
        policy: EgressPathPolicy | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        self._clock = clock
        self._sources = sources
        self._policy = policy
        self._throttle = throttle or Throttle()
        self._paths: dict[str, tuple[EgressPathConfig, float]] = {}  # ready queue -> until

    async def route(
        self, queue_name: str, parts: QueueNameParts, pool_name: str, constructor: str
    ) -> LuaRoute | Attempt:
        routing_domain = parts.routing_domain or parts.domain
        skipped: set[str] = set()
        while True:
            picked: list[str | None] = []  # a re-run after a DNS wait keeps its turn
            source = await self._rerun(partial(self._pick, queue_name, pool_name, skipped, picked))
            if isinstance(source, Attempt):
                return source
            name = f"{source}->{routing_domain}@lua:{constructor}"
            path = await self._rerun(partial(self._path, name, routing_domain, source))
            if isinstance(path, Attempt):
                return path
            if path is None or await self._selection_allowed(path, name, source):
                return LuaRoute(parts, pool_name, source, name, path)
            skipped.add(source)
            candidates = await self._rerun(partial(self._candidates, pool_name))
            if isinstance(candidates, Attempt):
                return candidates
            if candidates <= skipped:
                return lua_failure(
                    f"KumoMTA internal: no sources for {queue_name} pool=`{pool_name}` "
                    "are eligible for selection at this time"
                )

    async def admit(self, route: LuaRoute, count: int) -> Attempt | None:
        """The path's ``max_message_rate`` (key ``kumomta.max_message_rate.<ready queue>``) and
        ``additional_message_rate_throttles``, smallest rate first, once for each of ``count``
        messages about to go out together: None once every one admits them (after sleeping
        while a wait is shorter than the path's ``idle_timeout``), else their ``Delayed``
        attempt, back to the scheduled queue for the wait (``MessageRateThrottle``)."""
        path = route.path
        if path is None:
            return None
        rates = list(path.additional_message_rate_throttles.items())
        if path.max_message_rate is not None:
            rates.append((f"kumomta.max_message_rate.{route.ready_queue}", path.max_message_rate))
        for key, spec in by_rate(rates):
            for _ in range(count):
                while True:
                    result = await self._throttle.throttle(key, spec, self._clock.now())
                    decision = throttle_decision(result, path.idle_timeout)
                    if isinstance(decision, SleepInline):
                        await asyncio.sleep(decision.seconds)
                    elif isinstance(decision, RequeueQueue):
                        return Attempt(
                            RecordType.Delayed,
                            Response(400, None, "throttled", None),
                            delivery_protocol="Lua",
                            requeue_delay=decision.delay,
                            reason=InsertReason.MessageRateThrottle,
                        )
                    else:
                        break
        return None

    def forget(self, ready_queue: str) -> None:
        """The ready queue was reaped: its path config is asked again at its next message."""
        self._paths.pop(ready_queue, None)

    def expire_paths(self) -> None:
        """Every ready queue asks ``get_egress_path_config`` again (a policy reload)."""
        self._paths.clear()

    # -- helpers ----------------------------------------------------------------------------

    async def _rerun(self, call: Callable[[], T | Attempt]) -> T | Attempt:
        """``call()``, again after each answer it waited for (bounded); a policy error is a
        transient failure of this attempt."""
        for _ in range(POLICY_WAIT_RERUNS):
            try:
                return call()
            except PolicyWouldBlock as wait:
                await wait.wait()
            except KumoqError as exc:
                return lua_failure(f"KumoMTA internal: {exc}")
        return lua_failure("KumoMTA internal: the egress events kept waiting for DNS")

    def _pick(
        self, queue_name: str, pool_name: str, skipped: set[str], picked: list[str | None]
    ) -> str | Attempt:
        if self._sources is None or pool_name == UNSPECIFIED:
            return UNSPECIFIED
        pool = self._sources.pool(pool_name)
        if not picked:
            picked.append(self._sources.pick(queue_name, pool, frozenset(skipped)))
        source = picked[0]
        if source is None:
            return lua_failure(
                f"KumoMTA internal: no sources available for {queue_name} pool=`{pool_name}`"
            )
        self._sources.source(source)  # the source must exist (get_egress_source)
        return source

    def _candidates(self, pool_name: str) -> set[str]:
        if self._sources is None or pool_name == UNSPECIFIED:
            return {UNSPECIFIED}
        return {e.name for e in self._sources.pool(pool_name).entries if e.weight > 0}

    def _path(self, name: str, routing_domain: str, source: str) -> EgressPathConfig | None:
        if self._policy is None:
            return None
        now = self._clock.monotonic()
        cached = self._paths.get(name)
        if cached is not None and now < cached[1]:
            return cached[0]
        path = self._policy.get_egress_path_config(routing_domain, source, routing_domain)
        path = path or EgressPathConfig()
        self._paths[name] = (path, now + path.refresh_interval)
        return path

    async def _selection_allowed(self, path: EgressPathConfig, name: str, source: str) -> bool:
        for key, spec in selection_rates(path, name, source):
            if (await self._throttle.throttle(key, spec, self._clock.now())).throttled:
                return False
        return True
