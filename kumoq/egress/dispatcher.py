"""The dispatchers of SMTP ready queues: connections that take messages from a ready queue.

``Dispatchers.spawn(ready)`` starts dispatchers for a ready queue up to its ideal-connection
curve, capped at ``connection_limit`` (reference §1.8). Each dispatcher pops the next message,
waits for the path's ``max_message_rate`` and, before opening a session,
``max_connection_rate`` (a short wait sleeps inline; a long one sends every waiting message
back to its scheduled queue, attempts not incremented, §3.4), then delivers over a session it
reuses for up to ``max_deliveries_per_connection`` messages and keeps idle for
``idle_timeout``. Before connecting, a dispatcher takes a lease of ``connection_limit`` (key
``kumomta.connection_limit.<readyq>``) and of every ``additional_connection_limits`` name (a
key shared by every path naming it), smallest first; refused, it ends, and the ready queue
opens no connection until a lease of that key is released (a key shared through redis: until
it tries again, after ``SHARED_LIMIT_RETRY`` at most). Before each message after the first it
extends its leases (``lease_duration``); a lease that is gone ends the connection. Before each
delivery it checks ``max_message_rate`` (key ``kumomta.max_message_rate.<readyq>``) and every
``additional_message_rate_throttles`` name, smallest rate first. A run of connection
failures (``consecutive_connection_failures_before_delay``) fails every waiting message at once.
When a dispatcher ends (its session closed), ``on_idle`` is told, so that an idle ready queue
can be reaped.

No outcome is ever stranded: an unexpected error while connecting or delivering fails the
attempt (a transient failure) rather than leaving its future unresolved, and ``close()``
cancels the attempt of every message it did not finish (it stays spooled).

A message past its deadline (``max_age`` or ``set_scheduling{expires}``) is not attempted: the
dispatcher settles it with its ``Expiration`` when it pops it or before its transaction, and
while it waits for a throttle or a connection the ready queue's expiry sweep does (it is
``held``). A transaction already started runs to its end.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable

from kumoq.clock import Clock, LoopBound
from kumoq.config.values import ThrottleSpec
from kumoq.delivery.smtp import SmtpClientSession
from kumoq.dns.resolver import Resolver
from kumoq.egress.connection_plan import Reroute, connect
from kumoq.egress.ready import RequeueQueue, SleepInline, ideal_connection_count, throttle_decision
from kumoq.egress.ready_queue import QueuedMessage, ReadyQueue, transient
from kumoq.logs.records import RecordType
from kumoq.scheduler.admin_rules import AdminRules
from kumoq.scheduler.attempt import Attempt
from kumoq.scheduler.context import InsertReason
from kumoq.throttle import Leases, Limits, Throttle, by_rate

__all__ = ["Dispatchers"]

log = logging.getLogger("kumoq.egress")

CLOSE_WAIT_SECONDS = 10.0
"""How long ``close()`` lets sessions in progress finish by default before aborting them (the
daemon passes its delivery drain, ``KUMOQ_SHUTDOWN_DELIVERY_DRAIN``)."""
ABANDON_GRACE_SECONDS = 2.0
"""How long ``close()`` waits for aborted sessions to unwind (they only drop their sockets)."""
SHARED_LIMIT_RETRY = 3.0
"""A ready queue refused by a shared (redis) connection limit tries again after the soonest
lease's expiry, at most this long (KumoMTA sleeps 3 s between attempts)..."""
SHARED_LIMIT_RETRY_MIN = 0.5
"""...and at least this long."""


