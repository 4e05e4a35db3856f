"""The asyncio side of one outbound SMTP connection: a thin Protocol around ``ReplyReader``.

``ClientConnection`` buffers every complete reply as it arrives, so commands may be written
several at a time (PIPELINING) and their replies read afterwards, one ``read_reply()`` each, in
order. It knows nothing of SMTP commands: ``kumoq.delivery.smtp`` decides what to send.

- ``open()`` connects (bound to a source address when given) within a deadline;
- ``write()`` queues bytes on the transport; ``read_reply(timeout)`` returns the next reply or
  raises ``ConnectionBroken`` (peer closed, malformed reply, timeout);
- ``start_tls()`` upgrades in place with ``loop.start_tls``;
- ``close()`` closes and waits (bounded) for ``connection_lost``; ``abort()`` drops at once.

L2 adapter: asyncio only; the parsing is in kumoq.delivery.reply_reader.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import cast

from kumoq.delivery.reply_reader import ReplyReader, ServerReply
from kumoq.errors import RemoteProtocolError

__all__ = ["ClientConnection", "ConnectionBroken"]


class ConnectionBroken(Exception):
    """The connection can no longer carry replies: closed, timed out or spoke nonsense."""


class ClientConnection(asyncio.Protocol):
    """One TCP (then perhaps TLS) connection to an SMTP server."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._reader = ReplyReader()
        self._replies: collections.deque[ServerReply] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._broken: str | None = None
        self._lost = loop.create_future()
        self.transport: asyncio.Transport | None = None

    @classmethod
    async def open(
        cls,
        addr: str,
        port: int,
        *,
        local_addr: tuple[str, int] | None,
        deadline: float,
    ) -> ClientConnection:
        """Connect; raises ``TimeoutError`` or ``OSError`` as ``loop.create_connection`` does."""
        loop = asyncio.get_running_loop()
        conn = cls(loop)
        async with asyncio.timeout(deadline):  # wait_for would start a task for each connect
            await loop.create_connection(lambda: conn, addr, port, local_addr=local_addr)
        return conn

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        if self._broken is not None:
            return
        try:
            self._replies.extend(self._reader.feed(data))
        except RemoteProtocolError as exc:
            self._break(str(exc))
            if self.transport is not None:
                self.transport.close()
            return
        if self._replies:
            self._wake()

    def eof_received(self) -> bool:
        self._break("connection closed by the peer")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._break(f"connection lost: {exc}" if exc else "connection closed by the peer")
        if not self._lost.done():
            self._lost.set_result(None)

    # -- used by the session -------------------------------------------------------------

    @property
    def local_address(self) -> str:
        sockname = self.transport.get_extra_info("sockname") if self.transport else None
        return f"{sockname[0]}:{sockname[1]}" if sockname else ""

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        if self.transport is None:
            return None
        return cast("ssl.SSLObject | None", self.transport.get_extra_info("ssl_object"))

    @property
    def idle(self) -> bool:
        """Open, and nothing received that no command asked for: fit to carry a new command.

        False once the peer has closed or broken the connection, or sent an unsolicited reply
        (a 421 before hanging up, say) while no command was waiting."""
        transport = self.transport
        return (
            self._broken is None
            and transport is not None
            and not transport.is_closing()
            and not self._replies
            and not self._reader.pending
        )

    def write(self, data: bytes) -> None:
        transport = self.transport
        if self._broken is not None or transport is None or transport.is_closing():
            raise ConnectionBroken(self._broken or "connection is closed")
        transport.write(data)

    async def read_reply(self, limit: float) -> ServerReply:
        """The next reply, waiting at most ``limit`` seconds for it to complete."""
        if not self._replies:
            if self._broken is not None:
                raise ConnectionBroken(self._broken)
            waiter = self._waiter = self._loop.create_future()
            timer = self._loop.call_later(limit, self._time_out, waiter, limit)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not self._replies:
                raise ConnectionBroken(self._why_broken())
        return self._replies.popleft()

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str, limit: float) -> None:
        """Upgrade to TLS after a 220 to STARTTLS; raises ``ssl.SSLError``/``OSError``/
        ``TimeoutError`` when the handshake fails."""
        if self.transport is None or self._replies or self._reader.pending:
            raise ConnectionBroken("cannot start TLS: the connection is closed or not idle")
        transport = await self._loop.start_tls(
            self.transport,
            self,
            context,
            server_hostname=server_hostname,
            ssl_handshake_timeout=limit,
        )
        if transport is None:  # pragma: no cover - only when the transport closed meanwhile
            raise ConnectionBroken("connection closed during the TLS handshake")
        self.transport = transport

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def close(self, limit: float) -> None:
        """Close, then wait up to ``limit`` for the connection to be gone (else abort)."""
        transport = self.transport
        if transport is None:
            return
        if not transport.is_closing():
            transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(self._lost), limit)
        except TimeoutError:
            transport.abort()

    # -- internals -----------------------------------------------------------------------

    def _break(self, reason: str) -> None:
        if self._broken is None:
            self._broken = reason
        self._wake()

    def _why_broken(self) -> str:
        return self._broken or "no reply"

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _time_out(self, waiter: asyncio.Future[None], limit: float) -> None:
        if not waiter.done():
            self._broken = self._broken or f"timed out after {limit:g}s waiting for a reply"
            waiter.set_result(None)
