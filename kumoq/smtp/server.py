"""The inbound ESMTP listener: an ``asyncio.Protocol`` adapter around ``ServerSession``.

This module owns the sockets and the timers, and nothing else: the protocol is in
``smtp/session.py`` and every decision (EHLO, MAIL, RCPT, DATA) goes to an injected
``SmtpHandler``, the seam the daemon implements. Works on asyncio's and uvloop's loops.

Hot path: ``data_received`` feeds the session and handles its events on the spot. The
``ehlo``/``mail_from``/``rcpt_to`` coroutines are stepped eagerly (no task, no loop round trip):
one that finishes without suspending -- a Lua call does -- is answered at once; one that
suspends is finished in a task. ``data`` always runs in a task, bounded by
``data_processing_timeout``. Replies are written in one batch whenever the session needs input
(RFC 2920 pipelining). The idle timer is one ``call_at`` handle re-armed lazily from the last
receive time.

Backpressure: while a handler call is in progress, reading pauses once more than
``_HIGH_WATER`` bytes are queued in the session; reading also pauses while the transport's
write buffer is full.

Shutdown (``EsmtpListener.close``): stop accepting, let every handler call in progress finish
and its reply be written, then answer ``421 4.3.2 <host> shutting down`` at the next point
where the connection would wait for input (as KumoMTA does); connections still busy after the
drain timeout are aborted.

Imports: asyncio, kumoq.smtp.session/replies, kumoq.config.listener, kumoq.errors,
kumoq.message. Must not import the daemon, the spool, the queues or lupa.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Coroutine
from typing import Any, Final, Protocol, TypeAlias, cast, final

from kumoq.config.listener import EsmtpListenerConfig
from kumoq.errors import ListenerError, RejectError
from kumoq.message import EnvelopeAddress, new_session_id
from kumoq.smtp import replies as R
from kumoq.smtp.replies import Reply
from kumoq.smtp.session import (
    NEED_DATA,
    CommandAnswered,
    ConnectionClosed,
    DataStart,
    Ehlo,
    MailFrom,
    MessageData,
    ProtocolError,
    Quit,
    RcptTo,
    Rset,
    ServerSession,
)

__all__ = [
    "ConnectionMeta",
    "EsmtpListener",
    "SmtpHandler",
    "start_esmtp_listener",
]

log = logging.getLogger(__name__)

ConnectionMeta: TypeAlias = dict[str, Any]
"""Connection metadata shared with the handler: ``received_from`` (peer ip), ``received_via``
(local ``ip:port``), ``hostname``, ``reception_protocol`` ("ESMTP"), ``session_id`` (uuid4
hex), the listener's ``meta`` entries, and ``ehlo_domain`` once EHLO/HELO succeeded."""

_HIGH_WATER: Final = 256 * 1024  # queued input bytes that pause reading while busy
_RELAY_CACHE_MAX: Final = 4096


