"""The queue manager: scheduled queues by name, and each message's next step (reference §1.5-1.6).

- ``resolve(name)`` creates a queue on first use and calls the policy's ``get_queue_config``
  once per queue, again every ``refresh_interval``; a failure is cached for 60 s as KumoMTA
  does. A ``strategy`` change applies when the queue is recreated.
- ``insert(msg, context)``: due later: wait in the queue (a ``Delayed`` record); due now:
  ``insert_ready``.
- ``insert_ready``: the queue's ``max_message_rate`` GCRA gate (throttled: into the queue's
  pacing line at the throttle's exact wait, spaced ``period / limit`` behind the messages already
  held, attempts not incremented), then the protocol's deliverer.
- After an attempt: delivered or bounced: removed from the spool; transient failure: backoff
  with jitter (§3.1), expiry by ``max_age`` or ``set_scheduling{expires}`` (§3.2), and the new
  ``num_attempts`` and ``due`` persisted before waiting.
- A queue empty for ``reap_interval`` is dropped with its maintainer and all kept under its
  name; deliverers that keep state per queue (``QueueReapListener``) are told.

Seams (owned here, implemented above): ``QueueConfigSource``, ``RecordSink``, the ``Spool``,
and ``Deliverer`` (in ``kumoq.scheduler.attempt``, so that dispatchers need not import this).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
from collections.abc import Coroutine, Iterator
from typing import Any, Final

from kumoq.clock import Clock
from kumoq.config.queue import NullProtocol, QueueConfig
from kumoq.errors import KumoqError, PolicyError, PolicyWouldBlock, SpoolCorruptError
from kumoq.logs.records import RecordType, Response, rfc3339
from kumoq.message import NULL_QUEUE, Message, parse_queue_name
from kumoq.scheduler.attempt import (  # QueueConfigSource, RecordSink: re-exported
    POLICY_WAIT_RERUNS,
    Attempt,
    Deliverer,
    QueueConfigSource,
    QueueReapListener,
    RecordSink,
)
from kumoq.scheduler.context import InsertContext, InsertReason
from kumoq.scheduler.retry import (
    Expired,
    FailureCache,
    expiry_after_increment,
    expiry_without_increment,
    format_duration,
    next_attempt,
)
from kumoq.scheduler.scheduled import ScheduledQueue, SingletonWheel
from kumoq.scheduler.scheduling import expires_of, next_allowed
from kumoq.spool.base import Spool
from kumoq.throttle import Throttle

__all__ = [
    "QueueConfigSource",
    "QueueManager",
    "RecordSink",
]

log = logging.getLogger("kumoq.queue")

FAILED_RESOLVE_TTL: Final = 60.0


class QueueManager:
    """Registry of scheduled queues; moves each message to its next step."""

    def __init__(
        self,
        *,
        configs: QueueConfigSource,
        deliverers: dict[type, Deliverer],
        spool: Spool,
        records: RecordSink,
        clock: Clock,
        throttle: Throttle | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._configs = configs
        self._deliverers = deliverers
        self._spool = spool
        self._records = records
        self._clock = clock
        self._throttle = throttle or Throttle()
        self._rng = rng or random.Random()
        self._queues: dict[str, ScheduledQueue] = {}
        self._failed: FailureCache[PolicyError] = FailureCache()
        unique = {id(d): d for d in deliverers.values()}.values()
        self._reap_listeners = [d for d in unique if isinstance(d, QueueReapListener)]
        self._singleton = SingletonWheel(clock)
        self._tasks: set[asyncio.Task[None]] = set()
        self._parked: dict[str, asyncio.TimerHandle] = {}
        self._closing = False

    # -- queues ------------------------------------------------------------------------------

    def resolve(self, name: str) -> ScheduledQueue:
        """The queue named ``name``, created on first use; raises PolicyError if the policy fails.

        The config is fetched again once ``refresh_interval`` has passed. A failure is
        remembered for 60 s so that a broken policy is not called for every message. When
        ``get_queue_config`` waits for DNS (PolicyWouldBlock), a new queue raises it for the
        caller to await (``resolve_waiting``); an existing queue keeps its config while a
        background task refreshes it.
        """
        return self._resolve(name, refresh_later=True)

    def _resolve(self, name: str, *, refresh_later: bool) -> ScheduledQueue:
        queue = self._queues.get(name)
        now = self._clock.monotonic()
        if queue is not None and now - queue.resolved_at < queue.config.refresh_interval:
            return queue
        failed = self._failed.get(name, now)
        if failed is not None:
            if queue is not None:
                return queue  # an existing queue keeps its last good config
            raise failed.with_traceback(None)  # a traceback that grows with every raise
        parts = queue.parts if queue is not None else parse_queue_name(name)
        try:
            config = self._configs.get_queue_config(parts) or QueueConfig()
        except PolicyWouldBlock as wait:
            if queue is None or not refresh_later:
                raise  # the caller awaits the answer (resolve_waiting)
            queue.resolved_at = now  # keep the config until the refresh below has run
            self._spawn(self._refresh_when_answered(name, wait))
            return queue
        except PolicyError as exc:
            self._failed.add(name, exc, now + FAILED_RESOLVE_TTL, now)
            if queue is not None:
                log.error(
                    "queue %s: keeping its last config: get_queue_config failed: %s", name, exc
                )
                queue.resolved_at = now  # retry after another refresh_interval
                return queue
            raise
        self._failed.forget(name)
        if queue is None:
            queue = self._queues[name] = ScheduledQueue(
                name,
                parts,
                config,
                resolved_at=now,
                clock=self._clock,
                promote=self._promote,
                singleton=self._singleton,
            )
            self._maybe_idle(queue)  # reaped if nothing ever arrives
        else:
            queue.config = config  # a strategy change waits for the queue to be recreated
            queue.resolved_at = now
        return queue

    async def resolve_waiting(self, name: str) -> ScheduledQueue:
        """``resolve``, waiting for the DNS answers ``get_queue_config`` asks for
        (``kumo.dns.lookup_mx``) when they are not cached yet. Raises PolicyError."""
        for _ in range(POLICY_WAIT_RERUNS):
            try:
                return self._resolve(name, refresh_later=False)
            except PolicyWouldBlock as wait:
                await wait.wait()
        raise PolicyError(
            f"get_queue_config for {name}: still waiting for DNS after {POLICY_WAIT_RERUNS} answers"
        )

    async def _refresh_when_answered(self, name: str, wait: PolicyWouldBlock) -> None:
        await wait.wait()
        queue = self._queues.get(name)
        if queue is not None and not self._closing:
            queue.resolved_at = -math.inf  # due for a refresh now that the answer is cached
            try:
                await self.resolve_waiting(name)
            except KumoqError as exc:
                queue.resolved_at = self._clock.monotonic()  # try again after refresh_interval
                log.error("queue %s: keeping its last config: %s", name, exc)
            except Exception:
                queue.resolved_at = self._clock.monotonic()
                log.exception("queue %s: keeping its last config: refresh failed", name)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task that ``close()`` waits for (and cancels past the drain)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("queues: a background task failed", exc_info=exc)

    def refresh_configs(self) -> int:
        """Call ``get_queue_config`` again for every queue now (a policy reload); a queue
        whose call fails keeps its last config. Returns how many queues were refreshed."""
        self._failed.clear()
        names = list(self._queues)
        for name in names:
            self._queues[name].resolved_at = -math.inf
            self._resolve(name, refresh_later=True)  # keeps the last config on a failure
        return len(names)

    def get(self, name: str) -> ScheduledQueue | None:
        return self._queues.get(name)

    def queue_names(self) -> list[str]:
        return sorted(self._queues)

    def queues(self) -> Iterator[ScheduledQueue]:
        return iter(self._queues.values())

    def scheduled_counts(self) -> list[tuple[str, int]]:
        """``(queue name, messages waiting)`` for each scheduled queue (``scheduled_count``)."""
        return [(name, len(queue)) for name, queue in self._queues.items()]

    def delayed_count(self) -> int:
        return sum(len(q) for q in self._queues.values())

    # -- messages ----------------------------------------------------------------------------

    def insert(self, msg: Message, context: InsertContext | None = None) -> None:
        """Take a spooled message: promote it if due, else hold it until its due time."""
        context = context or InsertContext(InsertReason.Received)
        try:
            queue = self.resolve(msg.queue_name())
        except PolicyWouldBlock:
            self._spawn(self._insert_when_resolved(msg, context))
            return
        except KumoqError as exc:
            # Stays in the spool; tried again when the failed-resolve cache has expired.
            log.error("message %s: cannot resolve its queue: %s", msg.id, exc)
            self._park(msg, FAILED_RESOLVE_TTL)
            return
        self._insert_into(queue, msg, context)

    def _insert_into(self, queue: ScheduledQueue, msg: Message, context: InsertContext) -> None:
        now = self._clock.now()
        due = msg.due
        if due is not None and due > now:
            if tuple(context) == (InsertReason.Received,) and msg.schedule:
                context = context.add(InsertReason.ScheduledForLater)
            self._insert_delayed(queue, msg, due, context)
        else:
            self._insert_ready(queue, msg, context)

    async def _insert_when_resolved(self, msg: Message, context: InsertContext) -> None:
        try:
            queue = await self.resolve_waiting(msg.queue_name())
        except KumoqError as exc:
            log.error("message %s: cannot resolve its queue: %s", msg.id, exc)
            self._park(msg, FAILED_RESOLVE_TTL)
            return
        except Exception:
            # A bug must not strand the message: it is still spooled; try again later.
            log.exception("message %s: resolving its queue failed unexpectedly", msg.id)
            self._park(msg, FAILED_RESOLVE_TTL)
            return
        if not self._closing:
            self._insert_into(queue, msg, context)

    def _insert_delayed(
        self,
        queue: ScheduledQueue,
        msg: Message,
        due: float,
        context: InsertContext,
        *,
        pace: float | None = None,
    ) -> None:
        if context.logs_delayed():
            now = self._clock.now()
            content = (
                f"Context: {context.describe()}. Next due in "
                f"{format_duration(max(0.0, due - now))} at {rfc3339(due)}"
            )
            self._records.log(RecordType.Delayed, msg, response=Response(400, None, content, None))
        queue.insert_delayed(msg, due, pace=pace)

    def _park(self, msg: Message, delay: float) -> None:
        """Hold a message whose queue cannot be resolved; it stays spooled meanwhile."""
        msg.data = None
        loop = asyncio.get_running_loop()
        self._parked[msg.id] = loop.call_later(delay, self._unpark, msg)

    def _unpark(self, msg: Message) -> None:
        self._parked.pop(msg.id, None)
        if not self._closing:
            self.insert(msg, InsertContext(InsertReason.DueTimeWasReached))

    def _promote(self, queue: ScheduledQueue, batch: list[Message]) -> None:
        """The maintainer hands over due messages, highest priority first."""
        if self._closing:
            return
        with contextlib.suppress(KumoqError):  # a failure keeps the last good config
            queue = self.resolve(queue.name)  # refresh the config if it is time
        context = InsertContext(InsertReason.DueTimeWasReached)
        for msg in batch:
            msg.due = None
            try:
                self._insert_ready(queue, msg, context)
            except Exception:
                # Never raise once a message was handed over (the maintainer would hold the
                # whole batch again): a bug strands none; it is still spooled; try again later.
                log.exception("message %s: promoting it failed unexpectedly", msg.id)
                self._park(msg, FAILED_RESOLVE_TTL)

    def _insert_ready(self, queue: ScheduledQueue, msg: Message, context: InsertContext) -> None:
        """§1.6: the queue's rate gate, then the protocol."""
        rate = queue.config.max_message_rate
        if rate is not None:
            now = self._clock.now()
            result = self._throttle.check(f"schedq-{queue.name}-message-rate", rate, now)
            if result.throttled:
                # The exact wait, and a place in the queue's pacing line: one leaves every T.
                delay = result.wait or result.retry_after or 1.0
                reason = InsertReason.MessageRateThrottle
                pace = rate.period / rate.limit
                self._requeue_without_increment(queue, msg, delay, context.add(reason), pace=pace)
                return
        queue.in_flight += 1
        queue.idle_since = None
        self._spawn(self._attempt(msg, queue))

    async def _attempt(self, msg: Message, queue: ScheduledQueue) -> None:
        try:
            await self._attempt_once(msg, queue)
        except Exception:
            # A bug must not strand the message: it is still spooled; try again later.
            log.exception("message %s: delivery attempt failed unexpectedly", msg.id)
            if not self._closing:
                self._park(msg, FAILED_RESOLVE_TTL)
        finally:
            queue.in_flight -= 1
            self._maybe_idle(queue)

    async def _attempt_once(self, msg: Message, queue: ScheduledQueue) -> None:
        protocol = queue.config.protocol
        if isinstance(protocol, NullProtocol) or queue.name == NULL_QUEUE:
            await self._remove(msg)
            return
        deliverer = self._deliverers.get(type(protocol))
        if deliverer is None:
            kind = type(protocol).__name__.removesuffix("Protocol")
            attempt = Attempt(
                RecordType.TransientFailure,
                Response(
                    code=451,
                    enhanced_code=(4, 3, 0),
                    content=f"KumoMTA internal: {kind} delivery is not available in this "
                    "kumoq build",
                    command=None,
                ),
            )
        else:
            if msg.data is None:
                try:
                    msg.data = await self._spool.load_data(msg.id)
                except SpoolCorruptError as exc:
                    # A meta whose data is gone or empty (a crash between the two halves of
                    # a remove, or a damaged spool): nothing can ever be delivered for it.
                    log.error("message %s: %s; removing its orphan meta", msg.id, exc)
                    await self._remove(msg)
                    return
                except KumoqError as exc:
                    log.error("message %s: cannot load its data: %s", msg.id, exc)
                    self._park(msg, FAILED_RESOLVE_TTL)
                    return
            attempt = await deliverer.deliver(msg, queue.config)
        if attempt.disposition is RecordType.Delayed:
            reason = attempt.reason or InsertReason.ReadyQueueWasFull
            delay = attempt.requeue_delay or 0.0
            if not self._closing:
                self._requeue_without_increment(queue, msg, delay, InsertContext(reason))
            return
        fields = {
            "site": attempt.site,
            "delivery_protocol": attempt.delivery_protocol,
            "peer_address": attempt.peer_address,
            "session_id": attempt.session_id,
            **attempt.extra,
        }
        self._log_record(attempt.disposition, msg, attempt.response, fields)
        if attempt.disposition is RecordType.TransientFailure:
            await self._requeue_with_increment(queue, msg)
        else:
            await self._remove(msg)

    def _log_record(
        self, disposition: RecordType, msg: Message, response: Response, fields: dict[str, Any]
    ) -> None:
        """Log the outcome's record; never raises (a final outcome must not go round again)."""
        try:
            self._records.log(disposition, msg, response=response, **fields)
        except Exception:
            log.exception("message %s: writing its %s record failed", msg.id, disposition)

    async def _remove(self, msg: Message) -> None:
        """Drop a message that is done (delivered, bounced, expired) from the spool.

        Never raises: the message is done whatever the spool says, and it must not be
        attempted again. Spools retry a failed remove in the background themselves."""
        try:
            await self._spool.remove(msg.id)
        except Exception:
            log.exception("message %s: removing it from the spool failed", msg.id)

    # -- retries and expiry ------------------------------------------------------------------

    async def _requeue_with_increment(self, queue: ScheduledQueue, msg: Message) -> None:
        """Back off after a transient failure (§3.1), or expire (§3.2); persist the schedule."""
        config = queue.config
        now = self._clock.now()
        delay, attempts = next_attempt(
            msg.num_attempts, config.retry_interval, config.max_retry_interval, now, self._rng
        )
        due = next_allowed(now + delay, msg.schedule)
        expired = expiry_after_increment(
            msg.created, now, delay, config.max_age, expires_of(msg.schedule), next_due=due
        )
        msg.num_attempts = attempts  # as KumoMTA: an Expiration counts the failed attempt
        if expired is not None:
            await self._expire(msg, expired)
            return
        msg.due = due
        msg.data = None
        try:
            await self._spool.store(msg.id, None, json.dumps(msg.to_spool_meta()).encode())
        except KumoqError as exc:
            log.error("message %s: cannot persist its schedule: %s", msg.id, exc)
        if self._closing:
            return
        context = InsertContext(
            InsertReason.FailedToInsertIntoReadyQueue, InsertReason.LoggedTransientFailure
        )
        self.insert(msg, context)

    def _requeue_without_increment(
        self,
        queue: ScheduledQueue,
        msg: Message,
        delay: float,
        context: InsertContext,
        *,
        pace: float | None = None,
    ) -> None:
        """Throttled or held: back into the queue after ``delay``, attempts unchanged; not
        persisted (a restart makes it due at its persisted, earlier, time). ``pace``: held by
        the queue's rate, one message per ``pace`` seconds (``ScheduledQueue.pace``)."""
        now = self._clock.now()
        wanted = now + delay if pace is None else queue.pace(now + delay, pace)
        due = next_allowed(wanted, msg.schedule)
        if expires_of(msg.schedule) is None:
            expired = expiry_without_increment(msg.created, due, queue.config.max_age)
            if expired is not None:
                self._spawn(self._expire(msg, expired))
                return
        # Moved into a scheduling window: it waits in the queue, not in the pacing line.
        self._insert_delayed(queue, msg, due, context, pace=pace if due == wanted else None)

    async def _expire(self, msg: Message, expired: Expired) -> None:
        response = Response(expired.code, expired.enhanced_code, expired.content, None)
        self._log_record(RecordType.Expiration, msg, response, {"site": expired.site})
        await self._remove(msg)

    # -- reaping -----------------------------------------------------------------------------

    def _maybe_idle(self, queue: ScheduledQueue) -> None:
        """Note that ``queue`` became empty; at most one reap timer per queue is pending."""
        if not self._closing:
            queue.note_idle(self._reap)

    def _reap(self, queue: ScheduledQueue) -> None:
        """Drop an idle queue and everything kept under its name; tell the deliverers."""
        if self._queues.get(queue.name) is not queue or self._closing:
            return
        queue.close()
        del self._queues[queue.name]
        self._failed.forget(queue.name)
        for listener in self._reap_listeners:
            listener.queue_reaped(queue.name)
        log.info("reaped idle queue %s", queue.name)

    async def close(self, drain_seconds: float = 30.0) -> None:
        """Stop maintainers and let attempts in flight finish (every message stays spooled)."""
        self._closing = True
        for handle in self._parked.values():
            handle.cancel()
        self._parked.clear()
        for queue in self._queues.values():
            queue.close()
        self._singleton.close()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=drain_seconds)
            if pending:  # their messages stay spooled and are attempted after the restart
                log.warning("queues: abandoning %d tasks after %gs", len(pending), drain_seconds)
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=1.0)
