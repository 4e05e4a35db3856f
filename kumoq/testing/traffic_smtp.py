"""``kumoq traffic-gen`` over SMTP: one sender per connection, several messages per connection.

``smtp_sender(run, host, port, ...)`` loops: claim up to ``per_connection`` messages, connect,
read the banner, EHLO, send them, QUIT, and again, until none is left. It reads replies with
kumoq's own client connection (``kumoq.delivery.client_connection``), which keeps replies that
arrive together, so commands can be written several at a time.

When the server offers PIPELINING (RFC 2920) each message costs one round trip: ``MAIL``,
``RCPT`` and ``DATA`` go in one write; after the ``354`` the body, its final dot and the next
message's ``MAIL``/``RCPT``/``DATA`` go in the next one (RFC 2920 lets the content start a
group). Without PIPELINING every command waits for its reply.

A refused ``MAIL``, ``RCPT`` or ``DATA`` settles the message with that reply and the next
transaction starts with ``RSET``. A ``421`` settles the message it answers; the server closes,
so the messages not yet carried are given back and a new connection takes them. A connection
that breaks settles the messages in flight as errors.

Imports asyncio, kumoq.delivery.client_connection and the sibling traffic_run.
"""

from __future__ import annotations

import asyncio
from email.utils import formatdate
from time import perf_counter

from kumoq.delivery.client_connection import ClientConnection, ConnectionBroken
from kumoq.delivery.reply_reader import ServerReply
from kumoq.testing.traffic_message import OutgoingMessage
from kumoq.testing.traffic_run import TrafficRun

__all__ = ["smtp_sender"]

_POSITIVE = {"MAIL": (250,), "RCPT": (250, 251), "DATA": (354,)}


class _Closed(Exception):
    """The server sent 421 (and closes); carry the rest on a new connection."""


class _Dates:
    """The ``Date:`` header value, formatted at most once a second."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._at = -1.0
        self._text = ""

    def now(self) -> str:
        t = self._loop.time()
        if t - self._at >= 1.0:
            self._at = t
            self._text = formatdate(localtime=True)
        return self._text


async def smtp_sender(
    run: TrafficRun,
    host: str,
    port: int,
    *,
    per_connection: int,
    limit: float,
    ehlo: str,
) -> None:
    """One sender: connections one after another until the run has no message left."""
    loop = asyncio.get_running_loop()
    dates = _Dates(loop)
    failures = 0
    while True:
        batch = run.claim(per_connection)
        if not batch:
            return
        try:
            conn = await ClientConnection.open(host, port, local_addr=None, deadline=limit)
        except (OSError, TimeoutError) as exc:
            run.give_back(batch)
            failures += 1
            reason = f"cannot connect to {host}:{port}: {str(exc) or type(exc).__name__}"
            if run.cannot_connect(reason, failures):
                return
            await asyncio.sleep(min(0.05 * 2**failures, 2.0))
            continue
        try:
            greeted = await _greet(run, conn, limit, ehlo)
            if greeted is None:
                run.give_back(batch)
                failures += 1
                if run.cannot_connect(f"{host}:{port} refused the session", failures):
                    return
                await asyncio.sleep(min(0.05 * 2**failures, 2.0))
                continue
            failures = 0
            run.connected()
            left = await _session(run, conn, batch, greeted, limit, dates)
            run.give_back(left)
        finally:
            conn.abort()


async def _greet(run: TrafficRun, conn: ClientConnection, limit: float, ehlo: str) -> bool | None:
    """Banner and EHLO; whether PIPELINING is offered, or None when the session was refused."""
    try:
        banner = await conn.read_reply(limit)
        if banner.code != 220:
            run.error(f"banner: {banner.code} {banner.text}")
            return None
        conn.write(f"EHLO {ehlo}\r\n".encode())
        reply = await conn.read_reply(limit)
    except ConnectionBroken as exc:
        run.error(f"greeting: {exc}")
        return None
    if reply.code != 250:
        run.error(f"EHLO: {reply.code} {reply.text}")
        return None
    return any(line.split(" ")[0].upper() == "PIPELINING" for line in reply.lines[1:])


async def _session(
    run: TrafficRun,
    conn: ClientConnection,
    batch: list[int],
    pipelining: bool,
    limit: float,
    dates: _Dates,
) -> list[int]:
    """Send ``batch`` over ``conn``; returns the messages it did not carry."""
    factory = run.factory
    k = 0
    in_flight = 0  # messages written and not settled
    try:
        reset = False
        written: OutgoingMessage | None = None  # the next envelope, already written
        started = 0.0
        while k < len(batch):
            msg = written or factory.message(batch[k], dates.now())
            if written is None:
                await run.pacer.take()
                started = perf_counter()
                run.sent += 1
                in_flight += 1
                if pipelining:
                    conn.write((b"RSET\r\n" if reset else b"") + msg.envelope)
            written = None
            if reset:
                if not pipelining:
                    conn.write(b"RSET\r\n")
                await _expect(conn, limit, "RSET", (250,))
                reset = False
            refusal = await _envelope(conn, msg, pipelining, limit)
            if refusal is not None:
                run.settle(refusal.code, refusal.text, perf_counter() - started)
                in_flight -= 1
                k += 1
                if refusal.code == 421:
                    raise _Closed
                reset = True
                continue
            out = msg.body
            nxt: OutgoingMessage | None = None
            if pipelining and k + 1 < len(batch) and run.pacer.ready():
                nxt = factory.message(batch[k + 1], dates.now())
                out += nxt.envelope
            conn.write(out)
            next_started = perf_counter()
            if nxt is not None:
                run.sent += 1
                in_flight += 1
            final = await conn.read_reply(limit)
            run.settle(final.code, final.text, perf_counter() - started)
            in_flight -= 1
            k += 1
            if final.code == 421:
                raise _Closed
            written, started = nxt, next_started
        conn.write(b"QUIT\r\n")
        await conn.close(1.0)
        return []
    except _Closed:
        # The server closes: a message whose envelope went behind the 421 was never read.
        run.sent -= in_flight
        return batch[k:]
    except ConnectionBroken as exc:
        run.failed(in_flight, f"connection to {run.target} broke: {exc}")
        return batch[k + in_flight :]


async def _expect(conn: ClientConnection, limit: float, verb: str, codes: tuple[int, ...]) -> None:
    reply = await conn.read_reply(limit)
    if reply.code not in codes:
        if reply.code == 421:
            raise _Closed
        raise ConnectionBroken(f"{verb} answered {reply.code} {reply.text}")


async def _envelope(
    conn: ClientConnection, msg: OutgoingMessage, pipelining: bool, limit: float
) -> ServerReply | None:
    """Read (and without PIPELINING, send one by one) MAIL, RCPT and DATA; the first refusal,
    or None once DATA got its 354. After a refusal every pipelined reply has been read."""
    lines = msg.envelope.split(b"\r\n")[:3]
    refusal: ServerReply | None = None
    for line, verb in zip(lines, ("MAIL", "RCPT", "DATA"), strict=True):
        if not pipelining:
            if refusal is not None:
                break
            conn.write(line + b"\r\n")
        reply = await conn.read_reply(limit)
        if reply.code not in _POSITIVE[verb] and refusal is None:
            refusal = reply
            if reply.code == 421:  # the server closes: no further reply comes
                break
    return refusal
