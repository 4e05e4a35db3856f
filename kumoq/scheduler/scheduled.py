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

Messages held back by the queue's ``max_message_rate`` do not go into that structure: they wait
in the queue's *pacing line* (a kumoq design, whatever the strategy). Each gets a release slot,
the throttle's exact wait or one ``period / limit`` after the line's last slot, whichever is
later, and at each slot the line's highest-priority message (FIFO within a priority) is
promoted. So a backlog leaves at the configured rate, each held message is held once, and no
tick rounds a slot up.

Supervision: a promotion that raises is logged with the queue's name and counted in
``supervised_task_restarts``; its batch is promoted one by one, and each message that fails
alone waits again for a backoff (1 s doubling to 30 s while it keeps failing), so nothing is
lost, a poison message holds up no other, and a failing promotion cannot spin. A maintainer
that fails anywhere else is restarted after the same backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol

from kumoq.clock import Clock
from kumoq.config.queue import QueueConfig, QueueStrategy
from kumoq.message import DEFAULT_PRIORITY, Message, QueueNameParts, priority_of
from kumoq.metrics import SUPERVISED_TASK_RESTARTS
from kumoq.scheduler.singleton import SINGLETON_TICK, SingletonWheel
from kumoq.scheduler.skiplist import SkipList
from kumoq.scheduler.supervise import (
    MAINTAINER_TASK,
    RESTART_BACKOFF,
    RESTART_BACKOFF_MAX,
    SINGLETON_TASK,
    restart_backoff,
    supervise,
    wait_for_batch,
    wait_or_timeout,
)
from kumoq.scheduler.timeq import Cursor, DueNow, Empty, Items, Page, Sleep
from kumoq.scheduler.timerwheel import TimerWheel

__all__ = [
    "DEFAULT_PRIORITY",
    "PACE_MARGIN",
    "RESTART_BACKOFF",
    "RESTART_BACKOFF_MAX",
    "SINGLETON_TICK",
    "ScheduledQueue",
    "SingletonWheel",
    "by_priority",
    "priority_of",
    "restart_backoff",
]

log = logging.getLogger("kumoq.queue")

# A paced message is released this long after the throttle's exact slot: more than the rounding
# of a float unix time (about 0.24 us), so the throttle always admits it at its slot.
PACE_MARGIN: Final = 0.001


# Hands due messages to the manager. It hands over every message or raises before handing
# over any: after an exception the whole batch is held again and retried.
Promote = Callable[["ScheduledQueue", list[Message]], None]


def _parse_cursor(cursor: str | None) -> tuple[str, int]:
    """``s<order>`` (in the timer structure) or ``p<n>`` (the pacing line's n-th message)."""
    if not cursor:
        return "s", -1
    phase, digits = cursor[:1], cursor[1:]
    if phase not in ("s", "p") or not digits.isdigit():
        raise ValueError(f"not a cursor this queue gave out: {cursor!r}")
    return phase, int(digits)


def by_priority(batch: list[Message]) -> list[Message]:
    """Highest priority first; due order (the batch's order) kept within a priority. O(n log n)."""
    if len(batch) > 1:
        batch.sort(key=priority_of, reverse=True)
    return batch


