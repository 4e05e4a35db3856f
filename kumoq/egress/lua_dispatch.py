"""Custom Lua delivery: ``protocol = {custom_lua = {constructor = 'make.x', ...}}`` (§1.9).

The constructor event ``make.x(domain, tenant, campaign)`` returns a connection table; kumoq keeps
one connection per ready queue ``<source>-><routing_domain>@lua:<constructor>``, the source
chosen from the queue's ``egress_pool`` by weighted round robin as for SMTP (``SourceSelector``;
``unspecified`` without a pool). With
``batch_size = 1`` (the default) each message is sent as it comes, by ``conn:send(msg)``. With
``batch_size > 1`` messages wait in the ready queue's batch and go out together by
``conn:send_batch(msgs)`` (a Lua array, oldest first); the same outcome applies to every message
of the call:

- a string result is a ``Delivery`` (code 200, content = the string);
- ``kumo.reject(4xx, text)`` is a ``TransientFailure`` (a 421 also closes the connection);
- ``kumo.reject(5xx, text)`` is a ``Bounce``;
- any other Lua error closes the connection and is a ``TransientFailure``
  ``400 KumoMTA internal: error in deliver_message: <error>``.

Batch assembly (``plan_batch``, pure): up to ``batch_size`` waiting messages go out at once when
at least ``min_batch_size`` wait; fewer wait until ``min_batch_size`` have arrived or
``max_batch_latency`` has passed since the oldest waiting one arrived. Messages that arrive in
the same event-loop turn join the same batch, even with a latency of 0.

Records carry ``delivery_protocol="Lua"`` and ``peer_address={name="Lua via <ctor>",
addr="0.0.0.0"}``. The Lua calls are synchronous, on the event loop thread.

A message still waiting at its expiry (``max_age`` or ``set_scheduling{expires}``), for a
batch or for its connection's call in progress, gets its ``Expiration`` then (the text the
queue manager writes) and is not attempted; a call in progress runs to its end.

L2: imports kumoq.config, kumoq.errors, kumoq.logs, kumoq.message, kumoq.clock and the queue
manager's ``Attempt``; never kumoq.lua (the runtime comes in through ``LuaConnections``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, final

from kumoq.clock import Clock, SystemClock
from kumoq.config.egress import UNSPECIFIED
from kumoq.config.queue import CustomLuaProtocol, QueueConfig
from kumoq.egress.ready import expiration, expiry_deadline
from kumoq.egress.ready_queue import ExpiryTimer, settle_expired
from kumoq.egress.sources import SourceSelector
from kumoq.errors import KumoqError, PolicyError, PolicyWouldBlock, RejectError
from kumoq.logs.records import RecordType, Response
from kumoq.message import Message, QueueNameParts, new_session_id, parse_queue_name
from kumoq.scheduler.attempt import POLICY_WAIT_RERUNS, Attempt

__all__ = ["Idle", "LuaConnections", "LuaDispatch", "SendNow", "WaitFor", "plan_batch"]

log = logging.getLogger("kumoq.egress")

CLOSE_DRAIN_SECONDS: Final = 10.0
"""How long ``close()`` waits for Lua calls in progress by default (as SmtpDispatch waits for
its dispatchers; the daemon passes its delivery drain, ``KUMOQ_SHUTDOWN_DELIVERY_DRAIN``)."""
ABANDON_GRACE_SECONDS: Final = 2.0
"""How long ``close()`` waits for cancelled batch calls to unwind."""


class LuaConnections(Protocol):
    """What custom Lua delivery needs of the policy runtime (kumoq.lua.runtime has it)."""

    async def construct(self, name: str, *args: str | None) -> int: ...

    async def conn_send(self, conn: int, msg: Message) -> Any: ...

    async def conn_send_batch(self, conn: int, msgs: Sequence[Message]) -> Any: ...

    def conn_close(self, conn: int) -> None: ...


# -- batch assembly (pure) -------------------------------------------------------------------


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


# -- dispatch --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Route:
    """Where a message goes: its queue's parts (for the constructor) and the egress pool and
    source it was given (for the ready queue name and the records)."""

    parts: QueueNameParts
    pool: str
    source: str


@dataclass(slots=True, eq=False)
class _Waiting:
    msg: Message
    route: _Route
    future: asyncio.Future[Attempt]
    arrived: float
    deadline: float = math.inf  # expiry_deadline: settled with its Expiration if still here
    max_age: float = math.inf

    def expire(self, now: float) -> bool:
        return settle_expired(self.future, self.msg, self.deadline, self.max_age, now)


@dataclass(slots=True, eq=False)
class _Batch:
    """The messages of one ready queue waiting for ``send_batch``, its sender task and the
    timer that expires waiting messages on time."""

    site: str
    protocol: CustomLuaProtocol  # the latest message's; a refreshed config applies at once
    waiting: deque[_Waiting] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    expiry: ExpiryTimer | None = None

    def expire_due(self, now: float) -> float:
        """Settle the waiting messages past their deadline; the next deadline. O(n)."""
        kept = [it for it in self.waiting if not it.expire(now)]
        if len(kept) != len(self.waiting):
            self.waiting.clear()  # the same deque: the sender task holds it
            self.waiting.extend(kept)
            self.wake.set()
        return min((it.deadline for it in kept), default=math.inf)


@final
class LuaDispatch:
    """``Deliverer`` for ``protocol = {custom_lua = ...}``.

    ``close()`` lets the Lua calls in progress finish (bounded), cancels the attempts still
    waiting for a batch, and ``deliver`` raises ``CancelledError`` once closed: those messages
    get no record and stay spooled for the next start (as in SMTP's ready queues). A
    connection is closed only once no call uses it, or at the drain deadline.
    """

    def __init__(
        self,
        runtime: LuaConnections,
        *,
        clock: Clock | None = None,
        sources: SourceSelector | None = None,
    ) -> None:
        self._runtime = runtime
        self._clock: Clock = clock or SystemClock()
        self._sources = sources  # None: every message uses the source 'unspecified'
        self._conns: dict[str, tuple[int, str]] = {}  # ready queue -> (handle, session id)
        self._batches: dict[str, _Batch] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closing = False

    async def deliver(self, msg: Message, config: QueueConfig) -> Attempt:
        protocol = config.protocol
        assert isinstance(protocol, CustomLuaProtocol)
        if self._closing:
            raise asyncio.CancelledError  # not attempted: the message stays spooled
        queue_name = msg.queue_name()
        parts = parse_queue_name(queue_name)
        route = await self._route(queue_name, parts, config.egress_pool or UNSPECIFIED)
        if isinstance(route, Attempt):
            return route
        routing_domain = parts.routing_domain or parts.domain
        site = f"{route.source}->{routing_domain}@lua:{protocol.constructor}"
        max_age = config.max_age
        deadline = expiry_deadline(msg, max_age)
        if protocol.batch_size == 1 and site not in self._batches:
            now = self._clock.now()
            if now >= deadline:  # not attempted past its expiry
                return expiration(msg, max_age, now) or _failed("KumoMTA internal: expired")
            return await self._send(site, protocol, route, [msg], (deadline, max_age))
        batch = self._batches.get(site)
        if batch is None:
            batch = self._batches[site] = _Batch(site, protocol)
            batch.expiry = ExpiryTimer(self._clock, batch.expire_due)
        batch.protocol = protocol
        future: asyncio.Future[Attempt] = asyncio.get_running_loop().create_future()
        waiting = _Waiting(msg, route, future, self._clock.monotonic(), deadline, max_age)
        batch.waiting.append(waiting)
        if batch.expiry is not None:
            batch.expiry.watch(deadline)
        if batch.task is None:
            batch.task = asyncio.create_task(self._run(batch), name=f"lua-batch {site}")
        batch.wake.set()
        return await future

    async def _route(
        self, queue_name: str, parts: QueueNameParts, pool_name: str
    ) -> _Route | Attempt:
        """The egress source for this message: the pool's weighted round robin, as for SMTP.
        An event waiting for DNS is called again (bounded), keeping the source it was given."""
        if self._sources is None or pool_name == UNSPECIFIED:
            return _Route(parts, pool_name, UNSPECIFIED)
        picked: list[str | None] = []
        for _ in range(POLICY_WAIT_RERUNS):
            try:
                pool = self._sources.pool(pool_name)
                if not picked:
                    picked.append(self._sources.pick(queue_name, pool))
                source = picked[0]
                if source is None:
                    return _failed(
                        f"KumoMTA internal: no sources available for {queue_name} "
                        f"pool=`{pool_name}`"
                    )
                self._sources.source(source)  # the source must exist (get_egress_source)
                return _Route(parts, pool_name, source)
            except PolicyWouldBlock as wait:
                await wait.wait()
            except KumoqError as exc:
                return _failed(f"KumoMTA internal: {exc}")
        return _failed("KumoMTA internal: the egress events kept waiting for DNS")

    def poke(self) -> None:
        """Look at every batch again now. The sender's own timer does this when a latency
        expires; tests with a ``FakeClock`` call it after ``advance``."""
        for batch in self._batches.values():
            batch.wake.set()

    async def _run(self, batch: _Batch) -> None:
        """The sender of one ready queue; ends when nothing waits (and ``deliver`` starts a new
        one for the next message)."""
        waiting = batch.waiting
        try:
            while not self._closing:
                while waiting and waiting[0].future.done():  # its attempt was cancelled
                    waiting.popleft()
                batch.wake.clear()
                oldest = waiting[0].arrived if waiting else 0.0
                match plan_batch(len(waiting), oldest, self._clock.monotonic(), batch.protocol):
                    case SendNow(count):
                        items = [waiting.popleft() for _ in range(count)]
                        now = self._clock.now()  # past its expiry: not attempted
                        items = [it for it in items if not it.expire(now)]
                        if items:
                            await self._send_batch(batch, items)
                        await asyncio.sleep(0)  # let new arrivals and other work in
                    case WaitFor(seconds):
                        try:
                            async with asyncio.timeout(seconds):
                                await batch.wake.wait()
                        except TimeoutError:
                            pass
                    case Idle():
                        break
        finally:
            batch.task = None
            if not waiting and self._batches.get(batch.site) is batch:
                del self._batches[batch.site]
                if batch.expiry is not None:
                    batch.expiry.cancel()

    async def _send_batch(self, batch: _Batch, items: list[_Waiting]) -> None:
        """Send ``items`` and resolve their attempts (a bug fails them, never strands them)."""
        msgs = [it.msg for it in items]
        try:
            attempt = await self._send(batch.site, batch.protocol, items[0].route, msgs)
        except Exception as exc:
            for it in items:
                if not it.future.done():
                    it.future.set_exception(exc)  # the queue manager logs it, retries later
            return
        except BaseException:  # cancelled: not attempted, the messages stay spooled
            for it in items:
                it.future.cancel()
            raise
        for it in items:
            if not it.future.done():  # its attempt may have been cancelled meanwhile
                it.future.set_result(attempt)

    async def _send(
        self,
        site: str,
        protocol: CustomLuaProtocol,
        route: _Route,
        msgs: list[Message],
        expiry: tuple[float, float] | None = None,
    ) -> Attempt:
        """``conn:send(msg)`` when ``batch_size`` is 1, else ``conn:send_batch(msgs)``, on the
        ready queue's connection (constructed on first use from ``parts``); the outcome of every
        message in ``msgs``. One call at a time per connection: a handler waiting for DNS
        (``kumo.dns.lookup_mx``) holds its connection until it returns. With ``expiry``
        (``(deadline, max_age)`` of a single message), the wait for the connection ends at
        the deadline, with the message's ``Expiration``."""
        lock = self._locks.get(site)
        if lock is None:
            lock = self._locks[site] = asyncio.Lock()
        if expiry is not None and lock.locked():
            deadline, max_age = expiry
            try:
                async with asyncio.timeout(max(0.0, deadline - self._clock.now())):
                    await lock.acquire()
            except TimeoutError:
                now = max(self._clock.now(), deadline)
                return expiration(msgs[0], max_age, now) or _failed("KumoMTA internal: expired")
        else:
            await lock.acquire()
        try:
            return await self._send_locked(site, protocol, route, msgs)
        finally:
            lock.release()

    async def _send_locked(
        self, site: str, protocol: CustomLuaProtocol, route: _Route, msgs: list[Message]
    ) -> Attempt:
        ctor = protocol.constructor
        parts = route.parts
        conn = self._conns.get(site)
        session_id = conn[1] if conn is not None else new_session_id()
        attempt = _attempt_factory(site, ctor, session_id, route)
        try:
            if conn is None:
                handle = await self._runtime.construct(
                    ctor, parts.domain, parts.tenant, parts.campaign
                )
                conn = self._conns[site] = (handle, session_id)
            if protocol.batch_size == 1:
                (msg,) = msgs
                result = await self._runtime.conn_send(conn[0], msg)
            else:
                result = await self._runtime.conn_send_batch(conn[0], msgs)
        except RejectError as exc:
            if exc.code == 421:
                self._close(site)
            kind = RecordType.TransientFailure if 400 <= exc.code < 500 else RecordType.Bounce
            return attempt(kind, _reject_response(exc))
        except PolicyError as exc:
            self._close(site)
            return attempt(
                RecordType.TransientFailure,
                Response(400, None, f"KumoMTA internal: error in deliver_message: {exc}", None),
            )
        return attempt(RecordType.Delivery, Response(200, None, str(result), None))

    def _close(self, site: str) -> None:
        conn = self._conns.pop(site, None)
        if conn is not None:
            try:
                self._runtime.conn_close(conn[0])
            except KumoqError as exc:  # a PolicyError, or a close() that waits for DNS
                log.warning("custom_lua connection %s: close failed: %s", site, exc)

    async def close(self, drain_seconds: float = CLOSE_DRAIN_SECONDS) -> None:
        """Stop taking work; let the Lua calls in progress finish (up to ``drain_seconds``:
        one may be waiting for DNS), cancel the attempts still waiting for a batch (their
        messages stay spooled), then close every connection once nothing uses it. Never
        waits longer than ``drain_seconds + ABANDON_GRACE_SECONDS``."""
        self._closing = True
        waiting = 0
        for batch in self._batches.values():
            if batch.expiry is not None:
                batch.expiry.cancel()
            for it in batch.waiting:
                waiting += not it.future.done()
                it.future.cancel()
            batch.waiting.clear()
            batch.wake.set()  # the sender sees _closing and ends after its current call
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_seconds
        tasks = [b.task for b in self._batches.values() if b.task is not None]
        calls = len(tasks) + sum(lock.locked() for lock in self._locks.values())
        if waiting or calls:
            log.info(
                "custom_lua: %d messages waiting for a batch stay spooled; waiting up to %gs "
                "for %d Lua calls in progress", waiting, drain_seconds, calls,
            )  # fmt: skip
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=drain_seconds)
            if pending:
                log.warning(
                    "custom_lua: abandoning %d batch calls still running after %gs; their "
                    "messages stay spooled", len(pending), drain_seconds,
                )  # fmt: skip
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=ABANDON_GRACE_SECONDS)
        self._batches.clear()
        for site in list(self._conns):
            lock = self._locks.get(site)
            if lock is not None and lock.locked():  # a send(msg) is still running
                try:
                    async with asyncio.timeout(max(0.0, deadline - loop.time())):
                        await lock.acquire()
                        lock.release()
                except TimeoutError:
                    log.warning(
                        "custom_lua: closing %s under a call still running after %gs; its "
                        "message stays spooled", site, drain_seconds,
                    )  # fmt: skip
            self._close(site)


def _reject_response(exc: RejectError) -> Response:
    enhanced, _, text = exc.reply_text.partition(" ")
    code_parts = enhanced.split(".")
    if len(code_parts) == 3 and all(p.isdigit() for p in code_parts):
        return Response(exc.code, tuple(map(int, code_parts)), text, None)  # type: ignore[arg-type]
    return Response(exc.code, None, exc.reply_text, None)


def _failed(content: str) -> Attempt:
    """A message that could not be given a ready queue: a transient failure, as for SMTP."""
    response = Response(451, (4, 4, 4), content, None)
    return Attempt(RecordType.TransientFailure, response, delivery_protocol="Lua")


def _attempt_factory(
    site: str, ctor: str, session_id: str, route: _Route
) -> Callable[[RecordType, Response], Attempt]:
    peer = {"name": f"Lua via {ctor}", "addr": "0.0.0.0"}
    extra = {"egress_pool": route.pool, "egress_source": route.source}

    def attempt(disposition: RecordType, response: Response) -> Attempt:
        return Attempt(
            disposition,
            response,
            site=site,
            delivery_protocol="Lua",
            peer_address=peer,
            session_id=session_id,
            extra=extra,
        )

    return attempt
