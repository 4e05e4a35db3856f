"""kumoq.delivery.smtp against a raw server on 127.0.0.1 that breaks the protocol (issue 9,
defect 4): a positive reply a command cannot get (251/252 to MAIL, 252 to RCPT, 250 to DATA
instead of 354) is a transient failure, no body is sent, and the connection is dropped. Only
the reply after the final dot makes a Delivery. Each case runs with and without PIPELINING."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from kumoq.config.egress import EgressPathConfig, EgressSource, Tls
from kumoq.delivery.smtp import SmtpClientSession
from kumoq.logs.records import RecordType
from kumoq.message import EnvelopeAddress, Message, new_spool_id

BODY = b"Subject: hi\r\n\r\nline\r\n"


class WrongServer:
    """Answers each command as soon as it reads it, with ``replies[verb]`` (RCPT: by local
    part from ``rcpt``), and offers PIPELINING when ``pipelining``. Keeps every line read."""

    def __init__(
        self, pipelining: bool, replies: dict[str, bytes], rcpt: dict[str, bytes] | None = None
    ) -> None:
        self.pipelining = pipelining
        self.replies = replies
        self.rcpt = rcpt or {}
        self.lines: list[bytes] = []
        self.bodies: list[bytes] = []
        self.done = asyncio.Event()

    def reply_to(self, line: bytes) -> bytes:
        verb = line.split(b":", 1)[0].split(b" ", 1)[0].decode().upper()
        if verb == "RCPT":
            local = line.split(b"<", 1)[1].split(b"@", 1)[0].decode()
            if local in self.rcpt:
                return self.rcpt[local]
        default = {"DATA": b"354 go ahead", "QUIT": b"221 bye"}.get(verb, b"250 2.0.0 ok")
        return self.replies.get(verb, default)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"220 wrong ESMTP\r\n")
            await reader.readline()  # EHLO
            extensions = b"250-PIPELINING\r\n" if self.pipelining else b""
            writer.write(b"250-wrong\r\n" + extensions + b"250 8BITMIME\r\n")
            while line := (await reader.readline()).rstrip(b"\r\n"):
                self.lines.append(line)
                reply = self.reply_to(line)
                writer.write(reply + b"\r\n")
                if line == b"QUIT":
                    return
                if line == b"DATA" and reply.startswith(b"354"):
                    body = b""
                    while not body.endswith(b"\n.\r\n") and body != b".\r\n":
                        chunk = await reader.readline()
                        if not chunk:
                            return
                        body += chunk
                    self.bodies.append(body)
                    writer.write(b"250 2.0.0 queued\r\n")
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.done.set()


Start = Callable[..., Any]


@pytest.fixture(params=[True, False], ids=["pipelining", "no-pipelining"])
def pipelining(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
async def wrong(pipelining: bool) -> AsyncIterator[Start]:
    """``await wrong(replies, rcpt=...)`` -> (server script, a connected session)."""
    servers: list[tuple[asyncio.Server, WrongServer]] = []
    sessions: list[SmtpClientSession] = []

    async def start(
        replies: dict[str, bytes], rcpt: dict[str, bytes] | None = None
    ) -> tuple[WrongServer, SmtpClientSession]:
        script = WrongServer(pipelining, replies, rcpt)
        server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
        servers.append((server, script))
        port = server.sockets[0].getsockname()[1]
        path = dataclasses.replace(
            EgressPathConfig(prohibited_hosts=()), enable_tls=Tls.DISABLED, data_timeout=5
        )
        session = await SmtpClientSession.connect(
            "localhost", "127.0.0.1", port, path=path,
            source=EgressSource(name="s1", source_address="127.0.0.1"),
            ehlo_domain="client.example",
        )  # fmt: skip
        assert isinstance(session, SmtpClientSession)
        assert session.pipelining is pipelining
        sessions.append(session)
        return script, session

    yield start
    for session in sessions:
        session.abort()
    for server, script in servers:
        server.close()
        await server.wait_closed()
        await asyncio.wait_for(script.done.wait(), 5)


def message(*rcpts: str) -> Message:
    return Message(
        id=new_spool_id(0.0),
        sender=EnvelopeAddress.parse("from@example.com"),
        recipients=[EnvelopeAddress.parse(r) for r in rcpts],
        data=BODY,
    )


async def ended(script: WrongServer) -> None:
    await asyncio.wait_for(script.done.wait(), 5)


async def test_a_correct_server_delivers_after_the_final_dot(wrong: Start) -> None:
    script, session = await wrong({})
    outcome = await session.deliver(message("a@example.com"))
    await session.quit()
    (rcpt,) = outcome.recipients
    assert rcpt.disposition is RecordType.Delivery
    assert rcpt.response.command == ".\r\n"
    assert script.bodies == [BODY + b".\r\n"]


@pytest.mark.parametrize("code", [b"251 2.1.0 forwarded", b"252 2.1.0 maybe", b"220 hello"])
async def test_a_positive_reply_to_mail_other_than_250_is_transient(
    wrong: Start, code: bytes
) -> None:
    script, session = await wrong({"MAIL": code})
    outcome = await session.deliver(message("a@example.com"))
    (rcpt,) = outcome.recipients
    assert rcpt.disposition is RecordType.TransientFailure
    assert rcpt.response.code == 451
    assert rcpt.response.enhanced_code == (4, 5, 0)
    assert "protocol violation" in rcpt.response.content
    assert f"MAIL got '{code.decode()}', expected 250" in rcpt.response.content
    assert session.closed
    await ended(script)
    assert script.bodies == []
    assert b"." not in script.lines  # no lone dot could have ended a message


@pytest.mark.parametrize("code", [b"250 2.0.0 accepted", b"251 ok", b"200 whatever"])
async def test_a_positive_reply_to_data_instead_of_354_is_transient(
    wrong: Start, code: bytes
) -> None:
    script, session = await wrong({"DATA": code})
    outcome = await session.deliver(message("a@example.com", "b@example.com"))
    assert [r.disposition for r in outcome.recipients] == [RecordType.TransientFailure] * 2
    assert all("DATA got" in r.response.content for r in outcome.recipients)
    assert "expected 354" in outcome.recipients[0].response.content
    assert session.closed
    await ended(script)
    assert script.bodies == []
    assert script.lines[-1] == b"DATA"  # nothing followed DATA: no body, no dot


async def test_a_252_to_rcpt_is_transient(wrong: Start) -> None:
    script, session = await wrong({}, rcpt={"b": b"252 2.1.5 cannot verify"})
    outcome = await session.deliver(message("a@example.com", "b@example.com"))
    assert [r.disposition for r in outcome.recipients] == [RecordType.TransientFailure] * 2
    assert "RCPT got '252 2.1.5 cannot verify', expected 250 or 251" in (
        outcome.recipients[1].response.content
    )
    await ended(script)
    assert script.bodies == []


async def test_a_refused_recipient_keeps_its_own_reply_after_a_violation(wrong: Start) -> None:
    script, session = await wrong({"DATA": b"250 ok"}, rcpt={"a": b"550 5.1.1 unknown"})
    outcome = await session.deliver(message("a@example.com", "b@example.com"))
    assert [r.disposition for r in outcome.recipients] == [
        RecordType.Bounce,
        RecordType.TransientFailure,
    ]
    assert outcome.recipients[0].response.code == 550
    await ended(script)
    assert script.bodies == []


async def test_the_reply_after_the_dot_decides(wrong: Start) -> None:
    """A 251 to RCPT is allowed (RFC 5321): the message is sent and the dot's reply counts."""
    script, session = await wrong({}, rcpt={"a": b"251 2.1.5 will forward"})
    outcome = await session.deliver(message("a@example.com"))
    await session.quit()
    assert outcome.recipients[0].disposition is RecordType.Delivery
    assert outcome.recipients[0].response.code == 250
    assert script.bodies == [BODY + b".\r\n"]