class SmtpHandler(Protocol):
    """What the server asks of the daemon. Every method may raise ``RejectError``
    (``kumo.reject``): its code and text become the reply, and the connection is dropped
    when it is a 421 or ``disconnect`` is set. Any other exception answers
    ``421 4.3.0 <host> technical difficulties`` and drops the connection. A returned Reply
    with code 421 is sent and the connection closed.

    ``ehlo``, ``mail_from`` and ``rcpt_to`` are started eagerly from the protocol callback:
    until their first suspension they run outside any task (``asyncio.current_task()`` is
    None), so they must not enter ``asyncio.timeout()`` or a TaskGroup before their first
    ``await``. ``data`` always runs in its own task."""

    def ready(self) -> bool:
        """False until the spool is enumerated: new connections get ``421 4.3.2 <host>
        waiting for spool startup. Try again soon!`` and are closed."""
        ...

    async def ehlo(
        self, conn: ConnectionMeta, domain: str, extensions: list[str]
    ) -> list[str] | Reply | None:
        """EHLO/HELO: a replacement extension list, ``None`` for the default, or a rejection."""
        ...

    async def mail_from(self, conn: ConnectionMeta, sender: EnvelopeAddress) -> Reply | None:
        """``None`` accepts (``250 2.1.0 OK``)."""
        ...

    async def rcpt_to(self, conn: ConnectionMeta, recipient: EnvelopeAddress) -> Reply | None:
        """``None`` accepts so far; the server then checks ``relay_hosts`` and answers
        ``550 5.7.1 relaying not permitted for <peer>`` when the peer may not relay."""
        ...

    async def data(
        self,
        conn: ConnectionMeta,
        sender: EnvelopeAddress,
        recipients: list[EnvelopeAddress],
        data: bytes,
    ) -> Reply:
        """The final reply for the transaction (``250 OK ids=...`` or a rejection). Bounded by
        ``data_processing_timeout`` (then ``451 4.4.5``); the call is cancelled at the deadline,
        so a handler should make its own writes safe to cancel or check the deadline itself."""
        ...

    def rejected(self, conn: ConnectionMeta, command: str, reply: Reply) -> None:
        """Called for every 4xx/5xx reply the server sends (for Rejection log records).
        KumoMTA does not log its ``421 4.3.2`` replies (shutdown, spool startup, idle)."""
        ...


