"""One SMTP egress path, ``<source>-><site>@smtp_client``, and the attempts it reports.

A ``ReadyQueue`` holds the path's config (``get_egress_path_config``, refreshed every
``refresh_interval``), its priority FIFO of messages waiting for a connection (``max_ready``),
how many dispatchers serve it, and its run of connection failures. ``ReadyQueue.attempt``
turns an outcome into the scheduler's ``Attempt`` with the record fields KumoMTA logs for
egress (``site``, ``egress_pool``, ``egress_source``, ``source_address``, ``tls_*``).

Expiry while waiting: each waiting message knows its deadline (``max_age`` or
``set_scheduling{expires}``). The ready queue's ``ExpiryTimer`` fires at the earliest one and
``expire_due`` settles every message past its deadline, in the FIFO or ``held`` by a dispatcher
that has not started its transaction (waiting for a connection or a throttle), with its
``Expiration``; the queue manager logs it and removes the message from the spool.

Reaping: a ``ReadyRegistry`` holds the ready queues by name and drops one that has had nothing
in progress (no message waiting, no dispatcher, no session open) for ``reap_interval`` after
its last use: KumoMTA's ``AGE_OUT_INTERVAL``, 10 minutes. The custom_lua ready queues use the
same registry for their connections.

Imports asyncio (the idle sessions' waits, the expiry timer and each waiting message's
future); never a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from kumoq.clock import Clock, SystemClock
from kumoq.config.egress import EgressPathConfig, EgressSource
from kumoq.delivery.smtp import SmtpClientSession
from kumoq.dns.site_name import MailExchanger
from kumoq.egress.ready import ConnectionFailureTracker, ReadyFifo, expiration
from kumoq.logs.records import RecordType, Response, SourceAddress
from kumoq.message import Message
from kumoq.scheduler.attempt import Attempt

__all__ = [
    "READY_QUEUE_REAP_INTERVAL",
    "SMTP_PROTO",
    "ExpiryTimer",
    "QueuedMessage",
    "ReadyQueue",
    "ReadyRegistry",
    "settle_expired",
    "transient",
]

log = logging.getLogger("kumoq.egress")

SMTP_PROTO: Final = "smtp_client"

READY_QUEUE_REAP_INTERVAL: Final = 600.0
"""How long a ready queue stays with nothing in progress after its last use before it is
reaped: KumoMTA's ``AGE_OUT_INTERVAL`` (10 minutes; not a config key in KumoMTA either)."""

T = TypeVar("T")


def transient(
    content: str, code: int = 451, enhanced: tuple[int, int, int] | None = (4, 4, 4)
) -> Response:
    """A transient-failure response kumoq made up itself (no server said it)."""
    return Response(code=code, enhanced_code=enhanced, content=content, command=None)


@dataclass(slots=True, eq=False)
class QueuedMessage:
    """A message waiting in a ready queue; its future receives the attempt's outcome.

    ``deadline`` (unix seconds, ``expiry_deadline``) is when it expires if still waiting;
    ``max_age`` is its queue's, for the ``Expiration`` text."""

    msg: Message
    future: asyncio.Future[Attempt]
    deadline: float = math.inf
    max_age: float = math.inf

    def expire(self, now: float) -> bool:
        """Settle with its ``Expiration`` if ``now`` is past the deadline; True if settled
        (or already settled: nothing is left to attempt)."""
        return settle_expired(self.future, self.msg, self.deadline, self.max_age, now)


def settle_expired(
    future: asyncio.Future[Attempt], msg: Message, deadline: float, max_age: float, now: float
) -> bool:
    """Give ``future`` the ``Expiration`` of ``msg`` when ``now`` is past ``deadline``; True
    when ``future`` is settled (now, or before: nothing is left to attempt)."""
    if future.done():
        return True
    if now < deadline:
        return False
    attempt = expiration(msg, max_age, now)
    if attempt is None:  # pragma: no cover - expiry_deadline and expiration agree
        return False
    future.set_result(attempt)
    return True


