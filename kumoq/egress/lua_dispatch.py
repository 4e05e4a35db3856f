"""Custom Lua delivery: ``protocol = {custom_lua = {constructor = 'make.x', ...}}`` (§1.9).

The constructor event ``make.x(domain, tenant, campaign)`` returns a connection table; kumoq keeps
one connection per ready queue ``<source>-><routing_domain>@lua:<constructor>``, the source
chosen from the queue's ``egress_pool`` by weighted round robin as for SMTP (``unspecified``
without a pool), skipping a source whose path's source selection rates are exhausted, and
each call waits for the path's message rates (``kumoq.egress.lua_route``). With
``batch_size = 1`` (the default) each message is sent as it comes, by ``conn:send(msg)``. With
``batch_size > 1`` messages wait in the ready queue's batch and go out together by
``conn:send_batch(msgs)`` (a Lua array, oldest first); the same outcome applies to every message
of the call:

- a string result is a ``Delivery`` (code 200, content = the string);
- ``kumo.reject(4xx, text)`` is a ``TransientFailure`` (a 421 also closes the connection);
- ``kumo.reject(5xx, text)`` is a ``Bounce``;
- any other Lua error closes the connection and is a ``TransientFailure``
  ``400 KumoMTA internal: error in deliver_message: <error>``.

Batch assembly (``plan_batch``, pure, in ``kumoq.egress.ready``): up to ``batch_size`` waiting
messages go out at once when at least ``min_batch_size`` wait; fewer wait until
``min_batch_size`` have arrived or ``max_batch_latency`` has passed since the oldest waiting one
arrived. Messages that arrive in
the same event-loop turn join the same batch, even with a latency of 0.

Records carry ``delivery_protocol="Lua"`` and ``peer_address={name="Lua via <ctor>",
addr="0.0.0.0"}``. The Lua calls are synchronous, on the event loop thread.

A ready queue with nothing in progress for ``reap_interval`` after its last message (KumoMTA's
10 minutes, as for SMTP) is reaped: its connection is closed (``conn:close()``) and its state
dropped; the next message constructs a new one.

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
from kumoq.egress.lua_route import EgressPathPolicy, LuaRoute, LuaRouter, lua_failure
from kumoq.egress.ready import Idle, SendNow, WaitFor, expiration, expiry_deadline, plan_batch
from kumoq.egress.ready_queue import (
    READY_QUEUE_REAP_INTERVAL,
    ExpiryTimer,
    ReadyRegistry,
    settle_expired,
)
from kumoq.egress.sources import SourceSelector
from kumoq.errors import KumoqError, PolicyError, RejectError
from kumoq.logs.records import RecordType, Response
from kumoq.message import Message, new_session_id, parse_queue_name
from kumoq.scheduler.attempt import Attempt
from kumoq.throttle import Throttle

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


# -- dispatch --------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Waiting:
    msg: Message
    route: LuaRoute
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


@dataclass(slots=True, eq=False)
class _LuaPath:
    """One ready queue ``<source>-><routing_domain>@lua:<ctor>``: its connection (made on first
    use), the lock that allows one call at a time on it, its batch while messages wait for one,
    and how many ``deliver`` calls are in progress on it."""

    site: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    conn: tuple[int, str] | None = None  # (handle, session id)
    batch: _Batch | None = None
    calls: int = 0

    def busy(self) -> bool:
        return bool(self.calls or self.batch is not None or self.lock.locked())


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
        policy: EgressPathPolicy | None = None,
        throttle: Throttle | None = None,
        reap_interval: float = READY_QUEUE_REAP_INTERVAL,
    ) -> None:
        self._runtime = runtime
        self._clock: Clock = clock or SystemClock()
        self._sources = sources  # None: every message uses the source 'unspecified'
        # policy None: no path config, so no path rate applies
        self._router = LuaRouter(self._clock, sources=sources, policy=policy, throttle=throttle)
        self._paths: ReadyRegistry[_LuaPath] = ReadyRegistry(
            self._clock, busy=_LuaPath.busy, reaped=self._reaped, reap_interval=reap_interval
        )
        self._closing = False

    @property
    def ready_queues(self) -> ReadyRegistry[_LuaPath]:
        """The ready queues by name (for metrics and tests)."""
        return self._paths

    def queue_reaped(self, name: str) -> None:
        """The queue manager reaped the scheduled queue ``name``: forget its round robin."""
        if self._sources is not None:
            self._sources.forget(name)

    async def deliver(self, msg: Message, config: QueueConfig) -> Attempt:
        protocol = config.protocol
        assert isinstance(protocol, CustomLuaProtocol)
        if self._closing:
            raise asyncio.CancelledError  # not attempted: the message stays spooled
        queue_name = msg.queue_name()
        parts = parse_queue_name(queue_name)
        pool = config.egress_pool or UNSPECIFIED
        route = await self._router.route(queue_name, parts, pool, protocol.constructor)
        if isinstance(route, Attempt):
            return route
        site = route.ready_queue
        path = self._paths.get(site)
        if path is None:
            path = self._paths.add(site, _LuaPath(site))
        else:
            self._paths.touch(site)
        path.calls += 1
        try:
            return await self._deliver(path, msg, config, protocol, route)
        finally:
            path.calls -= 1
            self._paths.idle(site)

    async def _deliver(
        self,
        path: _LuaPath,
        msg: Message,
        config: QueueConfig,
        protocol: CustomLuaProtocol,
        route: LuaRoute,
    ) -> Attempt:
        max_age = config.max_age
        deadline = expiry_deadline(msg, max_age)
        if protocol.batch_size == 1 and path.batch is None:
            now = self._clock.now()
            if now >= deadline:  # not attempted past its expiry
                return expiration(msg, max_age, now) or lua_failure("KumoMTA internal: expired")
            return await self._send(path, protocol, route, [msg], (deadline, max_age))
        batch = path.batch
        if batch is None:
            batch = path.batch = _Batch(protocol)
            batch.expiry = ExpiryTimer(self._clock, batch.expire_due)
        batch.protocol = protocol
        future: asyncio.Future[Attempt] = asyncio.get_running_loop().create_future()
        waiting = _Waiting(msg, route, future, self._clock.monotonic(), deadline, max_age)
        batch.waiting.append(waiting)
        if batch.expiry is not None:
            batch.expiry.watch(deadline)
        if batch.task is None:
            batch.task = asyncio.create_task(self._run(path, batch), name=f"lua-batch {path.site}")
        batch.wake.set()
        return await future

    def poke(self) -> None:
        """Look at every batch again now. The sender's own timer does this when a latency
        expires; tests with a ``FakeClock`` call it after ``advance``."""
        for path in self._paths.values():
            if path.batch is not None:
                path.batch.wake.set()

    async def _run(self, path: _LuaPath, batch: _Batch) -> None:
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
                            await self._send_batch(path, batch, items)
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
            if not waiting and path.batch is batch:
                path.batch = None
                if batch.expiry is not None:
                    batch.expiry.cancel()
                self._paths.idle(path.site)

    async def _send_batch(self, path: _LuaPath, batch: _Batch, items: list[_Waiting]) -> None:
        """Send ``items`` and resolve their attempts (a bug fails them, never strands them)."""
        try:
            # The path's rates first; what expired meanwhile gets its Expiration, not a send.
            attempt = await self._router.admit(items[0].route, len(items))
            if attempt is None:
                now = self._clock.now()
                items = [it for it in items if not it.expire(now)]
                if not items:
                    return
                msgs = [it.msg for it in items]
                attempt = await self._send(path, batch.protocol, items[0].route, msgs)
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
        path: _LuaPath,
        protocol: CustomLuaProtocol,
        route: LuaRoute,
        msgs: list[Message],
        expiry: tuple[float, float] | None = None,
    ) -> Attempt:
        """``conn:send(msg)`` when ``batch_size`` is 1, else ``conn:send_batch(msgs)``, on the
        ready queue's connection (constructed on first use from ``parts``); the outcome of every
        message in ``msgs``. One call at a time per connection: a handler waiting for DNS
        (``kumo.dns.lookup_mx``) holds its connection until it returns. With ``expiry``
        (``(deadline, max_age)`` of a single message), the wait for the connection ends at
        the deadline, with the message's ``Expiration``."""
        lock = path.lock
        if expiry is not None and lock.locked():
            deadline, max_age = expiry
            try:
                async with asyncio.timeout(max(0.0, deadline - self._clock.now())):
                    await lock.acquire()
            except TimeoutError:
                now = max(self._clock.now(), deadline)
                return expiration(msgs[0], max_age, now) or lua_failure("KumoMTA internal: expired")
        else:
            await lock.acquire()
        try:
            if expiry is not None:  # one message: the path's rates first, then its expiry
                held = await self._router.admit(route, 1)
                if held is not None:
                    return held
                deadline, max_age = expiry
                now = self._clock.now()
                if now >= deadline:
                    expired = expiration(msgs[0], max_age, now)
                    return expired or lua_failure("KumoMTA internal: expired")
            return await self._send_locked(path, protocol, route, msgs)
        finally:
            lock.release()

    async def _send_locked(
        self, path: _LuaPath, protocol: CustomLuaProtocol, route: LuaRoute, msgs: list[Message]
    ) -> Attempt:
        ctor = protocol.constructor
        parts = route.parts
        conn = path.conn
        session_id = conn[1] if conn is not None else new_session_id()
        attempt = _attempt_factory(path.site, ctor, session_id, route)
        try:
            if conn is None:
                handle = await self._runtime.construct(
                    ctor, parts.domain, parts.tenant, parts.campaign
                )
                conn = path.conn = (handle, session_id)
            if protocol.batch_size == 1:
                (msg,) = msgs
                result = await self._runtime.conn_send(conn[0], msg)
            else:
                result = await self._runtime.conn_send_batch(conn[0], msgs)
        except RejectError as exc:
            if exc.code == 421:
                self._close(path)
            kind = RecordType.TransientFailure if 400 <= exc.code < 500 else RecordType.Bounce
            return attempt(kind, _reject_response(exc))
        except PolicyError as exc:
            self._close(path)
            return attempt(
                RecordType.TransientFailure,
                Response(400, None, f"KumoMTA internal: error in deliver_message: {exc}", None),
            )
        return attempt(RecordType.Delivery, Response(200, None, str(result), None))

    def _reaped(self, path: _LuaPath) -> None:
        """The ready queue was reaped: close its connection; its path config is asked again."""
        self._router.forget(path.site)
        self._close(path)

    def expire_paths(self) -> None:
        """Every ready queue asks ``get_egress_path_config`` again (a policy reload)."""
        self._router.expire_paths()

    def _close(self, path: _LuaPath) -> None:
        """Close the path's connection, if it has one (an error, a reap, or shutdown)."""
        conn, path.conn = path.conn, None
        if conn is not None:
            try:
                self._runtime.conn_close(conn[0])
            except KumoqError as exc:  # a PolicyError, or a close() that waits for DNS
                log.warning("custom_lua connection %s: close failed: %s", path.site, exc)

    async def close(self, drain_seconds: float = CLOSE_DRAIN_SECONDS) -> None:
        """Stop taking work; let the Lua calls in progress finish (up to ``drain_seconds``:
        one may be waiting for DNS), cancel the attempts still waiting for a batch (their
        messages stay spooled), then close every connection once nothing uses it. Never
        waits longer than ``drain_seconds + ABANDON_GRACE_SECONDS``."""
        self._closing = True
        self._paths.close()
        paths = list(self._paths.values())
        batches = [path.batch for path in paths if path.batch is not None]
        waiting = 0
        for batch in batches:
            if batch.expiry is not None:
                batch.expiry.cancel()
            for it in batch.waiting:
                waiting += not it.future.done()
                it.future.cancel()
            batch.waiting.clear()
            batch.wake.set()  # the sender sees _closing and ends after its current call
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_seconds
        tasks = [batch.task for batch in batches if batch.task is not None]
        calls = len(tasks) + sum(path.lock.locked() for path in paths)
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
        for path in paths:
            path.batch = None
            if path.conn is None:
                continue
            if path.lock.locked():  # a send(msg) is still running
                try:
                    async with asyncio.timeout(max(0.0, deadline - loop.time())):
                        await path.lock.acquire()
                        path.lock.release()
                except TimeoutError:
                    log.warning(
                        "custom_lua: closing %s under a call still running after %gs; its "
                        "message stays spooled", path.site, drain_seconds,
                    )  # fmt: skip
            self._close(path)


def _reject_response(exc: RejectError) -> Response:
    enhanced, _, text = exc.reply_text.partition(" ")
    code_parts = enhanced.split(".")
    if len(code_parts) == 3 and all(p.isdigit() for p in code_parts):
        return Response(exc.code, tuple(map(int, code_parts)), text, None)  # type: ignore[arg-type]
    return Response(exc.code, None, exc.reply_text, None)


def _attempt_factory(
    site: str, ctor: str, session_id: str, route: LuaRoute
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
