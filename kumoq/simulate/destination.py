"""The simulated destinations: a network of in-memory SMTP peers answering by the scenario.

``SimulatedNetwork`` implements the virtual loop's ``Network`` seam: when kumoq's SMTP client
(``kumoq.delivery.client_connection``) connects to an address, it gets a ``MemoryTransport``
wired to a ``PeerSession`` of the destination that owns the address, instead of a socket.
Everything above the transport is kumoq's own: the reply reader, the SMTP client session with
its pipelining and timeouts, the connection plan, the dispatchers and ready queues.

A peer answers as its ``Behaviour`` (kumoq.simulate.scenario) says at that moment of virtual
time: the replies to the commands of one write (a PIPELINING group, or one command) come
together ``command_latency`` after it, the reply to a message's final dot ``latency`` after
it, each after the replies before it; a message is accepted, tempfailed or permfailed
at its final dot by the shares given; beyond ``max_connections`` a session gets a 421 banner;
after ``max_messages_per_connection`` messages the peer says 421 and hangs up; in a ``refuse``
window new sessions get the refusal as banner and open ones at their next MAIL; an
``unreachable`` destination refuses the connection.

``SimulatedNetwork.zone_texts()`` gives the DNS for the test resolver: each domain's MX hosts,
and A records for them and for the domain itself (so an ``mx_list`` naming it works too).
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from kumoq.simulate.scenario import Behaviour, Destination

__all__ = ["DestinationStats", "MemoryTransport", "PeerSession", "SimulatedNetwork"]

_BUSY: Final = b"421 4.7.0 too many connections, try again later\r\n"
_TOO_MANY: Final = b"421 4.7.0 too many messages on one connection, closing\r\n"
_DEFAULT_SOURCE: Final = "10.255.0.1"
_DOTS_LOOKED_AT: Final = 16


@dataclass(slots=True)
class DestinationStats:
    """What one destination saw (for the report)."""

    sessions: int = 0
    refused_busy: int = 0
    refused_window: int = 0
    unreachable: int = 0
    peak_sessions: int = 0
    accepted: int = 0
    tempfailed: int = 0
    permfailed: int = 0
    hung_up_after_limit: int = 0

    def to_json(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class MemoryTransport(asyncio.Transport):
    """The client's end of a simulated connection: writes go to the peer session, and the
    peer's replies arrive through ``data_received`` on the client's protocol."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol: asyncio.Protocol,
        sockname: tuple[str, int],
        peername: tuple[str, int],
    ) -> None:
        super().__init__()
        self.loop = loop
        self._protocol = protocol
        self._extra = {"sockname": sockname, "peername": peername, "ssl_object": None}
        self._closing = False
        self.peer: PeerSession | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self.peer is None:
            return
        self.peer.feed(data if type(data) is bytes else bytes(data))  # a body: not copied

    def close(self) -> None:
        """The client hangs up: the peer forgets the session, ``connection_lost`` follows."""
        if self._closing:
            return
        self._closing = True
        if self.peer is not None:
            self.peer.client_closed()
        self.loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def receive(self, data: bytes) -> None:
        """Bytes from the peer."""
        if not self._closing:
            self._protocol.data_received(data)

    def peer_closed(self) -> None:
        """The peer hung up: end of file, then the connection is gone."""
        if self._closing:
            return
        self._protocol.eof_received()
        self.close()