def _format_addr(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(addr)


@final
class EsmtpListener:
    """A running listener: ``address`` is the bound ``(host, port)``; ``close()`` drains."""

    def __init__(
        self,
        config: EsmtpListenerConfig,
        handler: SmtpHandler,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.config = config
        self.handler = handler
        self.loop = loop
        self.draining = False
        self.drained = asyncio.Event()
        self.connections: set[_SmtpConnection] = set()
        self._server: asyncio.Server | None = None
        self._relay: dict[str, bool] = {}

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._server.sockets) if self._server is not None else ()

    @property
    def address(self) -> tuple[str, int]:
        """The first bound socket's ``(host, port)``; the real port when ``listen`` used 0."""
        sockets = self.sockets
        if not sockets:
            raise RuntimeError("listener is not bound")
        name = sockets[0].getsockname()
        return str(name[0]), int(name[1])

    @property
    def connection_count(self) -> int:
        return len(self.connections)

    def relay_allowed(self, peer_ip: str) -> bool:
        allowed = self._relay.get(peer_ip)
        if allowed is None:
            if len(self._relay) >= _RELAY_CACHE_MAX:
                self._relay.clear()
            allowed = self._relay[peer_ip] = self.config.relay_allowed(peer_ip)
        return allowed

    async def close(self, drain_seconds: float = 30.0) -> None:
        """Stop accepting; let handler calls in progress finish, then answer every connection
        ``421 4.3.2 <host> shutting down``; abort what is still open after ``drain_seconds``."""
        self.draining = True
        server = self._server
        if server is not None:
            server.close()
        for conn in list(self.connections):
            conn.shutdown()
        if self.connections:
            try:
                async with asyncio.timeout(drain_seconds):
                    await self.drained.wait()
            except TimeoutError:
                stuck = list(self.connections)
                log.warning("esmtp listener: aborting %d connections", len(stuck))
                for conn in stuck:
                    conn.abort()
                tasks = [c.task for c in stuck if c.task is not None]
                if tasks:
                    await asyncio.wait(tasks, timeout=1.0)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> EsmtpListener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _SmtpConnection(asyncio.Protocol):
    """One client connection. Events are handled synchronously inside ``data_received``; a
    task exists only while a handler call is suspended (always for ``data``)."""

    __slots__ = (
        "_busy",
        "_conn",
        "_last_rx",
        "_listener",
        "_lost",
        "_out",
        "_peer",
        "_read_paused",
        "_relay_ok",
        "_session",
        "_timed_out",
        "_timer",
        "_transport",
        "_write_paused",
        "task",
    )

    def __init__(self, listener: EsmtpListener) -> None:
        self._listener = listener
        self._transport: asyncio.Transport | None = None
        self._session = ServerSession(listener.config)
        self._conn: ConnectionMeta = {}
        self._out: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False  # a handler call is in progress in ``task``
        self._lost = False
        self._read_paused = False
        self._write_paused = False
        self._last_rx = 0.0
        self._peer = ""
        self._relay_ok = False
        self._timed_out = False
        self.task: asyncio.Task[None] | None = None

    # --- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)
        listener = self._listener
        config = listener.config
        peer = transport.get_extra_info("peername")
        peer_ip = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        self._peer = _format_addr(peer)
        conn = self._conn
        conn["received_from"] = peer_ip
        conn["received_via"] = _format_addr(transport.get_extra_info("sockname"))
        conn["hostname"] = config.hostname
        conn["reception_protocol"] = "ESMTP"
        conn["session_id"] = new_session_id()
        if config.meta:
            conn.update(config.meta)

        refusal = None
        if listener.draining:
            refusal = R.shutting_down(config.hostname)
        elif len(listener.connections) >= config.max_connections:
            refusal = R.connection_limit_reached(config.hostname)
        else:
            try:
                if not listener.handler.ready():
                    refusal = R.spool_not_ready(config.hostname)
            except Exception:
                log.exception("SmtpHandler.ready() failed")
                refusal = R.technical_difficulties(config.hostname)
        if refusal is not None:
            self._rejected("", refusal)
            transport.write(self._session.send(refusal))
            transport.close()
            return

        self._relay_ok = listener.relay_allowed(peer_ip)
        listener.connections.add(self)
        loop = listener.loop
        transport.write(self._session.greeting())
        self._last_rx = now = loop.time()
        self._timer = loop.call_at(now + config.client_timeout, self._on_timer)

    def data_received(self, data: bytes) -> None:
        session = self._session
        session.receive_data(data)
        self._last_rx = self._listener.loop.time()
        if not self._busy:
            self._process()
        elif not self._read_paused and session.buffered > _HIGH_WATER:
            self._pause_reading()

    def eof_received(self) -> bool:
        self._session.receive_data(b"")
        if not self._busy:
            self._process()
        return True  # we close the transport ourselves once the replies are queued

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._session.receive_data(b"")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._busy:
            if not self._session.closed:
                self._process()  # complete commands already received still get handled
            self._forget()

    def _forget(self) -> None:
        """Gone and idle: leave the listener's books (a busy handler holds the drain)."""
        listener = self._listener
        listener.connections.discard(self)
        if listener.draining and not listener.connections:
            listener.drained.set()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if not self._busy or self._session.buffered <= _HIGH_WATER:
            self._resume_reading()

    # --- helpers -------------------------------------------------------------------------------
    def _pause_reading(self) -> None:
        if not self._read_paused and not self._lost and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused and not self._write_paused and not self._lost:
            self._read_paused = False
            assert self._transport is not None
            self._transport.resume_reading()

    def abort(self) -> None:
        if self._transport is not None and not self._lost:
            self._transport.abort()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def _flush(self) -> None:
        out = self._out
        if out:
            if not self._lost:
                assert self._transport is not None
                self._transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def _close(self) -> None:
        self._flush()
        self._session.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None and not self._lost:
            self._transport.close()

    def _rejected(self, command: str, reply: Reply) -> None:
        try:
            self._listener.handler.rejected(self._conn, command, reply)
        except Exception:
            log.exception("SmtpHandler.rejected() failed")

    def _on_timer(self) -> None:
        self._timer = None
        if self._lost or self._session.closed:
            return
        loop = self._listener.loop
        timeout = self._listener.config.client_timeout
        now = loop.time()
        if self._busy:  # waiting for our handler is not the client's fault
            self._timer = loop.call_at(now + timeout, self._on_timer)
            return
        due = self._last_rx + timeout
        if now + 0.001 < due:  # data arrived since the timer was armed
            self._timer = loop.call_at(due, self._on_timer)
            return
        reply = R.idle_too_long(self._listener.config.hostname)
        self._rejected("", reply)
        self._out.append(self._session.send(reply))
        self._close()

    def shutdown(self) -> None:
        """Listener draining: an idle connection is told 421 now, a busy one when it is done."""
        if not self._busy and not self._session.closed:
            self._process()

    # --- the protocol driver -------------------------------------------------------------------
    def _process(self) -> None:
        """Handle events until the session needs input or a handler call suspends."""
        try:
            self._drive()
        except Exception:
            log.exception("SMTP connection %s failed", self._peer)
            if not self._session.closed:
                reply = R.technical_difficulties(self._listener.config.hostname)
                self._rejected(self._session.command, reply)
                self._out.append(reply.to_bytes())
            self._close()

    def _drive(self) -> None:
        session = self._session
        handler = self._listener.handler
        conn = self._conn
        out = self._out
        while True:
            event = session.next_event()
            if event is NEED_DATA:
                if self._listener.draining:
                    reply = R.shutting_down(self._listener.config.hostname)
                    self._rejected("", reply)
                    out.append(session.send(reply))
                    self._close()
                    return
                self._flush()
                if self._read_paused:
                    self._resume_reading()
                return
            cls = type(event)
            if cls is RcptTo:
                assert isinstance(event, RcptTo)
                if not self._step(handler.rcpt_to(conn, event.recipient), event):
                    return
            elif cls is MailFrom:
                assert isinstance(event, MailFrom)
                if not self._step(handler.mail_from(conn, event.sender), event):
                    return
            elif cls is CommandAnswered or cls is ProtocolError:
                assert isinstance(event, CommandAnswered | ProtocolError)
                reply = event.reply
                if reply.code >= 400:
                    self._rejected(event.command, reply)
                out.append(reply.to_bytes())
            elif cls is DataStart or cls is Rset or cls is Quit:
                out.append(session.accept())
            elif cls is MessageData:
                assert isinstance(event, MessageData)
                self._flush()
                self._busy = True
                self.task = self._listener.loop.create_task(self._run_data(event))
                return
            elif cls is Ehlo:
                assert isinstance(event, Ehlo)
                coro = handler.ehlo(conn, event.domain, session.default_extensions)
                if not self._step(coro, event):
                    return
            elif cls is ConnectionClosed:
                self._close()
                return
            if session.closed:
                self._close()
                return

    def _step(self, coro: Coroutine[Any, Any, Any], event: Ehlo | MailFrom | RcptTo) -> bool:
        """Run a handler coroutine eagerly; True when it finished (and was answered), False
        when it suspended and continues in a task that resumes ``_process`` afterwards."""
        try:
            yielded = coro.send(None)
        except StopIteration as stop:
            self._complete(event, stop.value)
            return True
        except RejectError as exc:
            return self._reject(exc)
        except Exception:
            log.exception("SmtpHandler failed on %r from %s", event, self._peer)
            self._answer(R.technical_difficulties(self._listener.config.hostname))
            return True
        self._busy = True
        self.task = self._listener.loop.create_task(self._resume(coro, yielded, event))
        return False

    async def _resume(
        self, coro: Coroutine[Any, Any, Any], yielded: Any, event: Ehlo | MailFrom | RcptTo
    ) -> None:
        """Finish a suspended handler coroutine inside this task, then carry on."""
        try:
            try:
                result = await _drive_suspended(coro, yielded)
            except asyncio.CancelledError:
                self._session.close()  # aborted: do not go on reading commands
                raise
            except RejectError as exc:
                self._reject(exc)
            except Exception:
                log.exception("SmtpHandler failed on %r from %s", event, self._peer)
                self._answer(R.technical_difficulties(self._listener.config.hostname))
            else:
                self._complete(event, result)
        finally:
            self._handler_done()

    async def _run_data(self, event: MessageData) -> None:
        listener = self._listener
        config = listener.config
        # A plain timer rather than asyncio.timeout(): that one costs three getpid() syscalls.
        self._timed_out = False
        deadline = listener.loop.call_later(config.data_processing_timeout, self._data_deadline)
        try:
            try:
                reply = await listener.handler.data(
                    self._conn, event.sender, list(event.recipients), event.data
                )
            except asyncio.CancelledError:
                if not self._timed_out:
                    raise
                if self.task is not None:
                    self.task.uncancel()
                reply = R.DATA_PROCESSING_TIMEOUT
            finally:
                deadline.cancel()
        except asyncio.CancelledError:
            self._session.close()  # aborted: do not go on reading commands
            raise
        except RejectError as exc:
            self._reject(exc)
        except Exception:
            log.exception("SmtpHandler.data failed for %s", self._peer)
            self._answer(R.technical_difficulties(config.hostname))
        else:
            self._answer(reply)
        finally:
            self._handler_done()

    def _handler_done(self) -> None:
        """A handler task ended (or was cancelled): carry on with buffered input, or finish."""
        self._busy = False
        self.task = None
        if self._session.closed:
            self._close()
        else:
            self._process()
        if self._lost:
            self._forget()

    def _data_deadline(self) -> None:
        if self.task is not None and not self.task.done():
            self._timed_out = True
            self.task.cancel()

    def _complete(self, event: Ehlo | MailFrom | RcptTo, result: Any) -> None:
        session = self._session
        if type(event) is Ehlo:
            if isinstance(result, Reply):
                self._answer(result)
            else:
                self._out.append(session.accept(result))
                self._conn["ehlo_domain"] = event.domain
        elif result is not None and result.code >= 400:
            self._answer(result)
        elif type(event) is RcptTo and not self._relay_ok:
            # After the handler, as KumoMTA's reference flow does; a positive Reply from the
            # handler does not bypass it.
            self._answer(R.relaying_denied(self._peer))
        elif result is None:
            self._out.append(session.accept())
        else:
            self._answer(result)

    def _reject(self, exc: RejectError) -> bool:
        """Answer ``kumo.reject``; False when the connection must be dropped."""
        self._answer(Reply.from_text(exc.code, exc.reply_text))
        if exc.disconnect or self._session.closed:
            self._close()
            return False
        return True

    def _answer(self, reply: Reply) -> None:
        session = self._session
        if reply.code >= 400:
            self._rejected(session.command, reply)
        self._out.append(session.send(reply))  # a 421 closes the session


async def _drive_suspended(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    """Continue a coroutine that was stepped once by hand and yielded ``yielded`` (the future
    it waits on, or None for a bare yield), inside the current task; returns its result."""
    while True:
        try:
            if yielded is None:
                await asyncio.sleep(0)
            else:
                # As Task.__step does: the coroutine flagged the future when yielding it.
                yielded._asyncio_future_blocking = False
                await yielded
        except BaseException as exc:  # the future failed or our task was cancelled
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            yielded = coro.send(None)
        except StopIteration as stop:
            return stop.value


async def start_esmtp_listener(config: EsmtpListenerConfig, handler: SmtpHandler) -> EsmtpListener:
    """Bind ``config.listen`` and serve ESMTP with ``handler``; returns once listening.

    Raises ListenerError when the address cannot be bound."""
    loop = asyncio.get_running_loop()
    listener = EsmtpListener(config, handler, loop)
    host, port = config.address
    try:
        listener._server = await loop.create_server(
            lambda: _SmtpConnection(listener), host, port, reuse_address=True, backlog=1024
        )
    except OSError as exc:
        raise ListenerError(f"esmtp listener: failed to bind to {config.listen}: {exc}") from exc
    log.info("smtp listener on %s", _format_addr(listener.address))
    return listener
