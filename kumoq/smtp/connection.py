"""One inbound ESMTP connection: the ``asyncio.Protocol`` adapter around ``ServerSession``.

This module owns a connection's socket callbacks, its timer, its backpressure, its TLS
handshake and the loop that takes the session's events; the protocol is in
``smtp/session.py``, and the handler calls and the replies their outcomes become are the base
class's, ``HandlerCalls`` (``smtp/calls.py``). What a connection needs of the listener that
accepted it is the small ``ConnectionOwner`` protocol below, which ``EsmtpListener`` satisfies.

Hot path: ``data_received`` feeds the session and handles its events on the spot. The
``ehlo``/``mail_from``/``rcpt_to``/``auth_plain`` coroutines are stepped eagerly (no task, no
loop round trip): one that finishes without suspending -- a Lua call does -- is answered at
once; one that suspends is finished in a task (``smtp/eager.py``). ``data`` always runs in a
task, bounded by ``data_processing_timeout``. Replies are written in one batch whenever the
session needs input (RFC 2920 pipelining).

STARTTLS: reading pauses at once, the ``220`` is written (the session has dropped whatever
followed the command), and ``loop.start_tls`` runs in a task, bounded by ``client_timeout``;
the connection meta gets the TLS details. A failed handshake closes the connection. AUTH from
a client IP over its failure limit gets ``454 4.7.0`` without a handler call.

Limits (``smtp/admission.py``): a new connection may be refused; ``ClientLimits`` keeps the
client's deadlines (idle, a command line, the message content: one ``call_at`` handle re-armed
lazily; time in our own handlers does not count) and the message data it holds in the
listener's budget (a message that cannot get its bytes fails with ``452 4.3.1``).

Backpressure: while a handler call is in progress, reading pauses once more than
``HIGH_WATER`` bytes are queued in the session; reading also pauses while the transport's
write buffer is full.

Imports: asyncio, kumoq.smtp.calls/session/replies/tls, kumoq.message. Must not import
kumoq.smtp.server (the listener imports this module), the daemon, the spool, the queues or
lupa.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final, Protocol, cast

from kumoq.message import new_session_id
from kumoq.smtp import replies as R
from kumoq.smtp.calls import CallOwner, HandlerCalls, log
from kumoq.smtp.session import (
    NEED_DATA,
    Auth,
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
    StartTls,
    State,
)
from kumoq.smtp.tls import tls_meta

__all__ = ["HIGH_WATER", "ConnectionOwner", "SmtpConnection", "format_addr"]

HIGH_WATER: Final = 256 * 1024  # queued input bytes that pause reading while busy


class ConnectionOwner(CallOwner, Protocol):
    """What a connection needs of the listener that accepted it (beyond ``CallOwner``)."""

    @property
    def draining(self) -> bool:
        """True once the listener is closing: answer 421 at the next wait for input."""
        ...

    @property
    def connection_count(self) -> int: ...

    def relay_allowed(self, peer_ip: str) -> bool: ...

    def track(self, conn: SmtpConnection) -> None:
        """``conn`` was accepted and greeted."""
        ...

    def forget(self, conn: SmtpConnection) -> None:
        """``conn`` is gone and idle (no handler call in progress); it may be told twice."""
        ...


def format_addr(addr: Any) -> str:
    """``host:port``, ``[v6host]:port``, or ``str(addr)`` for anything else (a unix path)."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(addr)