class _Structure(Protocol):
    """What a scheduled queue needs of its timer structure (TimerWheel, SkipList)."""

    @property
    def resolution(self) -> float: ...

    def insert(self, due: float, key: str, item: Message, now: float) -> object: ...

    def pop(self, now: float) -> object: ...

    def remove(self, key: str) -> Message | None: ...

    def get(self, key: str) -> Message | None: ...

    def page(self, after: Cursor | None, limit: int) -> Page[Message]: ...

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
        self._failed: dict[str, int] = {}  # message id -> promotions of it that raised in a row
        self._line_failures = 0  # pacing-line releases that raised in a row
        if self.strategy is QueueStrategy.TIMER_WHEEL:
            self._structure = TimerWheel[Message](config.tick_interval())
        elif self.strategy is QueueStrategy.SKIP_LIST:
            self._structure = SkipList[Message]()
        else:
            self._singleton = singleton
        self._count = 0  # messages held in the singleton wheel for this queue
        # The pacing line: held messages by (-priority, seq); id -> seq of the live entry; one
        # release slot per held message, ascending; slots chain from an anchor: anchor + k * T.
        self._paced: list[tuple[int, int, Message]] = []
        self._paced_seq: dict[str, tuple[int, Message]] = {}
        self._slots: deque[float] = deque()
        self._seq = 0
        self._pace_anchor = 0.0
        self._pace_spacing = 0.0
        self._pace_count = 0
        self._release_timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        held = len(self._paced_seq)
        if self._structure is not None:
            return held + len(self._structure)
        return held + self._count

    def pace(self, earliest: float, spacing: float) -> float:
        """The release slot the next message held back by ``max_message_rate`` would get: its
        throttle's exact ``earliest`` time plus ``PACE_MARGIN``, or ``spacing`` (``period /
        limit``) after the line's last slot, whichever is later. No side effect. O(1)."""
        earliest += PACE_MARGIN
        if not self._slots:
            return earliest
        if spacing == self._pace_spacing:
            chained = self._pace_anchor + self._pace_count * spacing  # one rounding, not k
        else:
            chained = self._slots[-1] + spacing
        return max(earliest, chained)

    def insert_delayed(self, msg: Message, due: float, *, pace: float | None = None) -> None:
        """Hold ``msg`` until ``due``; a due time already past promotes it at once. O(1) for
        the wheels, O(log n) for the SkipList. ``pace``: ``msg`` was held back by the rate and
        ``due`` came from ``pace(earliest, pace)``: it waits in the pacing line. O(log n)."""
        now = self._clock.now()
        msg.due = due
        msg.data = None  # deferred messages do not keep their body in memory
        self.idle_since = None
        if pace is not None and due > now and (not self._slots or due >= self._slots[-1]):
            self._hold_paced(msg, due, pace)
            return
        if self._singleton is not None:
            self._count += 1
            self._singleton.insert(self, msg, now)
            return
        assert self._structure is not None
        result = self._structure.insert(due, msg.id, msg, now)
        if isinstance(result, DueNow):
            self._promote_or_hold([msg], MAINTAINER_TASK)
            return
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                supervise(self._maintain, f"queue {self.name}: its maintainer", MAINTAINER_TASK),
                name=f"maintain {self.name}",
            )
        if self.strategy is QueueStrategy.SKIP_LIST and getattr(result, "head_changed", True):
            self._wake.set()
        elif len(self._structure) == 1:
            self._wake.set()  # a TimerWheel maintainer sleeping on an empty queue

    def remove(self, msg_id: str) -> Message | None:
        held = self._paced_seq.pop(msg_id, None)
        if held is not None:
            self._slots.pop()  # one slot fewer; the entry in the heap is skipped when popped
            return held[1]
        if self._structure is not None:
            return self._structure.remove(msg_id)
        if self._singleton is not None:
            msg = self._singleton.remove(msg_id)
            if msg is not None:
                self._count -= 1
            return msg
        return None

    # -- looking inside (the admin API) ---------------------------------------------------------

    def get(self, msg_id: str) -> Message | None:
        """The waiting message ``msg_id`` (in the timer structure or the pacing line). O(1)."""
        held = self._paced_seq.get(msg_id)
        if held is not None:
            return held[1]
        if self._structure is not None:
            return self._structure.get(msg_id)
        if self._singleton is not None:
            return self._singleton.get(self, msg_id)
        return None

    def is_paced(self, msg_id: str) -> bool:
        return msg_id in self._paced_seq

    def page(self, cursor: str | None, limit: int) -> tuple[list[Message], str | None]:
        """Up to ``limit`` waiting messages after ``cursor`` (``None``: from the start), in
        due order, then the pacing line's; and the cursor of the next page (``None``: the
        end). A page may hold fewer than ``limit`` when the process-wide wheel had to be
        scanned past ``PAGE_SCAN_BUDGET`` entries of other queues. Raises ValueError for a
        cursor that does not parse. O(limit + skipped) per page, never O(queue)."""
        phase, position = _parse_cursor(cursor)
        out: list[Message] = []
        if phase == "s":
            after = Cursor(position) if position >= 0 else None
            if self._structure is not None:
                page = self._structure.page(after, limit)
                out = [entry[2] for entry in page.entries]
                if page.next is not None:
                    return out, f"s{page.next.order}"
            elif self._singleton is not None:
                out, more = self._singleton.page_for(self, after, limit)
                if more is not None:
                    return out, f"s{more.order}"
            phase, position = "p", 0
        held = list(self._paced_seq.values())[position : position + limit - len(out)]
        out += [msg for _, msg in held]
        end = position + len(held)
        return out, (f"p{end}" if end < len(self._paced_seq) else None)

    def take_all(self) -> list[Message]:
        """Remove and return every waiting message (an admin bounce or rebind). O(n log n)."""
        out = [msg for _, msg in self._paced_seq.values()]
        self._paced_seq.clear()
        self._paced.clear()
        self._slots.clear()
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._release_timer = None
        if self._structure is not None:
            out += self._structure.drain()
        elif self._singleton is not None:
            taken = self._singleton.take_for(self)
            self._count -= len(taken)
            out += taken
        return out

    def _hold_paced(self, msg: Message, due: float, spacing: float) -> None:
        if (
            self._slots
            and spacing == self._pace_spacing
            and due == self._pace_anchor + self._pace_count * spacing
        ):
            self._pace_count += 1
        else:
            self._pace_anchor, self._pace_spacing, self._pace_count = due, spacing, 1
        self._seq += 1
        self._paced_seq[msg.id] = (self._seq, msg)
        heapq.heappush(self._paced, (-priority_of(msg), self._seq, msg))
        self._slots.append(due)
        if self._release_timer is None:
            self._arm_release(due)

    def _arm_release(self, at: float) -> None:
        delay = max(0.0, at - self._clock.now())
        self._release_timer = asyncio.get_running_loop().call_later(delay, self._release)

    def _release(self) -> None:
        """At a slot: promote the best held message per slot that has come."""
        self._release_timer = None
        now = self._clock.now()
        retry_at = 0.0
        try:
            batch: list[Message] = []
            while self._slots and self._slots[0] <= now:
                self._slots.popleft()
                while self._paced:
                    _, seq, msg = heapq.heappop(self._paced)
                    if self._paced_seq.get(msg.id, (0, None))[0] == seq:
                        del self._paced_seq[msg.id]
                        batch.append(msg)
                        break
            if batch:
                self._promote_or_hold(batch, MAINTAINER_TASK)
        except Exception:  # a timer callback has no supervisor: this is it
            self._line_failures += 1
            retry_at = now + restart_backoff(self._line_failures)
            log.exception("queue %s: its pacing line failed; releasing again later", self.name)
            SUPERVISED_TASK_RESTARTS.labels(task=MAINTAINER_TASK).inc()
        else:
            self._line_failures = 0
        if self._slots and self._release_timer is None:
            # Also re-arms a timer that fired a little early (monotonic vs wall clock).
            self._arm_release(max(self._slots[0], retry_at))

    def _promote_or_hold(self, batch: list[Message], task: str) -> None:
        """Promote ``batch``. If that raises, log and count it, promote the batch's messages one
        by one, and hold those that fail alone again for a backoff that grows per message: a
        poison message neither blocks its batch nor comes back faster in a busy queue."""
        try:
            self._promote(self, batch)
        except Exception:
            failed = batch if len(batch) == 1 else [m for m in batch if not self._alone(m)]
            failures = 1 + max((self._failed.get(m.id, 0) for m in failed), default=0)
            delay = restart_backoff(failures)
            log.exception(
                "queue %s: promoting %d due message(s) failed; %d held again for %.0f s",
                self.name,
                len(batch),
                len(failed),
                delay,
            )
            SUPERVISED_TASK_RESTARTS.labels(task=task).inc()
            for msg in batch:
                self._failed.pop(msg.id, None)
            due = self._clock.now() + delay
            for msg in failed:
                self._failed[msg.id] = failures
                with contextlib.suppress(ValueError):  # already held again: it was handed over
                    self.insert_delayed(msg, due)
        else:
            if self._failed:
                for msg in batch:
                    self._failed.pop(msg.id, None)

    def _alone(self, msg: Message) -> bool:
        """Promote one message; False if that raised (nothing was handed over)."""
        try:
            self._promote(self, [msg])
        except Exception:
            return False
        return True

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
                await wait_for_batch(result.items, clock)
                self._promote_or_hold(by_priority(list(result.items)), MAINTAINER_TASK)
                continue
            self._wake.clear()
            if isinstance(result, Empty):
                await self._wake.wait()
                continue
            assert isinstance(result, Sleep)
            # The wheel would be popped every tick; sleeping only until the next due slot
            # (never longer than a tick) costs no more wakeups and is never late.
            timeout = min(tick, result.seconds) if wheel else result.seconds
            await wait_or_timeout(self._wake, max(timeout, 0.001))

    def note_idle(self, reap: Callable[[ScheduledQueue], None]) -> None:
        """Note that the queue may have become idle: once it has held no message and no attempt
        for ``reap_interval``, call ``reap(self)``. At most one reap timer is pending."""
        if len(self) or self.in_flight:
            return
        self.idle_since = self._clock.monotonic()
        if self.reap_timer is None:
            self._arm_reap(self.config.reap_interval, reap)

    def _arm_reap(self, delay: float, reap: Callable[[ScheduledQueue], None]) -> None:
        self.reap_timer = asyncio.get_running_loop().call_later(delay, self._reap_if_idle, reap)

    def _reap_if_idle(self, reap: Callable[[ScheduledQueue], None]) -> None:
        self.reap_timer = None
        if len(self) or self.in_flight or self.idle_since is None:
            return  # busy again: the next time it empties, a new timer is set
        remaining = self.idle_since + self.config.reap_interval - self._clock.monotonic()
        if remaining > 0:  # it was busy in between; wait for the rest of the idle time
            self._arm_reap(remaining, reap)
            return
        reap(self)

    def singleton_popped(self, batch: list[Message]) -> None:
        self._count -= len(batch)
        self._promote_or_hold(by_priority(batch), SINGLETON_TASK)

    def close(self) -> None:
        """Stop the maintainer. O(1): waiting messages are simply forgotten (they are spooled,
        with their due time, and come back at the next start)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._release_timer = None
        if self.reap_timer is not None:
            self.reap_timer.cancel()
            self.reap_timer = None
