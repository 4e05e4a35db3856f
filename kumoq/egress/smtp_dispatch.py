"""SMTP delivery through egress pools, sources and ready queues (reference §1.6-1.9).

``SmtpDispatch`` implements the queue manager's ``Deliverer`` seam for ``protocol = {smtp=...}``:

1. The scheduled queue's ``egress_pool`` (``unspecified`` by default) is fetched through the
   policy (``get_egress_pool``, cached for its ``ttl``), and a source is picked by weighted round
   robin, one state per scheduled queue (LVS, §1.6c).
2. The site name comes from ``mx_list`` or from the routing domain's MX records (§1.7); the
   ready queue ``<source>-><site>@smtp_client`` is created on first use, with its path config
   from ``get_egress_path_config`` (refreshed every ``refresh_interval``). When the path has a
   ``source_selection_rate`` (key ``kumomta.source_selection_rate.<readyq>.<source>``) or
   ``additional_source_selection_rates`` and one of them (smallest rate first) is exhausted,
   that source is skipped for this message and the round robin picks among the others; when
   every source is skipped, the attempt fails transiently ("no sources ... eligible").
3. The message waits in the ready queue's priority FIFO (``max_ready``; when full it goes back to
   its scheduled queue for a random 0-60 s, attempts not incremented), and the ready queue's
   dispatchers (``kumoq.egress.dispatcher``) deliver it. A message still waiting at its expiry
   (``max_age`` or ``set_scheduling{expires}``) gets its ``Expiration`` then, not attempted.
4. The SMTP response becomes the message's ``Attempt`` (``ReadyQueue.attempt``).
5. A ready queue with nothing in progress (no message, no dispatcher, no session) for
   ``reap_interval`` after its last message (KumoMTA's 10 minutes) is reaped with its timer,
   and so is the round-robin state of a scheduled queue the queue manager reaps
   (``queue_reaped``).

The modules below this one: ``ready_queue`` (one path and its attempts), ``dispatcher`` (the
sessions that serve a ready queue), ``connection_plan`` (the hosts to try), ``ready`` (the pure
FIFO, connection curve and throttle decisions).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
from collections.abc import Callable
from typing import Protocol

from kumoq.clock import Clock, LoopBound
from kumoq.config.egress import UNSPECIFIED, EgressPathConfig
from kumoq.config.queue import QueueConfig, SmtpProtocol
from kumoq.dns.mx_cache import MxCache, MxFailure
from kumoq.dns.resolver import Resolver
from kumoq.dns.site_name import MailExchanger
from kumoq.egress.connection_plan import Reroute
from kumoq.egress.dispatcher import CLOSE_WAIT_SECONDS, Dispatchers
from kumoq.egress.names import mx_list_site_name, ready_queue_name
from kumoq.egress.ready import expiry_deadline
from kumoq.egress.ready_queue import (
    READY_QUEUE_REAP_INTERVAL,
    SMTP_PROTO,
    QueuedMessage,
    ReadyQueue,
    ReadyRegistry,
    transient,
)
from kumoq.egress.sources import EgressSources, SourceSelector, selection_rates
from kumoq.errors import KumoqError, PolicyWouldBlock
from kumoq.logs.records import RecordType, Response
from kumoq.message import Message, parse_queue_name, priority_of
from kumoq.scheduler.admin_rules import AdminRules
from kumoq.scheduler.attempt import POLICY_WAIT_RERUNS, Attempt
from kumoq.scheduler.context import InsertReason
from kumoq.throttle import Limits, Throttle

__all__ = ["EgressPolicy", "SmtpDispatch"]

log = logging.getLogger("kumoq.egress")


class EgressPolicy(EgressSources, Protocol):
    """The policy events egress needs (kumoq.lua.events implements them through the daemon)."""

    def get_egress_path_config(
        self, routing_domain: str, source: str, site_name: str
    ) -> EgressPathConfig | None: ...


class SmtpDispatch(LoopBound):
    """``Deliverer`` for ``protocol = {smtp = ...}``: egress selection, ready queues, sessions."""

    def __init__(
        self,
        *,
        policy: EgressPolicy,
        mx: MxCache,
        resolver: Callable[[], Resolver],
        clock: Clock,
        hostname: str | None = None,
        throttle: Throttle | None = None,
        rng: random.Random | None = None,
        sources: SourceSelector | None = None,
        reap_interval: float = READY_QUEUE_REAP_INTERVAL,
        rules: AdminRules | None = None,
        reroute: Reroute | None = None,
        limits: Limits | None = None,
    ) -> None:
        self._policy = policy
        self._throttle = throttle = throttle or Throttle()
        self.rules = rules or AdminRules()
        self._mx = mx
        self._clock = clock
        self._rng = rng or random.Random()
        self._sources = sources or SourceSelector(policy, clock)
        self._ready: ReadyRegistry[ReadyQueue] = ReadyRegistry(
            clock, busy=ReadyQueue.busy, reaped=ReadyQueue.close, reap_interval=reap_interval
        )
        self._dispatchers = Dispatchers(
            resolver=resolver,
            clock=clock,
            hostname=hostname or socket.gethostname(),
            throttle=throttle,
            rng=self._rng,
            on_idle=self._idle,
            rules=self.rules,
            reroute=reroute,  # kumoq harness only (connection_plan.Reroute)
            limits=limits,
        )

    @property
    def ready_queues(self) -> ReadyRegistry[ReadyQueue]:
        """The ready queues by name (for metrics and tests)."""
        return self._ready

    def ready_counts(self) -> list[tuple[str, int]]:
        """``(ready queue name, messages in its FIFO)`` for each ready queue (``ready_count``)."""
        return [(ready.name, len(ready.fifo)) for ready in self._ready.values()]

    def connection_counts(self) -> list[tuple[str, int]]:
        """KumoMTA's ``connection_count`` services: ``smtp_client`` for all SMTP egress and
        ``smtp_client:<ready queue>`` for each; a dispatcher holds at most one session."""
        per_queue = [(f"smtp_client:{r.name}", r.dispatchers) for r in self._ready.values()]
        return [("smtp_client", sum(count for _, count in per_queue)), *per_queue]

    def queue_reaped(self, name: str) -> None:
        """The queue manager reaped the scheduled queue ``name``: forget its round robin."""
        self._sources.forget(name)

    def _idle(self, ready: ReadyQueue) -> None:
        self._ready.idle(ready.name)

    # -- the Deliverer seam -------------------------------------------------------------------

    async def deliver(self, msg: Message, config: QueueConfig) -> Attempt:
        protocol = config.protocol
        assert isinstance(protocol, SmtpProtocol)
        picked: dict[str, str | None] = {}  # the source chosen on the first run, for re-runs
        for _ in range(POLICY_WAIT_RERUNS):
            try:
                ready = await self._ready_queue_for(msg, config, protocol, picked)
                break
            except PolicyWouldBlock as wait:  # an egress event waits for kumo.dns.lookup_mx
                await wait.wait()
            except KumoqError as exc:
                return Attempt(RecordType.TransientFailure, transient(f"KumoMTA internal: {exc}"))
        else:
            return Attempt(
                RecordType.TransientFailure,
                transient("KumoMTA internal: the egress events kept waiting for DNS"),
            )
        if self.rules.any_ready_suspension and not isinstance(ready, Attempt):
            ready = await self._unsuspended(ready, msg, config, protocol)
        if not isinstance(ready, Attempt) and (
            ready.path.source_selection_rate is not None
            or ready.path.additional_source_selection_rates
        ):
            ready = await self._selectable(ready, msg, config, protocol)
        if isinstance(ready, Attempt):
            return ready
        if self._dispatchers.closing:
            raise asyncio.CancelledError  # not attempted: the message stays spooled
        future: asyncio.Future[Attempt] = self._loop.create_future()
        item = QueuedMessage(msg, future, expiry_deadline(msg, config.max_age), config.max_age)
        self._ready.touch(ready.name)
        if not ready.push(item, priority_of(msg)):
            return Attempt(
                RecordType.Delayed,
                transient("ready queue is full", 400, None),
                requeue_delay=float(self._rng.randrange(60)),
                reason=InsertReason.ReadyQueueWasFull,
            )
        self._dispatchers.spawn(ready)
        ready.idle.wake_one()
        return await future

    # -- selection ----------------------------------------------------------------------------

    async def _unsuspended(
        self, ready: ReadyQueue, msg: Message, config: QueueConfig, protocol: SmtpProtocol
    ) -> ReadyQueue | Attempt:
        """§1.6 b: a source whose ready queue is admin-suspended is skipped: the pool's next
        ones are tried; when every one is suspended, the attempt fails transiently."""
        now = self._clock.now()
        pool_name = config.egress_pool or UNSPECIFIED
        for _ in range(len(self._sources.pool(pool_name).entries)):
            if self.rules.ready_suspension_for(ready.name, now) is None:
                return ready
            try:
                found = await self._ready_queue_for(msg, config, protocol, {})
            except KumoqError:  # a DNS wait, or a failure: keep to what was picked
                break
            if isinstance(found, Attempt):
                return found
            ready = found
        if self.rules.ready_suspension_for(ready.name, now) is None:
            return ready
        return Attempt(
            RecordType.TransientFailure,
            transient(f"KumoMTA internal: no sources for {msg.queue_name()} pool=`{pool_name}` "
                      "are eligible for selection at this time"),
        )  # fmt: skip

    async def _selectable(
        self, ready: ReadyQueue, msg: Message, config: QueueConfig, protocol: SmtpProtocol
    ) -> ReadyQueue | Attempt:
        """A source whose selection rates are exhausted is skipped for this message; the next
        is picked by the round robin without it (KumoMTA's ``source_selection_rate``)."""
        pool_name = config.egress_pool or UNSPECIFIED
        candidates = {e.name for e in self._sources.pool(pool_name).entries if e.weight > 0}
        skipped: set[str] = set()
        while True:
            if await self._selection_allowed(ready):
                return ready
            skipped.add(ready.source.name)
            if candidates <= skipped:
                return Attempt(
                    RecordType.TransientFailure,
                    transient(f"KumoMTA internal: no sources for {msg.queue_name()} "
                              f"pool=`{pool_name}` are eligible for selection at this time"),
                )  # fmt: skip
            try:
                found = await self._ready_queue_for(msg, config, protocol, {}, frozenset(skipped))
            except KumoqError as exc:
                return Attempt(RecordType.TransientFailure, transient(f"KumoMTA internal: {exc}"))
            if isinstance(found, Attempt):
                return found
            ready = found

    async def _selection_allowed(self, ready: ReadyQueue) -> bool:
        for key, spec in selection_rates(ready.path, ready.name, ready.source.name):
            if (await self._throttle.throttle(key, spec, self._clock.now())).throttled:
                return False
        return True

    def describe(self, msg_id: str) -> str | None:
        """Where the message ``msg_id`` waits in egress, in words (inspect-message). O(ready
        queues + their messages)."""
        now = self._clock.now()
        for ready in self._ready.values():
            position = next(
                (i for i, item in enumerate(ready.fifo, 1) if item.msg.id == msg_id), None
            )
            held = any(item.msg.id == msg_id for item in ready.held)
            if position is None and not held:
                continue
            limit = ready.path.connection_limit.limit
            where = (
                f"number {position} of {len(ready.fifo)} in ready queue {ready.name}"
                if position is not None
                else f"taken by a connection of ready queue {ready.name}, before its transaction"
            )
            text = f"{where}; {ready.dispatchers} of {limit} connections open"
            if ready.connection_limited is not None:
                text += f"; connection limit {ready.connection_limited} reached"
            suspended = self.rules.ready_suspension_for(ready.name, now)
            if suspended is not None:
                text += f"; the ready queue is suspended: {suspended.reason}"
            if ready.failures.count:
                text += f"; {ready.failures.count} connection failures in a row"
            return text
        return None

    async def _ready_queue_for(
        self,
        msg: Message,
        config: QueueConfig,
        protocol: SmtpProtocol,
        picked: dict[str, str | None],
        exclude: frozenset[str] = frozenset(),
    ) -> ReadyQueue | Attempt:
        queue_name = msg.queue_name()
        parts = parse_queue_name(queue_name)
        routing_domain = parts.routing_domain or parts.domain
        pool_name = config.egress_pool or UNSPECIFIED
        pool = self._sources.pool(pool_name)
        if queue_name in picked:  # a re-run after a DNS wait keeps its round-robin turn
            source_name = picked[queue_name]
        else:
            source_name = picked[queue_name] = self._sources.pick(queue_name, pool, exclude)
        if source_name is None:
            return Attempt(
                RecordType.TransientFailure,
                transient(f"KumoMTA internal: no sources available for {queue_name} "
                           f"pool=`{pool_name}`"),
            )  # fmt: skip
        source = self._sources.source(source_name)
        exchanger: MailExchanger | None = None
        if protocol.mx_list:
            site = mx_list_site_name(protocol.mx_list)
        else:
            result = await self._mx.lookup_mx(routing_domain, self._clock.now())
            if isinstance(result, MxFailure):
                if result.permanent:
                    code, enhanced = result.code, tuple(int(x) for x in result.enhanced.split("."))
                    return Attempt(
                        RecordType.Bounce,
                        Response(code, enhanced, result.text, None),  # type: ignore[arg-type]
                    )
                return Attempt(
                    RecordType.TransientFailure,
                    transient(f"failed to resolve queue {queue_name}: {result.detail}"),
                )
            exchanger = result
            site = result.site_name
        name = ready_queue_name(source.name, site, SMTP_PROTO)
        ready = self._ready.get(name)
        if ready is not None:
            ready.source = source  # a refreshed source applies to the next connection
        now = self._clock.monotonic()
        if ready is None or now >= ready.path_until:
            path = (
                self._policy.get_egress_path_config(routing_domain, source.name, site)
                or EgressPathConfig()
            )
            if ready is None:
                ready = ReadyQueue(
                    name=name,
                    source=source,
                    pool=pool_name,
                    site_name=site,
                    routing_domain=routing_domain,
                    exchanger=exchanger,
                    mx_list=protocol.mx_list,
                    path=path,
                    path_until=now + path.refresh_interval,
                    clock=self._clock,
                )
                self._ready.add(name, ready)
            else:
                ready.path = path
                ready.path_until = now + path.refresh_interval
        return ready

    def expire_paths(self) -> None:
        """Every ready queue asks ``get_egress_path_config`` again at its next message (a
        policy reload)."""
        for ready in self._ready.values():
            ready.path_until = -math.inf

    async def close(self, drain_seconds: float = CLOSE_WAIT_SECONDS) -> None:
        """Stop dispatching; sessions in progress get ``drain_seconds`` to finish, then are
        aborted. Messages not delivered stay spooled for the next start (no record)."""
        self._ready.close()
        await self._dispatchers.close(list(self._ready.values()), drain_seconds)
