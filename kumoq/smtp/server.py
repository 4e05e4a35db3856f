"""The inbound ESMTP listener: binds the socket and keeps the books of its connections.

This module owns ``EsmtpListener`` (accepting, the connection count, the relay cache and the
graceful shutdown) and ``start_esmtp_listener``. Each connection is a ``SmtpConnection``
(``smtp/connection.py``), the protocol is in ``smtp/session.py``, and every decision (EHLO,
MAIL, RCPT, DATA) goes to an injected ``SmtpHandler`` (``smtp/handler.py``), the seam the
daemon implements. Works on asyncio's and uvloop's loops.

Shutdown (``EsmtpListener.close``): stop accepting, let every handler call in progress finish
and its reply be written, then answer ``421 4.3.2 <host> shutting down`` at the next point
where the connection would wait for input (as KumoMTA does); connections still busy after the
drain timeout are aborted, and ``close`` returns once their handler calls have ended (an aborted
DATA first undoes the spool writes it had in flight).

``ConnectionMeta`` and ``SmtpHandler`` are re-exported here for the daemon's imports.

Imports: asyncio, kumoq.smtp.connection/handler, kumoq.config.listener, kumoq.errors. Must not
import the daemon, the spool, the queues or lupa; nothing in kumoq.smtp imports this module.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Final, final

from kumoq.config.listener import EsmtpListenerConfig
from kumoq.errors import ListenerError
from kumoq.smtp.connection import SmtpConnection, format_addr
from kumoq.smtp.handler import ConnectionMeta, SmtpHandler

__all__ = [
    "ConnectionMeta",
    "EsmtpListener",
    "SmtpHandler",
    "start_esmtp_listener",
]

log = logging.getLogger(__name__)

_RELAY_CACHE_MAX: Final = 4096


@final
class EsmtpListener:
    """A running listener: ``address`` is the bound ``(host, port)``; ``close()`` drains.

    Satisfies ``kumoq.smtp.connection.ConnectionOwner`` for the connections it accepts."""

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
        self.connections: set[SmtpConnection] = set()
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

    def track(self, conn: SmtpConnection) -> None:
        self.connections.add(conn)

    def forget(self, conn: SmtpConnection) -> None:
        """Gone and idle: leave the books (a busy handler holds the drain)."""
        connections = self.connections
        connections.discard(conn)
        if self.draining and not connections:
            self.drained.set()

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
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> EsmtpListener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def start_esmtp_listener(config: EsmtpListenerConfig, handler: SmtpHandler) -> EsmtpListener:
    """Bind ``config.listen`` and serve ESMTP with ``handler``; returns once listening.

    Raises ListenerError when the address cannot be bound."""
    loop = asyncio.get_running_loop()
    listener = EsmtpListener(config, handler, loop)
    host, port = config.address
    try:
        listener._server = await loop.create_server(
            lambda: SmtpConnection(listener), host, port, reuse_address=True, backlog=1024
        )
    except OSError as exc:
        raise ListenerError(f"esmtp listener: failed to bind to {config.listen}: {exc}") from exc
    log.info("smtp listener on %s", format_addr(listener.address))
    return listener
