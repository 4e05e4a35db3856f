"""The inbound ESMTP listener: binds the socket and keeps the books of its connections.

This module owns ``EsmtpListener`` (binding, accepting, the connection count, the relay cache
and the graceful shutdown) and ``start_esmtp_listener``. Each connection is a ``SmtpConnection``
(``smtp/connection.py``), the protocol is in ``smtp/session.py``, and every decision (EHLO,
MAIL, RCPT, DATA) goes to an injected ``SmtpHandler`` (``smtp/handler.py``), the seam the
daemon implements. Works on asyncio's and uvloop's loops.

Shutdown (``EsmtpListener.close``): stop accepting, let every handler call in progress finish
and its reply be written, then answer ``421 4.3.2 <host> shutting down`` at the next point
where the connection would wait for input (as KumoMTA does); connections still busy after the
drain timeout are aborted, and ``close`` returns once their handler calls have ended (an aborted
DATA first undoes the spool writes it had in flight).

Accepting is our own (``loop.add_reader`` and ``accept()``, then
``loop.connect_accepted_socket``) rather than ``loop.create_server``'s: a failed ``accept()``
-- EMFILE or ENFILE when file descriptors run out -- is counted in ``accept_failures`` and
logged at most once every few seconds (``smtp/admission.py``), and accepting pauses for
``ACCEPT_RETRY`` seconds while new connections wait in the listen backlog. uvloop's server
closes such connections unseen (libuv's EMFILE trick) and asyncio's logs each attempt.

``ConnectionMeta`` and ``SmtpHandler`` are re-exported here for the daemon's imports.

Imports: asyncio, socket, ssl, kumoq.smtp.connection/admission/handler/tls,
kumoq.config.listener, kumoq.errors. Must not import the daemon, the spool, the queues or
lupa; nothing in kumoq.smtp imports this module.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl
from typing import Final, final

from kumoq.config.listener import EsmtpListenerConfig
from kumoq.errors import ListenerError
from kumoq.smtp.admission import OUT_OF_RESOURCES, AcceptFailures, Admission
from kumoq.smtp.connection import SmtpConnection, format_addr
from kumoq.smtp.handler import ConnectionMeta, SmtpHandler
from kumoq.smtp.tls import server_context

__all__ = [
    "ConnectionMeta",
    "EsmtpListener",
    "SmtpHandler",
    "start_esmtp_listener",
]

log = logging.getLogger(__name__)

_RELAY_CACHE_MAX: Final = 4096
ACCEPT_RETRY: Final = 0.5  # seconds without accepting after EMFILE, ENFILE, ENOBUFS or ENOMEM
_ACCEPT_BATCH: Final = 128  # connections accepted per readiness callback at most
_BACKLOG: Final = 1024


@final
class EsmtpListener:
    """A running listener: ``address`` is the bound ``(host, port)``; ``close()`` drains.

    Satisfies ``kumoq.smtp.connection.ConnectionOwner`` for the connections it accepts."""

    def __init__(
        self,
        config: EsmtpListenerConfig,
        handler: SmtpHandler,
        loop: asyncio.AbstractEventLoop,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config
        self.handler = handler
        self.loop = loop
        self.tls_context = tls_context  # STARTTLS is offered when there is one
        self.draining = False
        self.drained = asyncio.Event()
        self.connections: set[SmtpConnection] = set()
        self.admission = Admission(config)
        self.accept_failures = AcceptFailures(config.listen)
        self._sockets: list[socket.socket] = []
        self._accepting: set[int] = set()  # the fds of the sockets being watched
        self._adopting: set[asyncio.Task[object]] = set()
        self._relay: dict[str, bool] = {}

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

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

    def track(self, conn: SmtpConnection) -> None:
        self.connections.add(conn)
        self.admission.admit(conn.key)

    def forget(self, conn: SmtpConnection) -> None:
        """Gone and idle: leave the books (a busy handler holds the drain)."""
        connections = self.connections
        if conn in connections:
            connections.remove(conn)
            self.admission.leave(conn.key)
        if self.draining and not connections:
            self.drained.set()

    # --- accepting -----------------------------------------------------------------------------
    def _serve(self, sockets: list[socket.socket]) -> None:
        self._sockets = sockets
        for sock in sockets:
            self._watch(sock)

    def _watch(self, sock: socket.socket) -> None:
        if not self.draining and sock.fileno() >= 0:
            self._accepting.add(sock.fileno())
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _unwatch(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if fd in self._accepting:
            self._accepting.discard(fd)
            self.loop.remove_reader(fd)

    def _accept(self, sock: socket.socket) -> None:
        loop = self.loop
        failures = self.accept_failures
        # socket.accept() without its enum conversions of family and type (both asked per
        # call); the new socket is left blocking: connect_accepted_socket makes it
        # non-blocking itself (uvloop's uv_tcp_open, asyncio's transport), one ioctl each.
        accept = sock._accept  # type: ignore[attr-defined]
        family, kind, proto = int(sock.family), int(sock.type), sock.proto
        for _ in range(_ACCEPT_BATCH):
            try:
                fd, _ = accept()
            except BlockingIOError:
                return
            except (InterruptedError, ConnectionAbortedError):
                continue
            except OSError as exc:
                failures.failed(exc, loop.time())
                if exc.errno in OUT_OF_RESOURCES:
                    self._unwatch(sock)
                    loop.call_later(ACCEPT_RETRY, self._watch, sock)
                return
            if failures.unreported:
                failures.recovered(loop.time())
            try:
                conn = socket.socket(family, kind, proto, fd)
            except OSError:  # the peer is gone already (ENOTCONN, EBADF): nothing to serve
                os.close(fd)
                continue
            task = loop.create_task(self._adopt(conn))
            self._adopting.add(task)
            task.add_done_callback(self._adopting.discard)

    async def _adopt(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: SmtpConnection(self), conn)
        except Exception:  # the peer went away first, or the loop refused the socket
            conn.close()
            log.debug("esmtp listener: accepted connection lost before it started", exc_info=True)

    async def close(self, drain_seconds: float = 30.0) -> None:
        """Stop accepting; let handler calls in progress finish, then answer every connection
        ``421 4.3.2 <host> shutting down``; abort what is still open after ``drain_seconds``."""
        self.draining = True
        sockets, self._sockets = self._sockets, []
        for sock in sockets:
            self._unwatch(sock)
            sock.close()
        if self._adopting:
            await asyncio.wait(set(self._adopting))
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
                tasks = {c.task for c in stuck if c.task is not None}
                while tasks:
                    # An aborted handler call ends at once, except a DATA whose spool writes
                    # are in flight: it lets them end and takes its messages back out of the
                    # spool (kumoq.reception), which must happen before the spool is closed.
                    _, tasks = await asyncio.wait(tasks, timeout=10.0)
                    if tasks:
                        log.warning(
                            "esmtp listener: waiting for %d aborted transactions to undo "
                            "their spool writes", len(tasks),
                        )  # fmt: skip

    async def __aenter__(self) -> EsmtpListener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def start_esmtp_listener(
    config: EsmtpListenerConfig, handler: SmtpHandler, *, reuse_port: bool = False
) -> EsmtpListener:
    """Bind ``config.listen`` and serve ESMTP with ``handler``, offering STARTTLS with the
    configured certificate or a self-signed one (``smtp/tls.py``); returns once listening.
    ``reuse_port`` (``kumoq serve --workers N``) sets ``SO_REUSEPORT``, so that the workers
    bind the same address and the kernel spreads connections over them.

    Raises ListenerError when the TLS keys cannot be used or the address cannot be bound."""
    loop = asyncio.get_running_loop()
    listener = EsmtpListener(config, handler, loop, server_context(config))
    host, port = config.address
    try:
        sockets = await _bind(loop, host, port, reuse_port=reuse_port)
    except OSError as exc:
        raise ListenerError(f"esmtp listener: failed to bind to {config.listen}: {exc}") from exc
    listener._serve(sockets)
    log.info("smtp listener on %s", format_addr(listener.address))
    return listener


async def _bind(
    loop: asyncio.AbstractEventLoop, host: str, port: int, *, reuse_port: bool = False
) -> list[socket.socket]:
    """Listening sockets for every address of ``host``, as ``loop.create_server`` binds them:
    SO_REUSEADDR (and SO_REUSEPORT when asked), IPv6 sockets IPv6-only, an address family the
    host lacks skipped."""
    infos = await loop.getaddrinfo(
        host or None, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM,
        flags=socket.AI_PASSIVE,
    )  # fmt: skip
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:
                    message = f"error while attempting to bind on address {address!r}"
                    raise OSError(
                        exc.errno, f"{message}: {(exc.strerror or str(exc)).lower()}"
                    ) from None
                sockets.pop().close()  # that address family is not enabled (bpo-30945)
                continue
            sock.listen(_BACKLOG)
            sock.setblocking(False)
        if not sockets:
            raise OSError(errno.EADDRNOTAVAIL, f"no address to bind for {host!r}")
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
