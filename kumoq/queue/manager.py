"""The queue manager: scheduled queues by name, their configs, and each message's next step.

Owns: resolving a queue's ``QueueConfig`` through the policy (cached per queue name, a failure
cached for 60 s as KumoMTA does), inserting messages (due now: dispatch to the protocol; due later:
wait), and what happens after an attempt (delivered: remove from the spool; transient failure:
back off, persist ``num_attempts`` and ``due``, drop the body from memory; bounce: remove).

This is the foundation's scheduler: one timer per deferred message on the event loop. The
scheduling issue replaces the timer with TimerWheel/SkipList structures behind ``ScheduledQueue``
without changing the manager's interface.

Seams (owned here, implemented above): ``QueueConfigSource`` (the policy's get_queue_config),
``Deliverer`` (one per protocol), ``RecordSink`` (log records), and the ``Spool``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from kumoq.clock import Clock
from kumoq.config.queue import (
    CustomLuaProtocol,
    MaildirProtocol,
    NullProtocol,
    QueueConfig,
    SmtpProtocol,
)
from kumoq.errors import KumoqError, PolicyError
from kumoq.logs.records import RecordType, Response
from kumoq.message import NULL_QUEUE, Message, QueueNameParts, parse_queue_name
from kumoq.spool.base import Spool

__all__ = [
    "Attempt",
    "Deliverer",
    "QueueConfigSource",
    "QueueManager",
    "RecordSink",
    "ScheduledQueue",
]

log = logging.getLogger("kumoq.queue")

FAILED_RESOLVE_TTL: Final = 60.0


class QueueConfigSource(Protocol):
    """Where queue configs come from: the policy's ``get_queue_config`` event."""

    def get_queue_config(self, parts: QueueNameParts) -> QueueConfig | None: ...


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one delivery attempt for one message."""

    disposition: RecordType  # Delivery, TransientFailure or Bounce
    response: Response
    site: str = ""
    delivery_protocol: str | None = None
    peer_address: dict[str, str] | None = None
    session_id: str | None = None


class Deliverer(Protocol):
    """Delivers one message by one protocol; never raises for delivery failures."""

    def deliver(self, msg: Message, config: QueueConfig) -> Awaitable[Attempt]: ...


class RecordSink(Protocol):
    """Writes log records."""

    def log(self, type: RecordType, msg: Message, *, response: Response, **fields: Any) -> None: ...


@dataclass(slots=True)
class ScheduledQueue:
    """One scheduled queue: its config and the messages waiting in it."""

    name: str
    parts: QueueNameParts
    config: QueueConfig
    resolved_at: float
    delayed: dict[str, asyncio.TimerHandle] = field(default_factory=dict)


@dataclass(slots=True)
class _FailedResolve:
    error: PolicyError
    until: float


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
    ) -> None:
        self._configs = configs
        self._deliverers = deliverers
        self._spool = spool
        self._records = records
        self._clock = clock
        self._queues: dict[str, ScheduledQueue] = {}
        self._failed: dict[str, _FailedResolve] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    # -- queues ------------------------------------------------------------------------------

    def resolve(self, name: str) -> ScheduledQueue:
        """The queue named ``name``, created on first use; raises PolicyError if the policy fails.

        A failure is remembered for 60 s so a broken policy is not called for every message.
        """
        queue = self._queues.get(name)
        now = self._clock.monotonic()
        if queue is not None and now - queue.resolved_at < queue.config.refresh_interval:
            return queue
        failed = self._failed.get(name)
        if failed is not None and now < failed.until:
            raise failed.error
        parts = parse_queue_name(name)
        try:
            config = self._configs.get_queue_config(parts) or QueueConfig()
        except PolicyError as exc:
            self._failed[name] = _FailedResolve(exc, now + FAILED_RESOLVE_TTL)
            raise
        self._failed.pop(name, None)
        if queue is None:
            queue = self._queues[name] = ScheduledQueue(name, parts, config, now)
        else:
            queue.config = config
            queue.resolved_at = now
        return queue

    def queue_names(self) -> list[str]:
        return sorted(self._queues)

    def delayed_count(self) -> int:
        return sum(len(q.delayed) for q in self._queues.values())

    # -- messages ----------------------------------------------------------------------------

    def insert(self, msg: Message) -> None:
        """Take a spooled message: dispatch it now if due, else wait until its due time."""
        try:
            queue = self.resolve(msg.queue_name())
        except KumoqError as exc:
            # Stays in the spool; tried again after the failed-resolve cache expires.
            log.error("message %s: cannot resolve its queue: %s", msg.id, exc)
            self._wait(msg, None, self._clock.now() + FAILED_RESOLVE_TTL)
            return
        now = self._clock.now()
        if msg.due is not None and msg.due > now:
            self._wait(msg, queue, msg.due)
        else:
            self._spawn(self._attempt(msg, queue))

    def _wait(self, msg: Message, queue: ScheduledQueue | None, due: float) -> None:
        msg.data = None  # deferred messages do not keep their body in memory
        loop = asyncio.get_running_loop()
        delay = max(0.0, due - self._clock.now())
        handle = loop.call_later(delay, self._due, msg, queue)
        if queue is not None:
            queue.delayed[msg.id] = handle

    def _due(self, msg: Message, queue: ScheduledQueue | None) -> None:
        if queue is not None:
            queue.delayed.pop(msg.id, None)
        if not self._closing:
            msg.due = None
            self.insert(msg)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attempt(self, msg: Message, queue: ScheduledQueue) -> None:
        try:
            await self._attempt_once(msg, queue)
        except Exception:
            # A bug must not strand the message: it is still spooled; try again later.
            log.exception("message %s: delivery attempt failed unexpectedly", msg.id)
            if not self._closing:
                self._wait(msg, queue, self._clock.now() + FAILED_RESOLVE_TTL)

    async def _attempt_once(self, msg: Message, queue: ScheduledQueue) -> None:
        protocol = queue.config.protocol
        if isinstance(protocol, NullProtocol) or queue.name == NULL_QUEUE:
            await self._spool.remove(msg.id)
            return
        deliverer = self._deliverers.get(type(protocol))
        if deliverer is None:
            attempt = Attempt(
                RecordType.TransientFailure,
                Response(
                    code=451,
                    enhanced_code=(4, 3, 0),
                    content=f"KumoMTA internal: {_protocol_name(protocol)} delivery is not "
                    "available in this kumoq build",
                    command=None,
                ),
            )
        else:
            if msg.data is None:
                try:
                    msg.data = await self._spool.load_data(msg.id)
                except KumoqError as exc:
                    log.error("message %s: cannot load its data: %s", msg.id, exc)
                    self._wait(msg, queue, self._clock.now() + FAILED_RESOLVE_TTL)
                    return
            attempt = await deliverer.deliver(msg, queue.config)
        await self._disposition(msg, queue, attempt)

    async def _disposition(self, msg: Message, queue: ScheduledQueue, attempt: Attempt) -> None:
        fields = {
            "site": attempt.site,
            "delivery_protocol": attempt.delivery_protocol,
            "peer_address": attempt.peer_address,
            "session_id": attempt.session_id,
        }
        self._records.log(attempt.disposition, msg, response=attempt.response, **fields)
        if attempt.disposition is RecordType.TransientFailure:
            await self._requeue(msg, queue)
        else:
            await self._spool.remove(msg.id)

    async def _requeue(self, msg: Message, queue: ScheduledQueue) -> None:
        """Back off after a transient failure and persist the new schedule before waiting."""
        config = queue.config
        delay = config.retry_interval * (2**msg.num_attempts)
        if config.max_retry_interval is not None:
            delay = min(delay, config.max_retry_interval)
        msg.num_attempts += 1
        msg.due = self._clock.now() + delay
        meta = json.dumps(msg.to_spool_meta()).encode()
        try:
            await self._spool.store(msg.id, None, meta)
        except KumoqError as exc:
            log.error("message %s: cannot persist its schedule: %s", msg.id, exc)
        self._wait(msg, queue, msg.due)

    async def close(self, drain_seconds: float = 30.0) -> None:
        """Stop timers and let attempts in flight finish (their messages stay spooled)."""
        self._closing = True
        for queue in self._queues.values():
            for handle in queue.delayed.values():
                handle.cancel()
            queue.delayed.clear()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=drain_seconds)
            for task in pending:
                task.cancel()


def _protocol_name(protocol: SmtpProtocol | MaildirProtocol | CustomLuaProtocol) -> str:
    if isinstance(protocol, SmtpProtocol):
        return "SMTP"
    if isinstance(protocol, CustomLuaProtocol):
        return "custom_lua"
    return "maildir"