class SmtpConnection(HandlerCalls, asyncio.Protocol):
    """One client connection. Events are handled synchronously inside ``data_received``; a
    task exists only while a handler call is suspended (always for ``data``)."""

    __slots__ = ("_last_rx", "_lost", "_read_paused", "_timer", "_transport", "_write_paused")

    _listener: ConnectionOwner

    def __init__(self, listener: ConnectionOwner) -> None:
        super().__init__(listener)
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._lost = False
        self._read_paused = False
        self._write_paused = False
        self._last_rx = 0.0

    @property
    def key(self) -> str | None:
        """The client IP, or None for a peer in ``relay_hosts`` (no per-IP connection cap)."""
        return self._limits.key

    # --- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)
        listener = self._listener
        config = listener.config
        peer = transport.get_extra_info("peername")
        peer_ip = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        self._peer = format_addr(peer)
        conn = self._conn
        conn["received_from"] = peer_ip
        conn["received_via"] = format_addr(transport.get_extra_info("sockname"))
        conn["hostname"] = config.hostname
        conn["reception_protocol"] = "ESMTP"
        conn["session_id"] = new_session_id()
        if config.meta:
            conn.update(config.meta)

        self._relay_ok = relay_ok = listener.relay_allowed(peer_ip)
        key = None if relay_ok else peer_ip
        refusal = listener.admission.refusal(
            key,
            draining=listener.draining,
            connections=listener.connection_count,
            ready=listener.handler.ready,
        )
        if refusal is not None:
            self._rejected("", refusal)
            transport.write(self._session.send(refusal))
            transport.close()
            return
        self._limits.key, self._limits.ip = key, peer_ip
        listener.track(self)
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
            if self._limits.held or session.state is State.DATA:
                self._account()
        elif not self._read_paused and session.buffered > HIGH_WATER:
            self._pause_reading()

    def eof_received(self) -> bool:
        self._session.receive_data(b"")
        if not self._busy:
            self._process()
        # We close the transport ourselves once the replies are queued (a TLS one closes anyway).
        return not self._session.tls_active

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._session.receive_data(b"")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._busy:
            if not self._session.closed:
                self._process()  # complete commands already received still get handled
            self._gone()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if not self._busy or self._session.buffered <= HIGH_WATER:
            self._resume_reading()

    # --- called by the listener ----------------------------------------------------------------
    def shutdown(self) -> None:
        """Listener draining: an idle connection is told 421 now, a busy one when it is done."""
        if not self._busy and not self._session.closed:
            self._process()

    def abort(self) -> None:
        if self._transport is not None and not self._lost:
            self._transport.abort()
        if self.task is not None and not self.task.done():
            self.task.cancel()

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
        due, reply = self._limits.deadline(self._last_rx)
        if now + 0.001 < due:  # data arrived since the timer was armed
            self._timer = loop.call_at(due, self._on_timer)
            return
        self._rejected("DATA" if self._limits.data_since is not None else "", reply)
        self._out.append(self._session.send(reply))
        self._close()

    def _waiting(self) -> None:
        """The session needs input: start the clocks of ``ClientLimits``."""
        session = self._session
        loop = self._listener.loop
        due = self._limits.waiting(loop.time(), session.reading_content, session.buffered > 0)
        if due is not None and self._timer is not None and due < self._timer.when():
            self._timer.cancel()
            self._timer = loop.call_at(due, self._on_timer)

    def _account(self) -> None:
        """Reserve the message data held now; fail the message being received if we can't."""
        session = self._session
        reading = session.state is State.DATA and session.pending is None
        if not self._limits.hold(session.buffered if reading else 0):
            if reading:
                session.abort_data(R.INSUFFICIENT_STORAGE)
            self._limits.hold(session.buffered if reading else 0, anyway=True)

    def _gone(self) -> None:
        """Gone and idle: give back what this connection held, and leave the listener."""
        self._limits.release()
        self._listener.forget(self)

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
        limits = self._limits
        while True:
            event = session.next_event()
            if event is NEED_DATA:
                self._waiting()
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
            limits.line_since = limits.data_since = None  # what comes next has its own clock
            cls = type(event)
            if cls is RcptTo:
                assert isinstance(event, RcptTo)
                if not self._step(self._rcpt_to(event.recipient), event):
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
            elif cls is StartTls:
                self._pause_reading()  # nothing more is read in the clear
                out.append(session.accept())  # the session drops what followed STARTTLS
                conn.pop("ehlo_domain", None)
                self._flush()
                self._busy = True
                self.task = self._listener.loop.create_task(self._run_tls())
                return
            elif cls is Auth:
                assert isinstance(event, Auth)
                if self._listener.admission.auth_blocked(limits.ip, self._listener.loop.time()):
                    self._answer(R.AUTH_THROTTLED)  # the policy is not asked
                elif not self._step(
                    handler.auth_plain(conn, event.authz, event.authc, event.password), event
                ):
                    return
            elif cls is MessageData:
                assert isinstance(event, MessageData)
                self._flush()
                self._busy = True
                self._limits.body = len(event.data)
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

    async def _run_tls(self) -> None:
        """The TLS handshake after ``220 Ready to start TLS``; on success the session reads
        again, over TLS. A failed or cancelled handshake ends the connection: asyncio closed
        its transport, and may never tell this protocol, so it counts itself lost here."""
        listener = self._listener
        raw = self._transport
        assert raw is not None
        assert listener.tls_context is not None
        transport: asyncio.BaseTransport | None = None
        try:
            if not self._lost:  # the peer may have gone since STARTTLS
                transport = await listener.loop.start_tls(
                    raw, self, listener.tls_context, server_side=True,
                    ssl_handshake_timeout=listener.config.client_timeout,
                )  # fmt: skip
        except Exception as exc:
            log.debug("TLS handshake with %s failed: %r", self._peer, exc)
        finally:
            if transport is None:
                if not raw.is_closing():
                    raw.abort()
                self._lost = True
                self._session.close()
            else:
                self._transport = cast(asyncio.Transport, transport)
                self._read_paused = self._write_paused = False  # the new transport reads
                self._conn.update(tls_meta(transport.get_extra_info("ssl_object")))
                self._session.tls_established()
            self._handler_done()

    def _handler_done(self) -> None:
        """A handler task ended (or was cancelled): carry on with buffered input, or finish."""
        self._busy = False
        self.task = None
        self._limits.body = 0
        if self._session.closed:
            self._close()
        else:
            self._process()
        if self._lost:
            self._gone()
        else:
            self._account()