class PeerSession:
    """One SMTP session of a simulated destination: reads commands, schedules replies.

    Replies leave in the order of the commands: each batch comes ``delay`` after the later of
    its commands' arrival and the previous reply, like a server that works one request at a
    time.
    """

    __slots__ = (
        "_buffer",
        "_busy_until",
        "_closed",
        "_in_data",
        "_loop",
        "_outbox",
        "_server",
        "_timer",
        "_transport",
        "messages",
    )

    def __init__(self, server: DestinationServer, transport: MemoryTransport) -> None:
        self._server = server
        self._transport = transport
        self._loop = transport.loop
        self._buffer = b""
        self._in_data = False
        self._busy_until = 0.0
        self._outbox: deque[tuple[float, bytes, bool]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.messages = 0

    # -- replies ------------------------------------------------------------------------------

    def reply(self, data: bytes, delay: float, *, close: bool = False) -> None:
        """Send ``data`` ``delay`` seconds after the previous reply (or now); hang up after
        it when ``close``."""
        at = max(self._loop.time(), self._busy_until) + delay
        self._busy_until = at
        self._outbox.append((at, data, close))
        if self._timer is None:
            self._timer = self._loop.call_at(at, self._flush)

    def _flush(self) -> None:
        self._timer = None
        now = self._loop.time()
        chunks: list[bytes] = []
        close = False
        outbox = self._outbox
        while outbox and outbox[0][0] <= now:
            _, data, close = outbox.popleft()
            chunks.append(data)
            if close:
                outbox.clear()
                break
        if chunks:
            self._transport.receive(b"".join(chunks))
        if close:
            self._hang_up()
            self._transport.peer_closed()
        elif outbox:
            self._timer = self._loop.call_at(outbox[0][0], self._flush)

    def _hang_up(self) -> None:
        if not self._closed:
            self._closed = True
            self._server.session_ended(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def client_closed(self) -> None:
        self._outbox.clear()
        self._hang_up()

    # -- commands -----------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes from the client: answer every complete command (and message). The replies to
        the commands of one write (a PIPELINING group) leave together, ``command_latency``
        after it; a message's final dot is answered ``latency`` after it."""
        if self._closed:
            return
        buffer = self._buffer + data if self._buffer else data
        behaviour = self._server.behaviour()
        group: list[bytes] = []
        close = False
        while buffer and not close:
            if self._in_data:
                end = _end_of_data(buffer)
                if end < 0:
                    break
                buffer = buffer[end + 5 :]
                self._in_data = False
                self._end_of_message(behaviour)
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                break
            line, buffer = buffer[:end], buffer[end + 2 :]
            answer, close = self._command(line, behaviour)
            group.append(answer)
        self._buffer = buffer
        if group:
            self.reply(b"".join(group), behaviour.command_latency, close=close)

    def _command(self, line: bytes, behaviour: Behaviour) -> tuple[bytes, bool]:
        """The reply to one command line, and whether the peer hangs up after it."""
        verb = line[:4].upper()
        if verb == b"MAIL":
            if behaviour.refuse is not None:
                self._server.stats.refused_window += 1
                return behaviour.refuse.encode() + b"\r\n", True
            return b"250 2.1.0 OK\r\n", False
        if verb == b"RCPT":
            return b"250 2.1.5 OK\r\n", False
        if verb == b"DATA":
            self._in_data = True
            return b"354 go ahead\r\n", False
        if verb in (b"EHLO", b"HELO"):
            name = self._server.host.encode()
            return b"250-" + name + b"\r\n250-PIPELINING\r\n250 8BITMIME\r\n", False
        if verb in (b"RSET", b"NOOP"):
            return b"250 2.0.0 OK\r\n", False
        if verb == b"QUIT":
            return b"221 2.0.0 bye\r\n", True
        return b"502 5.5.2 command not implemented\r\n", False

    def _end_of_message(self, behaviour: Behaviour) -> None:
        server = self._server
        stats = server.stats
        draw = server.rng.random()
        if draw < behaviour.permfail:
            stats.permfailed += 1
            answer = behaviour.permfail_reply
        elif draw < behaviour.permfail + behaviour.tempfail:
            stats.tempfailed += 1
            answer = behaviour.tempfail_reply
        else:
            stats.accepted += 1
            answer = "250 2.0.0 OK queued"
        self.reply(answer.encode() + b"\r\n", behaviour.latency)
        self.messages += 1
        limit = behaviour.max_messages_per_connection
        if limit is not None and self.messages >= limit:
            stats.hung_up_after_limit += 1
            self.reply(_TOO_MANY, 0.0, close=True)


def _end_of_data(buffer: bytes) -> int:
    """Where the first ``CRLF . CRLF`` in ``buffer`` starts, or -1: ``buffer.find`` of it, by
    way of its dots. CPython scans for a five-byte needle byte by byte (4 us per 4 KB message);
    ``find`` of one byte is memchr, and a message has few dots, its terminator among them.
    Past ``_DOTS_LOOKED_AT`` dots the plain search answers."""
    at = buffer.find(b".", 2)
    for _ in range(_DOTS_LOOKED_AT):
        if at < 0:
            return -1
        if buffer[at - 2 : at] == b"\r\n" and buffer[at + 1 : at + 3] == b"\r\n":
            return at - 2
        at = buffer.find(b".", at + 1)
    return buffer.find(b"\r\n.\r\n")


class DestinationServer:
    """The MX hosts of one destination: its sessions and what it counts."""

    def __init__(
        self, destination: Destination, elapsed: Callable[[], float], rng: random.Random
    ) -> None:
        self.destination = destination
        self.host = destination.mx[0]
        self.rng = rng
        self.stats = DestinationStats()
        self._elapsed = elapsed
        self._open = 0

    def behaviour(self) -> Behaviour:
        return self.destination.at(self._elapsed())

    def accept(self, transport: MemoryTransport) -> None:
        """A new connection: a banner, or a 421 and a hang-up."""
        behaviour = self.behaviour()
        session = PeerSession(self, transport)
        transport.peer = session
        pause = behaviour.command_latency
        self._open += 1  # a refused session counts too, until it is gone
        if behaviour.refuse is not None:
            self.stats.refused_window += 1
            session.reply(behaviour.refuse.encode() + b"\r\n", pause, close=True)
            return
        limit = behaviour.max_connections
        if limit is not None and self._open > limit:
            self.stats.refused_busy += 1
            session.reply(_BUSY, pause, close=True)
            return
        self.stats.sessions += 1
        self.stats.peak_sessions = max(self.stats.peak_sessions, self._open)
        session.reply(f"220 {self.host} ESMTP simulated\r\n".encode(), pause)

    def session_ended(self, session: PeerSession) -> None:
        self._open -= 1


class SimulatedNetwork:
    """Every destination of a scenario at its addresses: the virtual loop's ``Network``."""

    def __init__(
        self,
        destinations: tuple[Destination, ...],
        *,
        elapsed: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.servers: dict[str, DestinationServer] = {}
        self._by_address: dict[str, DestinationServer] = {}
        self._addresses: dict[str, tuple[str, ...]] = {}
        self._ports = itertools.count(20000)
        for index, destination in enumerate(destinations, 1):
            server = DestinationServer(destination, elapsed, rng)
            self.servers[destination.name] = server
            addresses = destination.addresses or (f"10.{index // 250}.{index % 250}.25",)
            self._addresses[destination.name] = addresses
            for address in addresses:
                self._by_address[address] = server

    def zone_texts(self) -> list[str]:
        """Zone text for ``TestResolver``: MX and A records of every destination."""
        lines: list[str] = []
        for name, server in self.servers.items():
            destination = server.destination
            addresses = self._addresses[name]
            for domain in destination.domains:
                lines += [f"{domain}. 300 IN MX 10 {mx}." for mx in destination.mx]
                lines += [f"{domain}. 300 IN A {address}" for address in addresses]
            for mx in destination.mx:
                if mx not in destination.domains:
                    lines += [f"{mx}. 300 IN A {address}" for address in addresses]
        return ["\n".join(lines) + "\n"]

    async def open_connection(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str,
        port: int,
        local_addr: tuple[str, int] | None,
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        server = self._by_address.get(host)
        if server is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"nothing simulated at {host}")
        if server.behaviour().unreachable:
            server.stats.unreachable += 1
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"{server.host} is unreachable")
        protocol = protocol_factory()
        if not isinstance(protocol, asyncio.Protocol):
            raise TypeError("a simulated connection carries a stream protocol")
        source = local_addr[0] if local_addr else _DEFAULT_SOURCE
        loop = asyncio.get_running_loop()
        transport = MemoryTransport(loop, protocol, (source, next(self._ports)), (host, port))
        protocol.connection_made(transport)
        server.accept(transport)
        return transport, protocol