class Dispatchers(LoopBound):
    """Every dispatcher task of every SMTP ready queue."""

    def __init__(
        self,
        *,
        resolver: Callable[[], Resolver],
        clock: Clock,
        hostname: str,
        throttle: Throttle,
        rng: random.Random,
        on_idle: Callable[[ReadyQueue], None] | None = None,
        rules: AdminRules | None = None,
        reroute: Reroute | None = None,
        limits: Limits | None = None,
    ) -> None:
        self._resolver = resolver
        self._limits = limits or Limits()
        self._reroute = reroute  # kumoq harness: every connection goes to the sink
        self._rules = rules or AdminRules()
        self._on_idle = on_idle
        self._clock = clock
        self._hostname = hostname
        self._throttle = throttle
        self._rng = rng
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._aborting = False  # sessions are dropped without QUIT

    def spawn(self, ready: ReadyQueue) -> None:
        """Start dispatchers for ``ready`` up to its ideal count (at least one)."""
        if self._closing or ready.connection_limited is not None:
            return
        limit = ready.path.connection_limit.limit
        ideal = min(max(ideal_connection_count(len(ready.fifo), limit), 1), limit)
        while ready.dispatchers < ideal:
            ready.dispatchers += 1
            ready.running += 1
            task = self._loop.create_task(self._dispatch(ready))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @property
    def closing(self) -> bool:
        return self._closing

    async def close(
        self, ready_queues: Iterable[ReadyQueue], drain_seconds: float = CLOSE_WAIT_SECONDS
    ) -> None:
        """Stop dispatching; let sessions in progress finish for up to ``drain_seconds``, then
        abort them. Every message not delivered (waiting in a ready queue, or in a session
        that was aborted) has its attempt cancelled: no record, it stays spooled for the next
        start. Never waits longer than ``drain_seconds + ABANDON_GRACE_SECONDS``."""
        self._closing = True
        waiting = 0
        for ready in ready_queues:
            ready.expiry.cancel()
            for it in ready.fifo.drain():
                if not it.future.done():
                    it.future.cancel()
                    waiting += 1
            ready.idle.wake_all()
        tasks = set(self._tasks)
        if not tasks and not waiting:
            return
        log.info(
            "smtp egress: %d messages waiting in ready queues stay spooled; waiting up to %gs "
            "for %d sessions", waiting, drain_seconds, len(tasks),
        )  # fmt: skip
        if not tasks:
            return
        started = asyncio.get_running_loop().time()
        _, pending = await asyncio.wait(tasks, timeout=drain_seconds)
        elapsed = asyncio.get_running_loop().time() - started
        if not pending:
            log.info("smtp egress: every session ended in %.1fs", elapsed)
            return
        log.warning(
            "smtp egress: aborting %d sessions still busy after %.1fs; their messages stay "
            "spooled and are attempted again after the restart", len(pending), elapsed,
        )  # fmt: skip
        self._aborting = True
        for task in pending:
            task.cancel()
        _, stuck = await asyncio.wait(pending, timeout=ABANDON_GRACE_SECONDS)
        if stuck:
            log.error("smtp egress: %d sessions did not end when aborted", len(stuck))

    async def _leases(self, ready: ReadyQueue) -> Leases | None:
        """The connection's leases; None (and the dispatcher is not counted any more) when a
        limit refused: a release of that key spawns the ready queue's dispatchers again."""
        path = ready.path
        wanted = [(f"kumomta.connection_limit.{ready.name}", path.connection_limit)]
        wanted.extend(path.additional_connection_limits.items())
        leases = await self._limits.acquire(wanted, path.lease_duration())
        if isinstance(leases, Leases):
            return leases
        ready.dispatchers -= 1
        ready.running -= 1
        armed = ready.connection_limited is not None  # a refusal just before this one
        ready.connection_limited = leases.key
        log.debug("ready queue %s: connection limit %s reached", ready.name, leases.key)
        told = False

        def freed() -> None:
            nonlocal told
            if told:
                return
            told = True
            ready.connection_limited = None
            if len(ready.fifo) and not self._closing:
                self.spawn(ready)
            elif self._on_idle is not None:
                self._on_idle(ready)

        self._limits.local.on_release(leases.key, id(ready), freed)
        if not armed and self._limits.is_shared(dict(wanted)[leases.key]):
            # Another node's release is not told here: try again soon (KumoMTA: every 3 s).
            retry = leases.retry_after or SHARED_LIMIT_RETRY
            delay = max(SHARED_LIMIT_RETRY_MIN, min(retry, SHARED_LIMIT_RETRY))
            asyncio.get_running_loop().call_later(delay, freed)
        return None

    async def _dispatch(self, ready: ReadyQueue) -> None:
        leases = await self._leases(ready)
        if leases is None:
            return
        try:
            await self._dispatch_leased(ready, leases)
        finally:
            await leases.release()  # first: a ready queue waiting for a slot goes first
        if len(ready.fifo) and not self._closing:
            self.spawn(ready)

    async def _dispatch_leased(self, ready: ReadyQueue, leases: Leases) -> None:
        session: SmtpClientSession | None = None
        delivered = 0
        item: QueuedMessage | None = None
        fresh = True  # the leases were just taken
        duration = ready.path.lease_duration
        try:
            while not self._closing:
                if self._rules.any_ready_suspension:
                    self._settle_if_suspended(ready)
                # KumoMTA extends the connection's leases before each message.
                if not fresh and len(ready.fifo) and not await leases.extend(duration()):
                    log.info("ready queue %s: a connection lease expired", ready.name)
                    return
                fresh = False
                item = ready.fifo.pop()
                if item is None:
                    if session is None or not await self._idle(ready):
                        return
                    continue
                if item.expire(self._clock.now()):
                    continue  # settled meanwhile, or popped past its deadline: not attempted
                # Held, it still expires on time while it waits for a throttle or a connection.
                ready.held.add(item)
                try:
                    previous, session = session, await self._session_for(ready, item, session)
                finally:
                    ready.held.discard(item)
                if session is None:
                    return  # its attempt was settled: throttled, or no connection
                if session is not previous:
                    delivered = 0
                if item.expire(self._clock.now()):
                    continue  # expired while it waited; the session serves the next one
                try:
                    outcome = await session.deliver(item.msg)
                except Exception as exc:  # a bug: fail this attempt, never strand it
                    log.exception("ready queue %s: delivery failed unexpectedly", ready.name)
                    session.abort()
                    if not item.future.done():
                        item.future.set_result(
                            Attempt(
                                RecordType.TransientFailure,
                                transient(f"KumoMTA internal: delivery failed: {exc!r}"),
                            )
                        )
                    return
                first = outcome.recipients[0]
                if not item.future.done():
                    item.future.set_result(
                        ready.attempt(first.disposition, first.response, session)
                    )
                delivered += 1
                if delivered >= ready.path.max_deliveries_per_connection or session.closed:
                    await session.quit()
                    session = None
        finally:
            ready.dispatchers -= 1
            try:
                await self._end(ready, item, session)
            finally:
                ready.running -= 1
                if self._on_idle is not None:
                    self._on_idle(ready)

    async def _idle(self, ready: ReadyQueue) -> bool:
        """A session with nothing to send waits for a message up to ``idle_timeout``: True
        when one is waiting. Woken for a message another dispatcher took first, it waits on
        until the same deadline (KumoMTA's dispatcher does)."""
        loop = self._loop
        deadline = loop.time() + ready.path.idle_timeout
        while not len(ready.fifo):
            if self._closing or not await ready.idle.wait(deadline, loop):
                return False
        return not self._closing

    def _settle_if_suspended(self, ready: ReadyQueue) -> None:
        """§1.8: a suspended ready queue hands its waiting messages back (a transient
        failure each: they wait for their next retry)."""
        suspended = self._rules.ready_suspension_for(ready.name, self._clock.now())
        if suspended is not None and len(ready.fifo):
            text = f"KumoMTA internal: ready queue {ready.name} is suspended: {suspended.reason}"
            ready.settle_all(Attempt(RecordType.TransientFailure, transient(text)))

    async def _end(
        self, ready: ReadyQueue, item: QueuedMessage | None, session: SmtpClientSession | None
    ) -> None:
        """A dispatcher ends: settle the message it held and close its session (``_dispatch``
        then starts another dispatcher if messages still wait)."""
        if item is not None:
            ready.held.discard(item)
            if not item.future.done() and self._closing:
                item.future.cancel()  # aborted at shutdown: no record, it stays spooled
            elif not item.future.done():  # a bug: fail this attempt, never strand it
                failed = transient("KumoMTA internal: the dispatcher ended unexpectedly")
                item.future.set_result(Attempt(RecordType.TransientFailure, failed))
        if session is not None:
            if self._aborting:
                session.abort()
            else:
                try:
                    await session.quit()  # bounded by rset_timeout
                except BaseException:  # cancelled at the end of the drain
                    session.abort()
                    raise

    async def _session_for(
        self, ready: ReadyQueue, item: QueuedMessage, session: SmtpClientSession | None
    ) -> SmtpClientSession | None:
        """The path's rates, then a session for ``item``: ``session`` when still usable, else
        a new one. None when ``item``'s attempt has been settled instead (a long throttle
        requeued the ready queue, or no host could be reached); the dispatcher then ends."""
        path = ready.path
        rates = list(path.additional_message_rate_throttles.items())
        if path.max_message_rate is not None:
            rates.append((f"kumomta.max_message_rate.{ready.name}", path.max_message_rate))
        for key, rate in by_rate(rates) if len(rates) > 1 else rates:
            if not await self._admit(ready, item, key, rate, InsertReason.MessageRateThrottle):
                if session is not None:
                    await session.quit()
                return None
        if item.future.done():  # it expired during an inline throttle sleep
            return session
        if session is not None and session.reusable:
            return session
        if session is not None:
            session.abort()  # the server hung up (or spoke unasked) while idle
            await session.quit()
        if path.max_connection_rate is not None and not await self._admit(
            ready, item, f"{ready.name}-connection-rate",
            path.max_connection_rate, InsertReason.ConnectionRateThrottle,
        ):  # fmt: skip
            return None
        connected = await self._connect(ready)
        if isinstance(connected, Attempt):
            if not item.future.done():  # it may have expired while connecting
                item.future.set_result(connected)
            if ready.failures.record_failure():
                self._bulk_transfail(ready)
            return None
        ready.failures.record_success()
        return connected

    async def _connect(self, ready: ReadyQueue) -> SmtpClientSession | Attempt:
        try:
            return await connect(ready, self._resolver(), self._rng, self._hostname, self._reroute)
        except Exception as exc:  # a bug: fail this attempt, never strand it
            log.exception("ready queue %s: connecting failed unexpectedly", ready.name)
            return Attempt(
                RecordType.TransientFailure,
                transient(f"KumoMTA internal: connecting failed: {exc!r}"),
            )

    async def _admit(
        self,
        ready: ReadyQueue,
        item: QueuedMessage,
        key: str,
        spec: ThrottleSpec,
        reason: InsertReason,
    ) -> bool:
        """Wait for the path throttle ``spec``: sleep inline while the wait is shorter than
        ``idle_timeout`` (checking again after each sleep), else requeue the whole ready queue
        and return False (§3.4)."""
        while True:
            result = await self._throttle.throttle(key, spec, self._clock.now())
            decision = throttle_decision(result, ready.path.idle_timeout)
            if isinstance(decision, SleepInline):
                await asyncio.sleep(decision.seconds)
                continue
            if isinstance(decision, RequeueQueue):
                # Every waiting message goes back to its scheduled queue with the delay.
                delayed = Attempt(
                    RecordType.Delayed,
                    transient("throttled", 400, None),
                    requeue_delay=decision.delay,
                    reason=reason,
                )
                ready.settle_all(delayed, first=item)
                return False
            return True

    def _bulk_transfail(self, ready: ReadyQueue) -> None:
        response = transient(
            "bulk delay of ready queue: too many successive connection failures where there "
            "was no answer from any hosts listed in MX",
            enhanced=(4, 4, 1),
        )
        ready.settle_all(ready.attempt(RecordType.TransientFailure, response))
