"""The dispatchers of SMTP ready queues: connections that take messages from a ready queue.

``Dispatchers.spawn(ready)`` starts dispatchers for a ready queue up to its ideal-connection
curve, capped at ``connection_limit`` (reference §1.8). Each dispatcher pops the next message,
waits for the path's ``max_message_rate`` and, before opening a session,
``max_connection_rate`` (a short wait sleeps inline; a long one sends every waiting message
back to its scheduled queue, attempts not incremented, §3.4), then delivers over a session it
reuses for up to ``max_deliveries_per_connection`` messages and keeps idle for
``idle_timeout``. A run of connection failures (``consecutive_connection_failures_before_delay``)
fails every waiting message at once.

No outcome is ever stranded: an unexpected error while connecting or delivering fails the
attempt (a transient failure) rather than leaving its future unresolved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable

from kumoq.clock import Clock
from kumoq.config.values import ThrottleSpec
from kumoq.delivery.smtp import SmtpClientSession
from kumoq.dns.resolver import Resolver
from kumoq.egress.connection_plan import connect
from kumoq.egress.ready import RequeueQueue, SleepInline, ideal_connection_count, throttle_decision
from kumoq.egress.ready_queue import QueuedMessage, ReadyQueue, transient
from kumoq.logs.records import RecordType
from kumoq.scheduler.attempt import Attempt
from kumoq.scheduler.context import InsertReason
from kumoq.throttle import Throttle

__all__ = ["Dispatchers"]

log = logging.getLogger("kumoq.egress")

CLOSE_WAIT_SECONDS = 10.0
"""How long ``close()`` lets sessions in progress finish before cancelling them."""


class Dispatchers:
    """Every dispatcher task of every SMTP ready queue."""

    def __init__(
        self,
        *,
        resolver: Callable[[], Resolver],
        clock: Clock,
        hostname: str,
        throttle: Throttle,
        rng: random.Random,
    ) -> None:
        self._resolver = resolver
        self._clock = clock
        self._hostname = hostname
        self._throttle = throttle
        self._rng = rng
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    def spawn(self, ready: ReadyQueue) -> None:
        """Start dispatchers for ``ready`` up to its ideal count (at least one)."""
        if self._closing:
            return
        limit = ready.path.connection_limit.limit
        ideal = min(max(ideal_connection_count(len(ready.fifo), limit), 1), limit)
        while ready.dispatchers < ideal:
            ready.dispatchers += 1
            task = asyncio.ensure_future(self._dispatch(ready))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self, ready_queues: Iterable[ReadyQueue]) -> None:
        """Stop dispatching; messages waiting in ready queues stay spooled for the next start."""
        self._closing = True
        for ready in ready_queues:
            for it in ready.fifo.drain():
                if not it.future.done():
                    it.future.cancel()
            ready.wake.set()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=CLOSE_WAIT_SECONDS)
            for task in pending:
                task.cancel()

    async def _dispatch(self, ready: ReadyQueue) -> None:
        session: SmtpClientSession | None = None
        delivered = 0
        try:
            while not self._closing:
                item = ready.fifo.pop()
                if item is None:
                    if session is None:
                        return
                    ready.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(ready.path.idle_timeout):
                            await ready.wake.wait()
                    if not len(ready.fifo):
                        return
                    continue
                if item.future.done():
                    continue
                path = ready.path
                if path.max_message_rate is not None and not await self._admit(
                    ready, item, f"kumomta.max_message_rate.{ready.name}",
                    path.max_message_rate, InsertReason.MessageRateThrottle,
                ):  # fmt: skip
                    return
                if session is not None and not session.reusable:
                    session.abort()  # the server hung up (or spoke unasked) while idle
                    await session.quit()
                    session = None
                if session is None:
                    if path.max_connection_rate is not None and not await self._admit(
                        ready, item, f"{ready.name}-connection-rate",
                        path.max_connection_rate, InsertReason.ConnectionRateThrottle,
                    ):  # fmt: skip
                        return
                    connected = await self._connect(ready)
                    if isinstance(connected, Attempt):
                        item.future.set_result(connected)
                        if ready.failures.record_failure():
                            self._bulk_transfail(ready)
                        return
                    ready.failures.record_success()
                    session = connected
                    delivered = 0
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
                if delivered >= path.max_deliveries_per_connection or session.closed:
                    await session.quit()
                    session = None
        finally:
            ready.dispatchers -= 1
            if session is not None:
                await session.quit()
            if len(ready.fifo) and not self._closing:
                self.spawn(ready)

    async def _connect(self, ready: ReadyQueue) -> SmtpClientSession | Attempt:
        try:
            return await connect(ready, self._resolver(), self._rng, self._hostname)
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
            result = self._throttle.check(key, spec, self._clock.now())
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
