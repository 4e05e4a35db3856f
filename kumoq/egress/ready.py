"""The pure core of a ready queue (reference §1.8): its FIFO and the dispatcher decisions.

Owns:

- ``ReadyFifo``: the bounded FIFO of messages ready for delivery on one egress path
  (capacity ``max_ready``), served highest ``priority`` first and FIFO within a priority (a
  kumoq extension: 0 low, 1 normal, 2 high, 3 critical; see ``priority_of``).
- ``ideal_connection_count``: how many dispatchers the maintainer should be running.
- ``ConnectionFailureTracker``: consecutive connection failures across all MX candidates, and
  when the whole FIFO must be bulk-transfailed.
- ``classify_response``: the log record type for one recipient's SMTP response (§1.9, §3.3).
- ``throttle_decision``: sleep inline or requeue the ready queue when an egress throttle says
  wait (§3.4).
- ``expiry_deadline`` / ``expiration``: when a message waiting for delivery expires, and the
  ``Expiration`` it then gets (its ``max_age`` or ``set_scheduling{expires}``).
- ``plan_batch``: when a custom_lua ready queue sends its waiting messages (``send_batch``).

This module is pure (L0): no asyncio, sockets, file IO, lupa or clocks. It must not import
``kumoq.delivery``, ``kumoq.lua`` or ``kumoq.http``. (``priority_of`` is re-exported from
``kumoq.scheduler.scheduled`` so callers have one place to ask a message its priority.)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, Generic, Literal, Protocol, TypeVar, final

from kumoq.config.queue import CustomLuaProtocol
from kumoq.logs.records import RecordType, Response
from kumoq.message import DEFAULT_PRIORITY, Message, priority_of
from kumoq.scheduler.attempt import Attempt
from kumoq.scheduler.retry import expiry_after_increment, expiry_without_increment
from kumoq.scheduler.scheduling import expires_of

__all__ = [
    "BULK_DELAY_RESPONSE",
    "CONNECTION_CURVE_FACTOR",
    "DEFAULT_CONSECUTIVE_CONNECTION_FAILURES_BEFORE_DELAY",
    "DEFAULT_MAX_READY",
    "DEFAULT_PRIORITY",
    "MAX_PRIORITY",
    "BatchPlan",
    "ConnectionFailureTracker",
    "Idle",
    "Proceed",
    "ReadyFifo",
    "RecordKind",
    "RequeueQueue",
    "SendNow",
    "SleepInline",
    "ThrottleDecision",
    "ThrottleOutcome",
    "WaitFor",
    "classify_response",
    "expiration",
    "expiry_deadline",
    "ideal_connection_count",
    "plan_batch",
    "priority_of",
    "throttle_decision",
]

T = TypeVar("T")

DEFAULT_MAX_READY: Final = 1024
MAX_PRIORITY: Final = 3
CONNECTION_CURVE_FACTOR: Final = 0.023
DEFAULT_CONSECUTIVE_CONNECTION_FAILURES_BEFORE_DELAY: Final = 100

BULK_DELAY_RESPONSE: Final = (
    "451 4.4.1 bulk delay of ready queue: too many successive connection failures "
    "where there was no answer from any hosts listed in MX"
)
"""The response logged (``TransientFailure``) for every message bulk-transfailed by the
failure tracker. Code 451, enhanced 4.4.1, then the text."""


@final
class ReadyFifo(Generic[T]):
    """A FIFO of at most ``capacity`` items, served highest priority first.

    One deque per priority 0..3; ``pop`` looks at most at four deques, so every operation
    except ``drain`` and ``set_capacity`` is O(1). A full FIFO refuses the push
    (``try_push`` returns False); the caller sends the message back to its scheduled queue
    with a ``Delayed`` ``ReadyQueueWasFull`` record.
    """

    __slots__ = ("_capacity", "_desc", "_len", "_queues")

    def __init__(self, capacity: int = DEFAULT_MAX_READY) -> None:
        if capacity < 0:
            raise ValueError(f"ready queue capacity must be >= 0, not {capacity}")
        self._capacity = capacity
        self._queues: tuple[deque[T], ...] = tuple(deque() for _ in range(MAX_PRIORITY + 1))
        self._desc: tuple[deque[T], ...] = self._queues[::-1]
        self._len = 0

    @property
    def capacity(self) -> int:
        """The current ``max_ready``."""
        return self._capacity

    def __len__(self) -> int:
        """How many items are waiting. O(1)."""
        return self._len

    def __repr__(self) -> str:
        counts = ", ".join(f"p{p}={len(q)}" for p, q in enumerate(self._queues) if q)
        return (
            f"ReadyFifo(len={self._len}, capacity={self._capacity}{', ' if counts else ''}{counts})"
        )

    def is_full(self) -> bool:
        """True when a ``try_push`` would be refused. O(1)."""
        return self._len >= self._capacity

    def count(self, priority: int) -> int:
        """How many items of ``priority`` are waiting. O(1)."""
        return len(self._queues[_checked(priority)])

    def try_push(self, item: T, priority: int = DEFAULT_PRIORITY) -> bool:
        """Append ``item`` at ``priority`` (0..3); False (and nothing stored) when full. O(1).

        Raises ValueError for a priority outside 0..3 (``priority_of`` never returns one).
        """
        queue = self._queues[_checked(priority)]
        if self._len >= self._capacity:
            return False
        queue.append(item)
        self._len += 1
        return True

    def pop(self) -> T | None:
        """The oldest item of the highest non-empty priority, or None when empty. O(1)."""
        if not self._len:
            return None
        for queue in self._desc:
            if queue:
                self._len -= 1
                return queue.popleft()
        raise AssertionError("ReadyFifo length out of step with its deques")  # pragma: no cover

    def __iter__(self) -> Iterator[T]:
        """Every item, in pop order. O(n)."""
        for queue in self._desc:
            yield from queue

    def remove_if(self, predicate: Callable[[T], bool]) -> list[T]:
        """Remove and return the items ``predicate`` selects, in pop order (the expiry
        sweep). O(n)."""
        removed: list[T] = []
        for queue in self._desc:
            for _ in range(len(queue)):  # one turn of the deque keeps the order of the rest
                item = queue.popleft()
                if predicate(item):
                    removed.append(item)
                else:
                    queue.append(item)
        self._len -= len(removed)
        return removed

    def drain(self) -> list[T]:
        """Remove and return every item, in pop order (priority, then FIFO). O(n)."""
        items: list[T] = []
        for queue in self._desc:
            items.extend(queue)
            queue.clear()
        self._len = 0
        return items

    def set_capacity(self, capacity: int) -> list[T]:
        """Change ``max_ready`` (a config refresh); return the overflow to requeue. O(overflow).

        When the new capacity is below the current length, the excess leaves from the back:
        lowest priority first, newest first within a priority (the items that would have been
        served last). KumoMTA logs these as ``MaxReadyWasReducedByConfigUpdate``.
        """
        if capacity < 0:
            raise ValueError(f"ready queue capacity must be >= 0, not {capacity}")
        self._capacity = capacity
        excess = self._len - capacity
        if excess <= 0:
            return []
        overflow: list[T] = []
        for queue in self._queues:
            while queue and excess:
                overflow.append(queue.pop())
                excess -= 1
            if not excess:
                break
        self._len -= len(overflow)
        return overflow

    def _check(self) -> None:
        """Assert the invariants (for tests). O(1)."""
        assert len(self._queues) == MAX_PRIORITY + 1
        assert self._desc == self._queues[::-1]
        assert self._len == sum(len(q) for q in self._queues)
        assert 0 <= self._len <= self._capacity


def _checked(priority: int) -> int:
    if 0 <= priority <= MAX_PRIORITY:
        return priority
    raise ValueError(f"priority must be 0..{MAX_PRIORITY}, not {priority!r}")


def expiry_deadline(msg: Message, max_age: float) -> float:
    """When ``msg`` expires while it waits for delivery (unix seconds): its
    ``set_scheduling{expires}`` when set (``max_age`` is then ignored, §3.2), else its
    creation time plus ``max_age``. O(1)."""
    expires = expires_of(msg.schedule)
    return expires if expires is not None else msg.created + max_age


def expiration(msg: Message, max_age: float, now: float) -> Attempt | None:
    """The ``Expiration`` of a message still waiting for delivery at ``now``, or None while
    it has time (``now`` before ``expiry_deadline``). O(1).

    The response is the one the queue manager logs for an expiry at requeue: without an
    attempt increment for ``max_age`` (``Next delivery time PT…S > PT…S``, site
    ``localhost``), and for a ``set_scheduling{expires}`` the text of that expiry.
    """
    expires = expires_of(msg.schedule)
    if expires is not None:
        expired = expiry_after_increment(msg.created, now, 0.0, max_age, expires, next_due=now)
    else:
        expired = expiry_without_increment(msg.created, now, max_age)
    if expired is None:
        return None
    response = Response(expired.code, expired.enhanced_code, expired.content, None)
    return Attempt(RecordType.Expiration, response, site=expired.site)


def ideal_connection_count(queue_len: int, connection_limit: int) -> int:
    """How many connections a ready queue of ``queue_len`` messages should have open.

    ``ceil(min(limit * (1 - exp(-0.023 * queue_len)), queue_len))``: an exponential curve that
    passes through 0, rises about one connection per message for short queues and approaches
    ``connection_limit`` (never exceeding it or ``queue_len``). For a limit of 32: 1 -> 1,
    10 -> 7, 32 -> 17, 64 -> 25, 128 -> 31, 256 -> 32. O(1).
    """
    if queue_len <= 0 or connection_limit <= 0:
        return 0
    goal = connection_limit * (1.0 - math.exp(-CONNECTION_CURVE_FACTOR * queue_len))
    return min(math.ceil(goal), queue_len)


@final
class ConnectionFailureTracker:
    """Consecutive failures to connect to any MX candidate, shared by a ready queue's dispatchers.

    ``record_failure`` is called once per dispatcher that failed on every candidate (after it
    has transfailed and requeued its own message). KumoMTA compares the count *before* this
    failure (``fetch_add(1) > limit``) with ``consecutive_connection_failures_before_delay``,
    so with the default 100 the 102nd consecutive failure is the first to demand a bulk delay;
    every further failure demands one again until a connection succeeds. On True the caller
    drains the FIFO and logs ``TransientFailure`` ``BULK_DELAY_RESPONSE`` for each message,
    requeueing with an increment. ``record_success`` (a connection was made) resets the count.
    """

    __slots__ = ("_count", "limit")

    def __init__(self, limit: int = DEFAULT_CONSECUTIVE_CONNECTION_FAILURES_BEFORE_DELAY) -> None:
        self.limit = limit
        self._count = 0

    @property
    def count(self) -> int:
        """Consecutive failures recorded since the last success."""
        return self._count

    def record_failure(self) -> bool:
        """Count one failure; True when the whole FIFO must now be bulk-transfailed."""
        previous = self._count
        self._count = previous + 1
        return previous > self.limit

    def record_success(self) -> None:
        """A connection succeeded: start counting again from zero."""
        self._count = 0

    def __repr__(self) -> str:
        return f"ConnectionFailureTracker(count={self._count}, limit={self.limit})"


RecordKind = Literal["Delivery", "TransientFailure", "Bounce"]

_TOO_MANY_RECIPIENTS: Final = "too many recipients"


def classify_response(code: int, text: str) -> RecordKind:
    """The record type for one recipient's response (KumoMTA ``classify_record``).

    2xx: ``Delivery``. 3xx, 4xx, 503, or a text containing ``too many recipients`` (matched
    case-sensitively, as KumoMTA does): ``TransientFailure``. Anything else: ``Bounce``.
    """
    if 200 <= code < 300:
        return "Delivery"
    if 300 <= code < 500 or code == 503 or _TOO_MANY_RECIPIENTS in text:
        return "TransientFailure"
    return "Bounce"


class ThrottleOutcome(Protocol):
    """What ``throttle_decision`` reads of a ``kumoq.throttle.ThrottleResult``."""

    @property
    def throttled(self) -> bool: ...

    @property
    def retry_after(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class Proceed:
    """Not throttled: go ahead (connect or deliver)."""


@dataclass(frozen=True, slots=True)
class SleepInline:
    """Throttled briefly: the dispatcher sleeps ``seconds`` then checks again."""

    seconds: float


@dataclass(frozen=True, slots=True)
class RequeueQueue:
    """Throttled for at least ``idle_timeout``: requeue every message in the FIFO and in flight
    with ``IncrementAttempts::No`` and ``delay``, log ``Delayed`` (``MessageRateThrottle`` or
    ``ConnectionRateThrottle``), and end the dispatcher."""

    delay: float


ThrottleDecision = Proceed | SleepInline | RequeueQueue

_PROCEED: Final = Proceed()


def throttle_decision(result: ThrottleOutcome, idle_timeout: float) -> ThrottleDecision:
    """Sleep inline when ``retry_after < idle_timeout``, otherwise requeue the ready queue.

    Applies to the egress ``max_message_rate`` (checked before each delivery) and
    ``max_connection_rate`` (before each connect). A throttled result without a
    ``retry_after`` (not produced by ``kumoq.throttle``) is treated as a zero-second sleep.
    """
    if not result.throttled:
        return _PROCEED
    retry_after = result.retry_after or 0.0
    if retry_after < idle_timeout:
        return SleepInline(retry_after)
    return RequeueQueue(retry_after)


# -- custom_lua batch assembly ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendNow:
    """Send the ``count`` oldest waiting messages now."""

    count: int


@dataclass(frozen=True, slots=True)
class WaitFor:
    """Too few messages wait: look again after ``seconds``, or when one more arrives."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Idle:
    """Nothing waits."""


BatchPlan = SendNow | WaitFor | Idle


def plan_batch(
    waiting: int, oldest_arrival: float, now: float, protocol: CustomLuaProtocol
) -> BatchPlan:
    """What to do with ``waiting`` messages, the oldest of which arrived at ``oldest_arrival``
    (monotonic seconds, like ``now``). O(1)."""
    if waiting <= 0:
        return Idle()
    if waiting >= protocol.min_batch_size:
        return SendNow(min(waiting, protocol.batch_size))
    remaining = oldest_arrival + protocol.max_batch_latency - now
    if remaining <= 0:
        return SendNow(waiting)  # fewer than min_batch_size <= batch_size
    return WaitFor(remaining)
