"""The queue manager: scheduled queues by name, and each message's next step (reference §1.5-1.6).

- ``resolve(name)`` (kumoq.scheduler.registry) finds or creates the queue.
- ``insert(msg, context)``: an admin bounce rule matching the queue bounces it
  (``AdminBounce``); due later: wait in the queue (a ``Delayed`` record); due now:
  ``insert_ready``.
- ``insert_ready``: an admin bounce again; an admin suspension of the queue: a
  ``TransientFailure`` and the next retry (as KumoMTA: the normal backoff); the queue's
  ``max_message_rate`` GCRA gate (throttled: into the queue's pacing line at the throttle's
  exact wait, spaced ``period / limit`` behind the messages already held, attempts not
  incremented, counted in ``delayed_due_to_*``), then the protocol's deliverer.
- After an attempt: delivered or bounced: its record, then removed from the spool or kept as
  a dead letter (kumoq.scheduler.disposition); transient failure: backoff with jitter (§3.1),
  expiry by ``max_age`` or ``set_scheduling{expires}`` (§3.2), and the new ``num_attempts``,
  ``due`` and ``last_response`` persisted before waiting.
- Before a requeue after a transient failure or a throttle (not a full ready queue), the
  policy's ``requeue_message`` may move the message to another queue (one more attempt, due
  now) or bounce it (kumoq.scheduler.requeue).
- A queue empty for ``reap_interval`` is dropped with its maintainer and all kept under its
  name; deliverers that keep state per queue (``QueueReapListener``) are told.
- Each message carries ``state``: why it waits now (the admin API's inspect-message).

Seams (owned here, implemented above): ``QueueConfigSource``, ``RecordSink``, the ``Spool``,
``Deliverer`` (in ``kumoq.scheduler.attempt``, so that dispatchers need not import this) and
``RequeuePolicy`` (``kumoq.scheduler.requeue``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random

from kumoq.clock import Clock
from kumoq.config.queue import NullProtocol
from kumoq.errors import KumoqError, PolicyWouldBlock, SpoolCorruptError
from kumoq.logs.records import RecordType, Response, rfc3339
from kumoq.message import NULL_QUEUE, Message
from kumoq.metrics import note_delayed
from kumoq.scheduler.admin_rules import AdminRules
from kumoq.scheduler.attempt import (  # QueueConfigSource, RecordSink: re-exported
    Deliverer,
    QueueConfigSource,
    QueueReapListener,
    RecordSink,
    unavailable,
)
from kumoq.scheduler.context import InsertContext, InsertReason
from kumoq.scheduler.dead_letters import DeadLetters
from kumoq.scheduler.disposition import Dispositions
from kumoq.scheduler.registry import FAILED_RESOLVE_TTL, QueueRegistry
from kumoq.scheduler.requeue import RequeuePolicy, ask_policy
from kumoq.scheduler.retry import (
    expiry_after_increment,
    expiry_without_increment,
    format_duration,
    next_attempt,
)
from kumoq.scheduler.scheduled import ScheduledQueue
from kumoq.scheduler.scheduling import expires_of, next_allowed
from kumoq.spool.base import Spool
from kumoq.throttle import Throttle

__all__ = [
    "QueueConfigSource",
    "QueueManager",
    "RecordSink",
]

log = logging.getLogger("kumoq.queue")


class QueueManager(QueueRegistry):
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
        rules: AdminRules | None = None,
        dead_letters: DeadLetters | None = None,
        requeue: RequeuePolicy | None = None,
    ) -> None:
        super().__init__(configs, clock)
        self._requeue = requeue
        self._deliverers = deliverers
        self._spool = spool
        self._records = records
        self._throttle = throttle or Throttle()
        self._rng = rng or random.Random()
        unique = {id(d): d for d in deliverers.values()}.values()
        self._reap_listeners = [d for d in unique if isinstance(d, QueueReapListener)]
        self._parked: dict[str, tuple[asyncio.TimerHandle, Message]] = {}
        self._in_flight: dict[str, Message] = {}
        self.rules = rules or AdminRules()
        dead_letters = dead_letters or DeadLetters(spool=spool, records=records, clock=clock)
        dead_letters.requeue_into = self.insert
        self.dispositions = Dispositions(spool=spool, records=records, dead_letters=dead_letters)

    # -- messages ----------------------------------------------------------------------------

    def insert(
        self, msg: Message, context: InsertContext | None = None, queue_name: str | None = None
    ) -> None:
        """Take a spooled message: promote it if due, else hold it until its due time.
        ``queue_name``: ``msg.queue_name()`` when the caller has computed it already."""
        context = context or InsertContext(InsertReason.Received)
        try:
            queue = self.resolve(queue_name or msg.queue_name())
        except PolicyWouldBlock:
            self._spawn(self._insert_when_resolved(msg, context))
            return
        except KumoqError as exc:
            # Stays in the spool; tried again when the failed-resolve cache has expired.
            log.error("message %s: cannot resolve its queue: %s", msg.id, exc)
            self._park(msg, FAILED_RESOLVE_TTL)
            return
        self._insert_into(queue, msg, context)

    def _admin_bounced(self, queue: ScheduledQueue, msg: Message) -> bool:
        """§1.5/1.6: an admin bounce rule matches ``queue``: the message is bounced."""
        rule = self.rules.bounce_for(queue.name, queue.parts, self._clock.now())
        if rule is None:
            return False
        rule.count(queue.name)
        bounce = self.dispositions.admin_bounce
        self._spawn(bounce(msg, rule.reason, suppress_logging=rule.suppress_logging))
        return True

    # -- for the admin API ---------------------------------------------------------------------

    def find(self, msg_id: str) -> tuple[Message, ScheduledQueue | None] | None:
        """A message the manager holds: waiting in a queue, parked, or in flight."""
        for queue in self._queues.values():
            msg = queue.get(msg_id)
            if msg is not None:
                return msg, queue
        held = self._parked.get(msg_id)
        if held is not None:
            return held[1], None
        msg = self._in_flight.get(msg_id)
        return (msg, self._queues.get(msg.queue_name())) if msg is not None else None

    def unpark(self, msg_id: str) -> Message | None:
        """Take a parked message back (the caller inserts or bounces it)."""
        held = self._parked.pop(msg_id, None)
        if held is None:
            return None
        held[0].cancel()
        return held[1]

    def _insert_into(self, queue: ScheduledQueue, msg: Message, context: InsertContext) -> None:
        if self._admin_bounced(queue, msg):
            return
        now = self._clock.now()
        due = msg.due
        if due is not None and due > now:
            if tuple(context) == (InsertReason.Received,) and msg.schedule:
                context = context.add(InsertReason.ScheduledForLater)
            self._insert_delayed(queue, msg, due, context)
        else:
            self._insert_ready(queue, msg, context)

    async def _insert_when_resolved(self, msg: Message, context: InsertContext) -> None:
        msg.state = ("dns_wait", "get_queue_config is waiting for a DNS answer", None)
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
        if pace is None:
            msg.state = ("scheduled", context.describe(), due)
        else:
            msg.state = ("rate_throttled", "held by the queue's max_message_rate", due)
        queue.insert_delayed(msg, due, pace=pace)

    def _park(self, msg: Message, delay: float) -> None:
        """Hold a message whose queue cannot be resolved; it stays spooled meanwhile."""
        msg.data = None
        msg.state = ("policy_failed", "its queue could not be resolved or promoted", None)
        handle = asyncio.get_running_loop().call_later(delay, self._unpark, msg)
        self._parked[msg.id] = (handle, msg)

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
        """§1.6: admin bounce and suspension, the queue's rate gate, then the protocol."""
        if self._admin_bounced(queue, msg):
            return
        suspended = self.rules.suspension_for(queue.name, queue.parts, self._clock.now())
        if suspended is not None:
            text = f"KumoMTA internal: scheduled queue is suspended: {suspended.reason}"
            response = Response(451, (4, 4, 4), text, None)
            msg.last_response = response.one_line()
            self.dispositions.log(RecordType.TransientFailure, msg, response, {"site": queue.name})
            queue.in_flight += 1
            self._spawn(self._suspended(queue, msg, response))
            return
        rate = queue.config.max_message_rate
        if rate is not None:
            now = self._clock.now()
            result = self._throttle.check(f"schedq-{queue.name}-message-rate", rate, now)
            if result.throttled:
                # The exact wait, and a place in the queue's pacing line: one leaves every T.
                delay = result.wait or result.retry_after or 1.0
                reason = InsertReason.MessageRateThrottle
                note_delayed(reason.value, queue.name)
                pace = rate.period / rate.limit
                text = f"KumoMTA internal: {queue.name} throttled message rate, delay={delay:g}s"
                response = Response(451, (4, 4, 4), text, None)
                self._requeue_without_increment(
                    queue, msg, delay, context.add(reason), pace=pace, response=response
                )
                return
        queue.in_flight += 1
        queue.idle_since = None
        msg.state = ("in_flight", "", None)
        self._in_flight[msg.id] = msg
        self._spawn(self._attempt(msg, queue))

    async def _suspended(self, queue: ScheduledQueue, msg: Message, response: Response) -> None:
        try:
            await self._requeue_with_increment(queue, msg, response)
        finally:
            queue.in_flight -= 1

    async def _attempt(self, msg: Message, queue: ScheduledQueue) -> None:
        try:
            await self._attempt_once(msg, queue)
        except Exception:
            # A bug must not strand the message: it is still spooled; try again later.
            log.exception("message %s: delivery attempt failed unexpectedly", msg.id)
            if not self._closing:
                self._park(msg, FAILED_RESOLVE_TTL)
        finally:
            self._in_flight.pop(msg.id, None)
            queue.in_flight -= 1
            self._maybe_idle(queue)

    async def _attempt_once(self, msg: Message, queue: ScheduledQueue) -> None:
        protocol = queue.config.protocol
        if isinstance(protocol, NullProtocol) or queue.name == NULL_QUEUE:
            await self.dispositions.remove(msg)
            return
        deliverer = self._deliverers.get(type(protocol))
        if deliverer is None:
            attempt = unavailable(type(protocol).__name__.removesuffix("Protocol"))
        else:
            if msg.data is None:
                try:
                    msg.data = await self._spool.load_data(msg.id)
                except SpoolCorruptError as exc:
                    # A meta whose data is gone or empty (a crash between the two halves of
                    # a remove, or a damaged spool): nothing can ever be delivered for it.
                    log.error("message %s: %s; removing its orphan meta", msg.id, exc)
                    await self.dispositions.remove(msg)
                    return
                except KumoqError as exc:
                    log.error("message %s: cannot load its data: %s", msg.id, exc)
                    self._park(msg, FAILED_RESOLVE_TTL)
                    return
            attempt = await deliverer.deliver(msg, queue.config)
        if attempt.disposition is RecordType.Delayed:
            reason = attempt.reason or InsertReason.ReadyQueueWasFull
            note_delayed(reason.value, queue.name)
            delay = attempt.requeue_delay or 0.0
            # KumoMTA asks requeue_message after a throttle, not for a full ready queue.
            asks = reason is not InsertReason.ReadyQueueWasFull
            if not self._closing:
                self._requeue_without_increment(
                    queue, msg, delay, InsertContext(reason),
                    response=attempt.response if asks else None,
                )  # fmt: skip
            return
        fields = {
            "site": attempt.site,
            "delivery_protocol": attempt.delivery_protocol,
            "peer_address": attempt.peer_address,
            "session_id": attempt.session_id,
            **attempt.extra,
        }
        if attempt.disposition is RecordType.TransientFailure:
            self.dispositions.log(attempt.disposition, msg, attempt.response, fields)
            msg.last_response = attempt.response.one_line()
            await self._requeue_with_increment(queue, msg, attempt.response)
        else:
            await self.dispositions.finish(
                msg, queue.name, queue.config, attempt.disposition, attempt.response, fields
            )

    # -- retries and expiry ------------------------------------------------------------------

    async def _requeue_with_increment(
        self, queue: ScheduledQueue, msg: Message, response: Response
    ) -> None:
        """Back off after a transient failure (§3.1), or expire (§3.2); persist the schedule.
        ``requeue_message`` first: it may take the message elsewhere."""
        context = InsertContext(
            InsertReason.FailedToInsertIntoReadyQueue, InsertReason.LoggedTransientFailure
        )
        logged = InsertContext(InsertReason.LoggedTransientFailure)  # as KumoMTA asks
        if self._policy_took(queue, msg, response, logged, increment=True, delay=None):
            return
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
            await self.dispositions.expire(msg, queue.name, config, expired)
            return
        msg.due = due
        msg.data = None
        try:
            await self._spool.store(msg.id, None, json.dumps(msg.to_spool_meta()).encode())
        except KumoqError as exc:
            log.error("message %s: cannot persist its schedule: %s", msg.id, exc)
        if self._closing:
            return
        self.insert(msg, context)

    def _requeue_without_increment(
        self,
        queue: ScheduledQueue,
        msg: Message,
        delay: float,
        context: InsertContext,
        *,
        pace: float | None = None,
        response: Response | None = None,
    ) -> None:
        """Throttled or held: back into the queue after ``delay``, attempts unchanged; not
        persisted (a restart makes it due at its persisted, earlier, time). ``pace``: held by
        the queue's rate, one message per ``pace`` seconds (``ScheduledQueue.pace``). With a
        ``response``, ``requeue_message`` is asked first."""
        if response is not None and self._policy_took(
            queue, msg, response, context, increment=False, delay=delay
        ):
            return
        now = self._clock.now()
        wanted = now + delay if pace is None else queue.pace(now + delay, pace)
        due = next_allowed(wanted, msg.schedule)
        if expires_of(msg.schedule) is None:
            expired = expiry_without_increment(msg.created, due, queue.config.max_age)
            if expired is not None:
                expire = self.dispositions.expire(msg, queue.name, queue.config, expired)
                self._spawn(expire)
                return
        # Moved into a scheduling window: it waits in the queue, not in the pacing line.
        self._insert_delayed(queue, msg, due, context, pace=pace if due == wanted else None)

    def _policy_took(
        self,
        queue: ScheduledQueue,
        msg: Message,
        response: Response,
        context: InsertContext,
        *,
        increment: bool,
        delay: float | None,
    ) -> bool:
        """Fire ``requeue_message``; True when it took the message out of ``queue``: bounced
        (``kumo.reject``) or moved (inserted with ``context`` into its new queue)."""
        if self._requeue is None:
            return False
        outcome = ask_policy(
            self._requeue, msg, queue.name, response, context,
            increment_attempts=increment, delay=delay,
        )  # fmt: skip
        if outcome.bounce is not None:
            finish = self.dispositions.finish(
                msg, queue.name, queue.config, RecordType.Bounce, outcome.bounce, {}
            )
            self._spawn(finish)
            return True
        if outcome.moved_to is not None:
            self._spawn(self._moved(msg, outcome.moved_to, context))
            return True
        if outcome.error is not None:
            log.error("message %s: %s", msg.id, outcome.error)
        return False

    async def _moved(self, msg: Message, name: str, context: InsertContext) -> None:
        """``requeue_message`` changed the queue (KumoMTA's rules): one more attempt, due now
        within its ``set_scheduling`` window, expired if that is past the new queue's
        ``max_age``; persisted, then inserted into ``name``."""
        msg.num_attempts += 1
        now = self._clock.now()
        msg.due = None if msg.schedule is None else next_allowed(now, msg.schedule)
        if msg.due is not None and msg.due > now:
            msg.data = None  # it waits for its window: the body goes back to the spool
        with contextlib.suppress(KumoqError):  # resolved again by insert, which handles it
            queue = self.resolve(name)
            if expires_of(msg.schedule) is None:
                due = now if msg.due is None else msg.due
                expired = expiry_without_increment(msg.created, due, queue.config.max_age)
                if expired is not None:
                    await self.dispositions.expire(msg, name, queue.config, expired)
                    return
        try:
            await self._spool.store(msg.id, None, json.dumps(msg.to_spool_meta()).encode())
        except KumoqError as exc:
            log.error("message %s: cannot persist its new queue %s: %s", msg.id, name, exc)
        if not self._closing:
            self.insert(msg, context)

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
        await self.dispositions.dead_letters.close()
        for handle, _ in self._parked.values():
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
