"""kumoq.delivery.smtp against hand-written asyncio servers on 127.0.0.1: connect failures and
timeouts, and ``ScriptedServer``, which checks pipelining, RSET and dot-stuffing on the wire
(it answers nothing of a transaction until it has read the whole envelope up to DATA).
The shared helpers are in smtp_client_support.py.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from kumoq.config.egress import Tls
from kumoq.delivery.smtp import ConnectFailure, SmtpClientSession
from kumoq.logs.records import RecordType, Response
from tests.integration.smtp_client_support import BODY, connect, message

pytestmark = pytest.mark.integration


async def test_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = await connect(port)
    assert isinstance(result, ConnectFailure)
    assert result.transient
    assert "failed to connect" in result.reason


async def test_banner_timeout() -> None:
    done = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()
        await writer.wait_closed()
        done.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await connect(port, banner_timeout=0.2)
        assert isinstance(result, ConnectFailure)
        assert "timed out after 0.2s waiting for a reply" in result.reason
        await asyncio.wait_for(done.wait(), 5)
    finally:
        server.close()
        await server.wait_closed()


class ScriptedServer:
    """A raw server that offers PIPELINING and answers nothing of a transaction until it has
    read the whole envelope up to DATA, then sends every reply in one write. A client that
    waits for each reply before sending the next command stalls against it."""

    def __init__(self, rcpt_replies: dict[str, bytes], data_reply: bytes = b"354 go ahead") -> None:
        self.rcpt_replies = rcpt_replies
        self.data_reply = data_reply
        self.groups: list[list[bytes]] = []
        self.bodies: list[bytes] = []
        self.done = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted ESMTP\r\n")
        try:
            await reader.readline()  # EHLO
            writer.write(b"250-scripted\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            while True:
                group: list[bytes] = []
                replies: list[bytes] = []
                while not group or group[-1] != b"DATA":
                    line = (await reader.readline()).rstrip(b"\r\n")
                    if line in (b"QUIT", b""):
                        writer.write(b"221 bye\r\n")
                        return
                    group.append(line)
                    if line.startswith(b"RCPT TO:<"):
                        local = line[9:].split(b"@", 1)[0].decode()
                        replies.append(self.rcpt_replies.get(local, b"250 2.1.5 ok"))
                    elif line != b"DATA":
                        replies.append(b"250 2.0.0 ok")
                self.groups.append(group)
                writer.write(b"".join(r + b"\r\n" for r in [*replies, self.data_reply]))
                if self.data_reply.startswith(b"354"):
                    body = b""
                    while not body.endswith(b"\n.\r\n") and body != b".\r\n":
                        body += await reader.readline()
                    self.bodies.append(body)
                    writer.write(b"250 2.0.0 queued\r\n")
        finally:
            writer.close()
            await writer.wait_closed()
            self.done.set()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Any]]:
    servers: list[tuple[asyncio.Server, ScriptedServer]] = []

    async def start(**kw: Any) -> tuple[ScriptedServer, int]:
        script = ScriptedServer(**kw)
        server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
        servers.append((server, script))
        return script, server.sockets[0].getsockname()[1]

    yield start
    for server, script in servers:
        server.close()
        await server.wait_closed()
        await asyncio.wait_for(script.done.wait(), 5)


async def test_pipelining_sends_the_envelope_in_one_group(scripted: Any) -> None:
    script, port = await scripted(rcpt_replies={"busy": b"450 4.2.1 busy"})
    session = await connect(port, enable_tls=Tls.DISABLED, mail_from_timeout=2)
    assert isinstance(session, SmtpClientSession)
    assert session.pipelining
    first = await session.deliver(message("a@example.com", "busy@example.com"))
    second = await session.deliver(message("b@example.com"))
    await session.quit()
    assert [r.response.code for r in first.recipients] == [250, 450]
    assert [r.disposition for r in first.recipients] == [
        RecordType.Delivery,
        RecordType.TransientFailure,
    ]
    assert second.recipients[0].response == Response(250, (2, 0, 0), "queued", ".\r\n")
    assert script.groups == [
        [b"MAIL FROM:<from@example.com>", b"RCPT TO:<a@example.com>", b"RCPT TO:<busy@example.com>",
         b"DATA"],
        [b"RSET", b"MAIL FROM:<from@example.com>", b"RCPT TO:<b@example.com>", b"DATA"],
    ]  # fmt: skip
    assert script.bodies == [BODY.replace(b"\n.", b"\n..") + b".\r\n"] * 2


async def test_pipelined_data_accepted_without_recipients_ends_an_empty_message(
    scripted: Any,
) -> None:
    """RFC 2920 §3.1: DATA went out before the RCPT replies were known; a server that still
    says 354 gets an empty message, and the recipients keep their RCPT replies."""
    script, port = await scripted(rcpt_replies={"a": b"550 5.1.1 unknown"})
    session = await connect(port, enable_tls=Tls.DISABLED)
    assert isinstance(session, SmtpClientSession)
    outcome = await session.deliver(message("a@example.com"))
    assert outcome.recipients[0].disposition is RecordType.Bounce
    assert outcome.recipients[0].response.code == 550
    assert script.bodies == [b".\r\n"]
    again = await session.deliver(message("b@example.com"))
    assert again.recipients[0].disposition is RecordType.Delivery
    await session.quit()


async def test_enable_pipelining_false_waits_for_each_reply(scripted: Any) -> None:
    """The scripted server answers only once DATA has arrived, so a client that honours
    ``enable_pipelining = false`` times out waiting for the MAIL reply."""
    _script, port = await scripted(rcpt_replies={})
    session = await connect(
        port, enable_tls=Tls.DISABLED, enable_pipelining=False, mail_from_timeout=0.3
    )
    assert isinstance(session, SmtpClientSession)
    assert "pipelining" in session.extensions
    assert not session.pipelining
    outcome = await session.deliver(message("a@example.com"))
    assert outcome.recipients[0].disposition is RecordType.TransientFailure
    assert "timed out after 0.3s" in outcome.recipients[0].response.content
    assert session.closed
    await session.quit()


async def test_enable_rset_false_sends_no_rset(scripted: Any) -> None:
    script, port = await scripted(rcpt_replies={})
    session = await connect(port, enable_tls=Tls.DISABLED, enable_rset=False)
    assert isinstance(session, SmtpClientSession)
    for rcpt in ("a@example.com", "b@example.com"):
        outcome = await session.deliver(message(rcpt))
        assert outcome.recipients[0].disposition is RecordType.Delivery
    await session.quit()
    assert [group[0] for group in script.groups] == [b"MAIL FROM:<from@example.com>"] * 2


async def test_dot_stuffing_on_the_wire(scripted: Any) -> None:
    script, port = await scripted(rcpt_replies={})
    session = await connect(port, enable_tls=Tls.DISABLED)
    assert isinstance(session, SmtpClientSession)
    for data in (b".first line\r\nsecond\r\n", b"plain\r\nno dots\r\n", b"no final crlf"):
        msg = message("a@example.com")
        msg.data = data
        outcome = await session.deliver(msg)
        assert outcome.recipients[0].disposition is RecordType.Delivery
    await session.quit()
    assert script.bodies == [
        b"..first line\r\nsecond\r\n.\r\n",
        b"plain\r\nno dots\r\n.\r\n",
        b"no final crlf\r\n.\r\n",
    ]


async def test_a_server_that_hangs_up_while_idle_makes_the_session_unreusable() -> None:
    async def hang_up_after_ehlo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        writer.write(b"220 mx ESMTP\r\n")
        await reader.readline()
        writer.write(b"250 mx\r\n")
        await asyncio.sleep(0.1)
        writer.write(b"421 4.4.2 mx idle too long\r\n")  # unasked, then gone
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(hang_up_after_ehlo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        session = await connect(port, enable_tls=Tls.DISABLED)
        assert isinstance(session, SmtpClientSession)
        assert bool(session.reusable)  # not narrowed by mypy: it changes during the awaits below
        for _ in range(100):
            if not session.reusable:
                break
            await asyncio.sleep(0.02)
        assert not session.reusable
        assert not session.closed  # nothing was asked yet; the dispatcher checks reusable
        await session.quit()
    finally:
        server.close()
        await server.wait_closed()


async def test_cancelling_a_connect_closes_its_socket() -> None:
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # returns once the client has closed its side
        closed.set()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        task = asyncio.ensure_future(connect(port, banner_timeout=60))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(closed.wait(), 5)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_dot_after_a_bare_cr_or_lf_is_stuffed(scripted: Any) -> None:
    """Content a policy set (``msg:set_data``) may hold bare CR or LF: a dot after either is
    doubled, so a server that takes them as line ends never reads an end of data there."""
    script, port = await scripted(rcpt_replies={})
    session = await connect(port, enable_tls=Tls.DISABLED)
    assert isinstance(session, SmtpClientSession)
    msg = message("a@example.com")
    msg.data = b"Subject: x\r\n\r\nfirst\r.\r\nsecond\n.\nthird\r\n"
    outcome = await session.deliver(msg)
    await session.quit()
    assert outcome.recipients[0].disposition is RecordType.Delivery
    assert script.bodies == [b"Subject: x\r\n\r\nfirst\r..\r\nsecond\n..\nthird\r\n.\r\n"]
