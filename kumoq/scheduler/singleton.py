"""KumoMTA's default strategy, ``SingletonTimerWheel``: one process-wide wheel for every
scheduled queue that uses it, ticked every 3 s by one supervised task (``SingletonWheel``).

Each entry remembers its queue (``WheelOwner``), which receives its due messages in batches.
For the admin API, ``page_for`` lists one queue's entries in due order while looking at a
bounded number of the wheel's entries per page, and ``take_for`` removes a queue's entries.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final, Protocol

from kumoq.clock import Clock
from kumoq.message import Message
from kumoq.scheduler.supervise import SINGLETON_TASK, supervise, wait_for_batch, wait_or_timeout
from kumoq.scheduler.timeq import Cursor, DueNow, Empty, Items, Page
from kumoq.scheduler.timerwheel import TimerWheel

__all__ = ["PAGE_SCAN_BUDGET", "SINGLETON_TICK", "SingletonWheel", "WheelOwner"]

log = logging.getLogger("kumoq.queue")

SINGLETON_TICK: Final = 3.0
PAGE_SCAN_BUDGET: Final = 100_000  # entries of the shared wheel one listing page may look at
PAGE_SCAN_CHUNK: Final = 1024


class WheelOwner(Protocol):
    """A scheduled queue, as the wheel sees it."""

    def singleton_popped(self, batch: list[Message]) -> None: ...


class SingletonWheel:
    """KumoMTA's default ``SingletonTimerWheel``: one wheel for every queue that uses it,
    ticked every 3 s by one task. Entries remember their queue."""

    def __init__(self, clock: Clock, tick: float = SINGLETON_TICK) -> None:
        self._clock = clock
        self._wheel: TimerWheel[Message] = TimerWheel(tick)
        self._owner: dict[str, WheelOwner] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._tick = tick

    def __len__(self) -> int:
        return len(self._wheel)

    def insert(self, queue: WheelOwner, msg: Message, now: float) -> None:
        assert msg.due is not None
        result = self._wheel.insert(msg.due, msg.id, msg, now)
        if isinstance(result, DueNow):
            queue.singleton_popped([msg])
            return
        self._owner[msg.id] = queue
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                supervise(self._maintain, "the process-wide timer wheel", SINGLETON_TASK),
                name="singleton",
            )
        self._wake.set()

    def remove(self, msg_id: str) -> Message | None:
        self._owner.pop(msg_id, None)
        return self._wheel.remove(msg_id)

    def get(self, queue: WheelOwner, msg_id: str) -> Message | None:
        return self._wheel.get(msg_id) if self._owner.get(msg_id) is queue else None

    def page_for(
        self, queue: WheelOwner, after: Cursor | None, limit: int
    ) -> tuple[list[Message], Cursor | None]:
        """``queue``'s entries after ``after`` in due order: up to ``limit``, having looked
        at no more than ``PAGE_SCAN_BUDGET`` entries of the shared wheel."""
        out: list[Message] = []
        scanned = 0
        owner = self._owner
        while len(out) < limit and scanned < PAGE_SCAN_BUDGET:
            page = self._wheel.page(after, PAGE_SCAN_CHUNK)
            scanned += len(page.entries)
            for _due, key, msg in page.entries:
                if owner.get(key) is queue:
                    out.append(msg)
                    if len(out) == limit:
                        return out, Cursor(self._order_of(key, page, after))
            if page.next is None:
                return out, None
            after = page.next
        return out, after

    def _order_of(self, key: str, page: Page[Message], after: Cursor | None) -> int:
        """The cursor order of ``key`` in ``page``: re-read the page up to it (rare: once per
        full page)."""
        again = self._wheel.page(after, PAGE_SCAN_CHUNK)
        position = next(i for i, entry in enumerate(again.entries) if entry[1] == key)
        short = self._wheel.page(after, position + 1)
        assert short.next is not None
        return short.next.order

    def take_for(self, queue: WheelOwner) -> list[Message]:
        """Remove and return every entry of ``queue``. O(entries of every queue)."""
        ids = [key for key, owner in self._owner.items() if owner is queue]
        out: list[Message] = []
        for key in ids:
            msg = self.remove(key)
            if msg is not None:
                out.append(msg)
        return out

    async def _maintain(self) -> None:
        while True:
            result = self._wheel.pop(self._clock.now() + self._tick)
            if isinstance(result, Items):
                await wait_for_batch(result.items, self._clock)
                batches: dict[int, tuple[WheelOwner, list[Message]]] = {}
                for msg in result.items:
                    queue = self._owner.pop(msg.id, None)
                    if queue is None:  # a bug: stays spooled, comes back at the next start
                        log.error(
                            "message %s: due in the process-wide wheel without a queue", msg.id
                        )
                        continue
                    batches.setdefault(id(queue), (queue, []))[1].append(msg)
                for queue, batch in batches.values():
                    queue.singleton_popped(batch)
                continue
            self._wake.clear()
            if isinstance(result, Empty):
                await self._wake.wait()
                continue
            await wait_or_timeout(self._wake, self._tick)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
