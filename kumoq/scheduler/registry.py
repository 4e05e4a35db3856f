"""The registry of scheduled queues by name, and their configs (reference §1.4-1.5).

``resolve(name)`` creates a queue on first use and calls the policy's ``get_queue_config``
once per queue, again every ``refresh_interval``; a failure is cached for 60 s as KumoMTA
does. A ``strategy`` change applies when the queue is recreated. ``QueueManager``
(kumoq.scheduler.manager) builds on it: this module knows queues, that one moves messages.
"""

from __future__ import annotations

import asyncio
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Coroutine, Iterable, Iterator
from typing import Any, Final

from kumoq.clock import Clock, LoopBound
from kumoq.config.queue import QueueConfig
from kumoq.errors import KumoqError, PolicyError, PolicyWouldBlock
from kumoq.message import Message, parse_queue_name
from kumoq.scheduler.attempt import POLICY_WAIT_RERUNS, QueueConfigSource
from kumoq.scheduler.context import InsertContext, InsertReason
from kumoq.scheduler.retry import FailureCache
from kumoq.scheduler.scheduled import ScheduledQueue
from kumoq.scheduler.singleton import SingletonWheel

__all__ = ["FAILED_RESOLVE_TTL", "QueueRegistry"]

log = logging.getLogger("kumoq.queue")

FAILED_RESOLVE_TTL: Final = 60.0
ENUMERATED: Final = InsertContext(InsertReason.Enumerated)


class QueueRegistry(LoopBound, ABC):
    """Scheduled queues by name; the queue manager's base."""

    def __init__(self, configs: QueueConfigSource, clock: Clock) -> None:
        self._configs = configs
        self._clock = clock
        self._queues: dict[str, ScheduledQueue] = {}
        self._failed: FailureCache[PolicyError] = FailureCache()
        self._singleton = SingletonWheel(clock)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    @abstractmethod
    def _promote(self, queue: ScheduledQueue, batch: list[Message]) -> None:
        """Take the due messages a queue's maintainer hands over (the queue manager)."""

    @abstractmethod
    def _maybe_idle(self, queue: ScheduledQueue) -> None:
        """Note that ``queue`` may have become idle (the queue manager)."""

    @abstractmethod
    def insert(
        self, msg: Message, context: InsertContext | None = None, queue_name: str | None = None
    ) -> None:
        """Take a spooled message into its queue (the queue manager)."""

    @abstractmethod
    def _admin_bounced(self, queue: ScheduledQueue, msg: Message) -> bool:
        """An admin bounce rule matches ``queue``: ``msg`` is bounced (the queue manager)."""

    # -- a restart ---------------------------------------------------------------------------

    def insert_enumerated(
        self,
        batch: Iterable[tuple[Message, str]],
        queues: dict[str, ScheduledQueue | None] | None = None,
    ) -> None:
        """``insert`` for messages read back from the spool at start, with their queue names:
        the hot path of a restart (docs/benchmarks.md, "Restart"). Each queue is resolved
        once, and a message due later goes straight into it, without a ``Delayed`` record
        (KumoMTA logs none for ``Enumerated``). One whose queue does not resolve at once, or
        that is due now, takes ``insert``'s path. ``queues``: the queues resolved so far,
        kept by the caller from one batch to the next of the same enumeration."""
        queues = {} if queues is None else queues
        now = self._clock.now()
        for msg, name in batch:
            if name in queues:
                queue = queues[name]
            else:
                queue = queues[name] = self._resolved_now(name)
            due = msg.due
            if queue is None or due is None or due <= now:
                self.insert(msg, ENUMERATED, name)
            elif not self._admin_bounced(queue, msg):
                msg.state = ("scheduled", "Enumerated", due)
                queue.insert_delayed(msg, due)

    def _resolved_now(self, name: str) -> ScheduledQueue | None:
        try:
            return self.resolve(name)
        except Exception:  # a wait for DNS, a policy error: insert() knows what to do
            return None

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
        task = self._loop.create_task(coro)
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