class IdleSessions:
    """The dispatchers of one ready queue that hold an open session and wait for a message.

    ``wait(deadline)`` parks the caller until ``wake_one`` picks it or ``deadline`` (loop time)
    passes; ``wake_one`` resumes the dispatcher that went idle last (LIFO: the sessions idle
    longest are the ones that reach ``idle_timeout`` and close). A woken dispatcher still
    checks the FIFO itself: another one may have taken the message first."""

    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: deque[asyncio.Future[bool]] = deque()

    def __len__(self) -> int:
        return len(self._waiting)

    async def wait(self, deadline: float, loop: asyncio.AbstractEventLoop) -> bool:
        """True when woken, False when ``deadline`` (``loop.time()``) passed first."""
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiting.append(waiter)
        timer = loop.call_at(deadline, _time_out, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            if waiter.cancelled() or not waiter.done() or not waiter.result():
                # timed out or cancelled: still in the deque, unless wake_one skipped it
                with contextlib.suppress(ValueError):
                    self._waiting.remove(waiter)

    def wake_one(self) -> bool:
        """Resume one idle dispatcher; False when none waits."""
        waiting = self._waiting
        while waiting:
            waiter = waiting.pop()
            if not waiter.done():
                waiter.set_result(True)
                return True
        return False

    def wake_all(self) -> None:
        while self.wake_one():
            pass


def _time_out(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class ExpiryTimer:
    """One timer at the earliest deadline of the messages waiting somewhere (a ready queue,
    a batch). ``watch(deadline)`` brings it forward when needed; when it fires it calls
    ``sweep(now)``, which settles what is due and returns the next deadline (``inf``: none)."""

    __slots__ = ("_at", "_clock", "_handle", "_sweep")

    def __init__(self, clock: Clock, sweep: Callable[[float], float]) -> None:
        self._clock = clock
        self._sweep = sweep
        self._handle: asyncio.TimerHandle | None = None
        self._at = math.inf

    def watch(self, deadline: float) -> None:
        if deadline < self._at:
            self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        self.cancel()
        if deadline == math.inf:
            return
        self._at = deadline
        delay = max(0.0, deadline - self._clock.now())
        self._handle = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._at = math.inf
        self._arm(self._sweep(self._clock.now()))

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._at = math.inf


@dataclass(eq=False)
class ReadyQueue:
    """One egress path: ``<source>-><site>@smtp_client``."""

    name: str
    source: EgressSource
    pool: str
    site_name: str
    routing_domain: str
    exchanger: MailExchanger | None
    mx_list: tuple[Any, ...] | None
    path: EgressPathConfig
    path_until: float
    fifo: ReadyFifo[QueuedMessage] = field(init=False)
    clock: Clock = field(default_factory=SystemClock)
    dispatchers: int = 0
    #: dispatcher tasks not ended yet (one may still be closing its session)
    running: int = 0
    #: dispatchers with a session open and nothing to send, waiting up to ``idle_timeout``
    idle: IdleSessions = field(default_factory=IdleSessions)
    failures: ConnectionFailureTracker = field(init=False)
    #: popped by a dispatcher that has not started its transaction yet
    held: set[QueuedMessage] = field(default_factory=set)
    expiry: ExpiryTimer = field(init=False)
    #: the connection limit (``connection_limit`` or an ``additional_connection_limits`` key)
    #: that refused a new connection; no connection is opened until a slot of it frees
    connection_limited: str | None = None

    def __post_init__(self) -> None:
        self.fifo = ReadyFifo(self.path.max_ready)
        self.failures = ConnectionFailureTracker(
            self.path.consecutive_connection_failures_before_delay
        )
        self.expiry = ExpiryTimer(self.clock, self.expire_due)

    def busy(self) -> bool:
        """Anything in progress: a message waiting or held, a dispatcher or its session."""
        return bool(self.running or self.dispatchers or len(self.fifo) or self.held)

    def close(self) -> None:
        """Drop its timer (reaped, or shut down)."""
        self.expiry.cancel()

    def push(self, item: QueuedMessage, priority: int) -> bool:
        """Queue ``item`` (False when the FIFO is full) and watch its deadline."""
        if not self.fifo.try_push(item, priority):
            return False
        self.expiry.watch(item.deadline)
        return True

    def expire_due(self, now: float) -> float:
        """Settle every waiting message past its deadline at ``now`` with its ``Expiration``
        (those in the FIFO leave it; a held one is skipped by its dispatcher); return the next
        deadline of those still waiting. O(n)."""
        self.fifo.remove_if(lambda item: item.expire(now))
        for item in self.held:
            item.expire(now)
        waiting = itertools.chain(self.fifo, self.held)
        return min((it.deadline for it in waiting if not it.future.done()), default=math.inf)

    def attempt(
        self, disposition: RecordType, response: Response, session: SmtpClientSession | None = None
    ) -> Attempt:
        """The outcome of an attempt on this path, with its egress record fields."""
        extra: dict[str, Any] = {"egress_pool": self.pool, "egress_source": self.source.name}
        peer = None
        session_id = None
        if session is not None:
            peer = session.peer
            session_id = session.session_id
            extra["source_address"] = SourceAddress(address=session.source_address)
            if session.tls is not None:
                extra["tls_cipher"] = session.tls.cipher
                extra["tls_protocol_version"] = session.tls.protocol_version
                extra["tls_peer_subject_name"] = session.tls.peer_subject_name
        return Attempt(
            disposition,
            response,
            site=self.name,
            delivery_protocol="ESMTP",
            peer_address=peer,
            session_id=session_id,
            extra=extra,
        )

    def settle_all(self, attempt: Attempt, first: QueuedMessage | None = None) -> None:
        """Give ``attempt`` to ``first`` and to every message waiting in the FIFO."""
        waiting = [first, *self.fifo.drain()] if first is not None else self.fifo.drain()
        for item in waiting:
            if not item.future.done():
                item.future.set_result(attempt)


@dataclass(slots=True, eq=False)
class _Entry(Generic[T]):
    value: T
    last_used: float
    timer: asyncio.TimerHandle | None = None


class ReadyRegistry(Generic[T]):
    """Ready queues (or the state of any egress path) by name, each reaped once it has had
    nothing in progress (``busy`` false) for ``reap_interval`` after its last use (``add``,
    ``touch``); ``reaped(value)`` is then called. Whoever ends a piece of work calls
    ``idle(name)``; at most one timer per entry is pending, and none once it is busy again."""

    __slots__ = ("_busy", "_clock", "_closed", "_entries", "_reaped", "reap_interval")

    def __init__(
        self,
        clock: Clock,
        *,
        busy: Callable[[T], bool],
        reaped: Callable[[T], None],
        reap_interval: float = READY_QUEUE_REAP_INTERVAL,
    ) -> None:
        self._clock = clock
        self._busy = busy
        self._reaped = reaped
        self.reap_interval = reap_interval
        self._entries: dict[str, _Entry[T]] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> T | None:
        entry = self._entries.get(name)
        return None if entry is None else entry.value

    def values(self) -> Iterator[T]:
        return (entry.value for entry in self._entries.values())

    def names(self) -> list[str]:
        return list(self._entries)

    def add(self, name: str, value: T) -> T:
        self._entries[name] = _Entry(value, self._clock.monotonic())
        return value

    def touch(self, name: str) -> None:
        """``name`` is used now: its idle time starts again. O(1)."""
        entry = self._entries.get(name)
        if entry is not None:
            entry.last_used = self._clock.monotonic()

    def idle(self, name: str) -> None:
        """Some work on ``name`` ended: unless it is still busy, reap it ``reap_interval``
        after its last use. O(1)."""
        entry = self._entries.get(name)
        if entry is None or entry.timer is not None or self._closed or self._busy(entry.value):
            return
        self._arm(name, entry)

    def _arm(self, name: str, entry: _Entry[T]) -> None:
        delay = max(0.0, entry.last_used + self.reap_interval - self._clock.monotonic())
        entry.timer = asyncio.get_running_loop().call_later(delay, self._reap, name, entry)

    def _reap(self, name: str, entry: _Entry[T]) -> None:
        entry.timer = None
        if self._closed or self._entries.get(name) is not entry or self._busy(entry.value):
            return  # busy again: the next idle() sets a new timer
        if self._clock.monotonic() < entry.last_used + self.reap_interval:
            self._arm(name, entry)  # used in between: wait for the rest of its idle time
            return
        del self._entries[name]
        try:
            self._reaped(entry.value)
        except Exception:  # a timer callback: nothing above it would log it
            log.exception("reaping ready queue %s failed", name)
        log.debug("reaped idle ready queue %s", name)

    def close(self) -> None:
        """Reap no more (shutting down): cancel every pending timer."""
        self._closed = True
        for entry in self._entries.values():
            if entry.timer is not None:
                entry.timer.cancel()
                entry.timer = None
