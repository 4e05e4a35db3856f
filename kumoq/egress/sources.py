"""Egress source selection, shared by SMTP and custom Lua delivery (reference §1.6 step 6, §2.4).

A scheduled queue's ``egress_pool`` names a pool (``get_egress_pool``); each message picks one
of its sources by weighted round robin (the LVS algorithm, ``kumoq.egress.round_robin``), with one
round-robin state per scheduled queue; the chosen source (``get_egress_source``) names the
ready queue ``<source>-><site>@<protocol>``. Pools and sources are cached for their ``ttl``.
A scheduled queue's round-robin state is dropped when the queue manager reaps the queue
(``forget``, through the dispatchers' ``queue_reaped``).
The built-in pool and source ``unspecified`` need no event.

The events are called synchronously, so they may raise ``PolicyWouldBlock`` (a handler
waiting for ``kumo.dns.lookup_mx``); callers await its ``wait()`` and call again.

``selection_rates`` lists a path's source selection rates with their throttle keys, smallest
rate first: a source whose rates are exhausted is skipped (SMTP and custom Lua delivery).

L2: imports kumoq.config, kumoq.egress.round_robin, kumoq.throttle (``by_rate``) and
kumoq.clock; no IO.
"""

from __future__ import annotations

from collections.abc import Callable, Set
from dataclasses import dataclass
from typing import Any, Protocol, final

from kumoq.clock import Clock
from kumoq.config.egress import (
    UNSPECIFIED,
    UNSPECIFIED_POOL,
    UNSPECIFIED_SOURCE,
    EgressPathConfig,
    EgressPool,
    EgressSource,
)
from kumoq.config.values import ThrottleSpec
from kumoq.egress.round_robin import WeightedRoundRobin
from kumoq.throttle import by_rate

__all__ = ["EgressSources", "SourceSelector", "selection_rates"]


class EgressSources(Protocol):
    """The pool and source events (the daemon's ``_PolicyEgress`` has them)."""

    def get_egress_pool(self, name: str) -> EgressPool: ...

    def get_egress_source(self, name: str) -> EgressSource: ...


@dataclass(slots=True)
class _Cached:
    value: Any
    until: float


@final
class SourceSelector:
    """Pools and sources through the policy, cached for their ``ttl``; weighted round robin
    per scheduled queue."""

    def __init__(self, policy: EgressSources, clock: Clock) -> None:
        self._policy = policy
        self._clock = clock
        self._pools: dict[str, _Cached] = {}
        self._sources: dict[str, _Cached] = {}
        self._rr: dict[str, tuple[tuple[tuple[str, int], ...], WeightedRoundRobin]] = {}

    def pool(self, name: str) -> EgressPool:
        if name == UNSPECIFIED:
            return UNSPECIFIED_POOL
        pool: EgressPool = self._cached(self._pools, name, self._policy.get_egress_pool)
        return pool

    def source(self, name: str) -> EgressSource:
        if name == UNSPECIFIED:
            return UNSPECIFIED_SOURCE
        source: EgressSource = self._cached(self._sources, name, self._policy.get_egress_source)
        return source

    def pick(
        self, queue_name: str, pool: EgressPool, exclude: Set[str] = frozenset()
    ) -> str | None:
        """The next source of ``pool`` for the scheduled queue ``queue_name``, skipping
        ``exclude``; None when every other weight is 0. A changed pool restarts the queue's
        round robin."""
        entries = tuple((e.name, e.weight) for e in pool.entries)
        state = self._rr.get(queue_name)
        if state is None or state[0] != entries:
            state = (entries, WeightedRoundRobin(entries))
            self._rr[queue_name] = state
        return state[1].next(exclude)

    def expire(self) -> None:
        """Forget every cached pool and source (a policy reload): the next use asks again."""
        self._pools.clear()
        self._sources.clear()

    def forget(self, queue_name: str) -> None:
        """Drop a scheduled queue's round-robin state (when the queue is reaped)."""
        self._rr.pop(queue_name, None)

    def _cached(self, table: dict[str, _Cached], name: str, fetch: Callable[[str], Any]) -> Any:
        now = self._clock.monotonic()
        hit = table.get(name)
        if hit is not None and now < hit.until:
            return hit.value
        value = fetch(name)
        table[name] = _Cached(value, now + float(getattr(value, "ttl", 60.0)))
        return value


def selection_rates(
    path: EgressPathConfig, ready_queue: str, source: str
) -> list[tuple[str, ThrottleSpec]]:
    """The path's ``source_selection_rate`` (key
    ``kumomta.source_selection_rate.<ready queue>.<source>``) and
    ``additional_source_selection_rates`` (their own keys), smallest rate first."""
    rates = list(path.additional_source_selection_rates.items())
    if path.source_selection_rate is not None:
        key = f"kumomta.source_selection_rate.{ready_queue}.{source}"
        rates.append((key, path.source_selection_rate))
    return by_rate(rates)
