"""A scheduled queue: its timer structure and the maintainer that promotes due messages.

Each queue holds its deferred messages (bodies not in memory) in the structure its config's
``strategy`` names (reference §4):

- ``TimerWheel``: a per-queue hierarchical wheel ticked every ``timerwheel_tick_interval``
  (default ``clamp(retry_interval / 20, 1 s, 1 min)``); inserts never wake the maintainer, and
  an empty queue's maintainer sleeps until the next insert.
- ``SkipList``: ordered by due second; the maintainer sleeps until the next due entry and is
  woken only by an insert that makes the head earlier.
- ``SingletonTimerWheel`` / ``SingletonTimerWheelV2`` (KumoMTA's default): one process-wide
  wheel ticked every 3 s; see ``SingletonWheel``.

Due messages are promoted in batches, highest ``priority`` meta first (a kumoq extension: 0
low, 1 normal, 2 high, 3 critical), so a password reset overtakes a bulk campaign due at the
same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final, Protocol

from kumoq.clock import Clock
from kumoq.config.queue import QueueConfig, QueueStrategy
from kumoq.message import DEFAULT_PRIORITY, Message, QueueNameParts, priority_of
from kumoq.scheduler.skiplist import SkipList
from kumoq.scheduler.timeq import DueNow, Empty, Items, Sleep
from kumoq.scheduler.timerwheel import TimerWheel

__all__ = [
    "DEFAULT_PRIORITY",
    "SINGLETON_TICK",
    "ScheduledQueue",
    "SingletonWheel",
    "by_priority",
    "priority_of",
]

log = logging.getLogger("kumoq.queue")

SINGLETON_TICK: Final = 3.0

Promote = Callable[["ScheduledQueue", list[Message]], None]


def by_priority(batch: list[Message]) -> list[Message]:
    """Highest priority first; due order (the batch's order) kept within a priority. O(n log n)."""
    if len(batch) > 1:
        batch.sort(key=priority_of, reverse=True)
    return batch


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Until ``event`` is set or ``seconds`` pass (no task per wait, unlike wait_for)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


async def _wait_for_batch(batch: list[Message], clock: Clock) -> None:
    latest = max(m.due or 0.0 for m in batch)
    delay = latest - clock.now()
    if delay > 0:
        await asyncio.sleep(delay)


class _Structure(Protocol):
    """What a scheduled queue needs of its timer structure (TimerWheel, SkipList)."""

    @property
    def resolution(self) -> float: ...

    def insert(self, due: float, key: str, item: Message, now: float) -> object: ...

    def pop(self, now: float) -> object: ...

    def remove(self, key: str) -> Message | None: ...

    def __len__(self) -> int: ...

    def drain(self) -> list[Message]: ...


class ScheduledQueue:
    """One scheduled queue; its maintainer task runs while it holds messages."""

    def __init__(
        self,
        name: str,
        parts: QueueNameParts,
        config: QueueConfig,
        *,
        resolved_at: float,
        clock: Clock,
        promote: Promote,
        singleton: SingletonWheel,
    ) -> None:
        self.name = name
        self.parts = parts
        self.config = config
        self.resolved_at = resolved_at
        self.strategy = config.strategy
        self.in_flight = 0
        self.idle_since: float | None = None
        self.reap_timer: asyncio.TimerHandle | None = None
        self._clock = clock
        self._promote = promote
        self._singleton: SingletonWheel | None = None
        self._structure: _Structure | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        if self.strategy is QueueStrategy.TIMER_WHEEL:
            self._structure = TimerWheel[Message](config.tick_interval())
        elif self.strategy is QueueStrategy.SKIP_LIST:
            self._structure = SkipList[Message]()
        else:
            self._singleton = singleton
        self._count = 0  # messages held in the singleton wheel for this queue

    def __len__(self) -> int:
        if self._structure is not None:
            return len(self._structure)
        return self._count

    def insert_delayed(self, msg: Message, due: float) -> None:
        """Hold ``msg`` until ``due``; a due time already past promotes it at once. O(1) for
        the wheels, O(log n) for the SkipList."""
        now = self._clock.now()
        msg.due = due
        msg.data = None  # deferred messages do not keep their body in memory
        self.idle_since = None
        if self._singleton is not None:
            self._count += 1
            self._singleton.insert(self, msg, now)
            return
        assert self._structure is not None
        result = self._structure.insert(due, msg.id, msg, now)
        if isinstance(result, DueNow):
            self._promote(self, [msg])
            return
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._maintain(), name=f"maintain {self.name}"
            )
        if self.strategy is QueueStrategy.SKIP_LIST and getattr(result, "head_changed", True):
            self._wake.set()
        elif len(self._structure) == 1:
            self._wake.set()  # a TimerWheel maintainer sleeping on an empty queue

    def remove(self, msg_id: str) -> Message | None:
        if self._structure is not None:
            return self._structure.remove(msg_id)
        if self._singleton is not None:
            msg = self._singleton.remove(msg_id)
            if msg is not None:
                self._count -= 1
            return msg
        return None

    async def _maintain(self) -> None:
        structure = self._structure
        assert structure is not None
        clock = self._clock
        wheel = self.strategy is QueueStrategy.TIMER_WHEEL
        tick = self.config.tick_interval()
        res = structure.resolution
        while True:
            # Pop up to one resolution early, then wait for the batch's latest due time, as
            # KumoMTA's wait_for_message_batch does: never early, and not a tick late either.
            result = structure.pop(clock.now() + res)
            if isinstance(result, Items):
                await _wait_for_batch(result.items, clock)
                self._promote(self, by_priority(list(result.items)))
                continue
            self._wake.clear()
            if isinstance(result, Empty):
                await self._wake.wait()
                continue
            assert isinstance(result, Sleep)
            # The wheel would be popped every tick; sleeping only until the next due slot
            # (never longer than a tick) costs no more wakeups and is never late.
            timeout = min(tick, result.seconds) if wheel else result.seconds
            await _wait(self._wake, max(timeout, 0.001))

    def singleton_popped(self, batch: list[Message]) -> None:
        self._count -= len(batch)
        self._promote(self, by_priority(batch))

    def close(self) -> None:
        """Stop the maintainer. O(1): waiting messages are simply forgotten (they are spooled,
        with their due time, and come back at the next start)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self.reap_timer is not None:
            self.reap_timer.cancel()
            self.reap_timer = None


class SingletonWheel:
    """KumoMTA's default ``SingletonTimerWheel``: one wheel for every queue that uses it,
    ticked every 3 s by one task. Entries remember their queue."""

    def __init__(self, clock: Clock, tick: float = SINGLETON_TICK) -> None:
        self._clock = clock
        self._wheel: TimerWheel[Message] = TimerWheel(tick)
        self._owner: dict[str, ScheduledQueue] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._tick = tick

    def __len__(self) -> int:
        return len(self._wheel)

    def insert(self, queue: ScheduledQueue, msg: Message, now: float) -> None:
        assert msg.due is not None
        result = self._wheel.insert(msg.due, msg.id, msg, now)
        if isinstance(result, DueNow):
            queue.singleton_popped([msg])
            return
        self._owner[msg.id] = queue
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._maintain(), name="singleton")
        self._wake.set()

    def remove(self, msg_id: str) -> Message | None:
        self._owner.pop(msg_id, None)
        return self._wheel.remove(msg_id)

    async def _maintain(self) -> None:
        while True:
            result = self._wheel.pop(self._clock.now() + self._tick)
            if isinstance(result, Items):
                await _wait_for_batch(result.items, self._clock)
                batches: dict[int, tuple[ScheduledQueue, list[Message]]] = {}
                for msg in result.items:
                    queue = self._owner.pop(msg.id)
                    batches.setdefault(id(queue), (queue, []))[1].append(msg)
                for queue, batch in batches.values():
                    queue.singleton_popped(batch)
                continue
            self._wake.clear()
            if isinstance(result, Empty):
                await self._wake.wait()
                continue
            await _wait(self._wake, self._tick)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
