"""kumoq.smtp.server over real sockets on 127.0.0.1 with ``ehlo``/``mail_from``/``rcpt_to``
handlers that suspend on futures the test controls.

The connection steps those coroutines eagerly and finishes one that suspends in a task
(``kumoq.smtp.eager.drive_suspended``). These tests show that the future's value becomes the
reply, that its exception is answered like one raised directly (a ``RejectError`` with its
reply, anything else with a generic 451), that a future still pending when the
listener shuts down is cancelled without leaving a pending task behind, and that a handler may
suspend several times in a row -- on asyncio's loop and on uvloop's.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest
import uvloop

from kumoq.config.listener import EsmtpListenerConfig
from kumoq.errors import RejectError
from kumoq.message import EnvelopeAddress
from kumoq.smtp.replies import Reply
from kumoq.smtp.server import ConnectionMeta, EsmtpListener, start_esmtp_listener
from tests.integration.smtp_server_support import FakeHandler, RawClient, Start, raw

pytestmark = pytest.mark.integration

ENVELOPE = b"EHLO x\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\nNOOP\r\nQUIT\r\n"


class GatedHandler(FakeHandler):
    """A FakeHandler whose ``ehlo``, ``mail_from`` and ``rcpt_to`` then wait on the futures in
    ``gates[name]``, one after the other, and return the last one's value. Each wait is
    announced on ``waiting``; a wait ended by cancellation is recorded in ``cancelled``."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: dict[str, list[asyncio.Future[Any]]] = {}
        self.waiting: asyncio.Queue[tuple[str, asyncio.Future[Any]]] = asyncio.Queue()
        self.cancelled: list[str] = []

    def gate(self, name: str, count: int = 1) -> None:
        loop = asyncio.get_running_loop()
        self.gates[name] = [loop.create_future() for _ in range(count)]

    async def next_wait(self, name: str) -> asyncio.Future[Any]:
        """The future the handler waits on now; it must be ``name``'s."""
        waiting, fut = await asyncio.wait_for(self.waiting.get(), 5)
        assert waiting == name
        assert not fut.done()
        return fut

    async def _wait(self, name: str, result: Any) -> Any:
        for fut in self.gates.get(name, ()):
            self.waiting.put_nowait((name, fut))
            try:
                result = await fut
            except asyncio.CancelledError:
                self.cancelled.append(name)
                raise
        return result

    async def ehlo(
        self, conn: ConnectionMeta, domain: str, extensions: list[str]
    ) -> list[str] | Reply | None:
        await self._enter("ehlo", conn, (domain, extensions))
        result: list[str] | Reply | None = await self._wait("ehlo", self.extensions)
        return result

    async def mail_from(self, conn: ConnectionMeta, sender: EnvelopeAddress) -> Reply | None:
        await self._enter("mail_from", conn, sender)
        result: Reply | None = await self._wait("mail_from", self.mail_reply)
        return result

    async def rcpt_to(self, conn: ConnectionMeta, recipient: EnvelopeAddress) -> Reply | None:
        await self._enter("rcpt_to", conn, recipient)
        result: Reply | None = await self._wait("rcpt_to", self.rcpt_reply)
        return result


@pytest.fixture
def handler() -> GatedHandler:
    return GatedHandler()


def converse(c: RawClient, commands: bytes = ENVELOPE) -> list[str]:
    """Send ``commands`` in one write; every reply (as text) until the server hangs up."""
    c.reply()
    c.send(commands)
    return until_eof(c)


def ehlo_then_mail(c: RawClient) -> list[str]:
    """EHLO, and MAIL once it is answered (its reply is not held back with the MAIL's)."""
    c.reply()
    c.send(b"EHLO x\r\n")
    ehlo = c.reply()
    c.send(b"MAIL FROM:<s@example.com>\r\n")
    return [ehlo, *until_eof(c)]


def until_eof(c: RawClient) -> list[str]:
    replies = []
    while True:
        try:
            replies.append(c.reply())
        except (EOFError, ConnectionResetError):
            return replies


async def test_the_futures_values_are_the_replies(start: Start, handler: GatedHandler) -> None:
    for name in ("ehlo", "mail_from", "rcpt_to"):
        handler.gate(name)
    listener = await start()
    client = asyncio.create_task(raw(listener.address[1], converse))
    (await handler.next_wait("ehlo")).set_result(["PIPELINING", "X-GATED"])
    (await handler.next_wait("mail_from")).set_result(None)
    (await handler.next_wait("rcpt_to")).set_result(Reply(250, "2.1.5", "gated ok"))
    assert await client == [
        "250-mx.test Aloha x\n250-PIPELINING\n250 X-GATED",
        "250 2.1.0 OK <s@example.com>",
        "250 2.1.5 gated ok",
        "250 2.0.0 the goggles do nothing",
        "221 2.0.0 So long, and thanks for all the fish!",
    ]
    assert handler.conns[0]["ehlo_domain"] == "x"
    assert handler.rejections == []


EXPECTED_UNTIL = {"ehlo": 0, "mail_from": 1, "rcpt_to": 2}
ANSWERS = [
    "250-mx.test Aloha x",
    "250 2.1.0 OK <s@example.com>",
    "250 2.1.5 OK <a@example.com>",
    "250 2.0.0 the goggles do nothing",
    "221 2.0.0 So long, and thanks for all the fish!",
]


@pytest.mark.parametrize("name", ["ehlo", "mail_from", "rcpt_to"])
async def test_a_future_that_fails_is_technical_difficulties(
    start: Start, handler: GatedHandler, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    handler.gate(name)
    listener = await start()
    client = asyncio.create_task(raw(listener.address[1], converse))
    (await handler.next_wait(name)).set_exception(RuntimeError("the gate broke"))
    replies = await client
    n = EXPECTED_UNTIL[name]
    # A generic 451 for that command only (the error stays in the log); the session goes on.
    expected = [*ANSWERS[:n], "451 4.3.0 mx.test technical difficulties", *ANSWERS[n + 1 :]]
    if name == "mail_from":  # no sender: the RCPT is out of sequence
        expected[2] = "503 5.5.1 MAIL FROM must be issued first"
    assert [r.split("\n")[0] for r in replies] == expected
    assert "the gate broke" in caplog.text
    assert handler.rejections[0][1] == Reply(451, "4.3.0", "mx.test technical difficulties")


@pytest.mark.parametrize("name", ["ehlo", "mail_from", "rcpt_to"])
async def test_a_future_that_fails_with_reject_error_is_its_reply(
    start: Start, handler: GatedHandler, name: str
) -> None:
    handler.gate(name)
    listener = await start()
    client = asyncio.create_task(raw(listener.address[1], converse))
    (await handler.next_wait(name)).set_exception(RejectError(451, "4.7.1 not now"))
    replies = [r.split("\n")[0] for r in await client]
    n = EXPECTED_UNTIL[name]
    expected = [*ANSWERS[:n], "451 4.7.1 not now", *ANSWERS[n + 1 :]]
    if name == "mail_from":  # no sender: the RCPT is out of sequence
        expected[2] = "503 5.5.1 MAIL FROM must be issued first"
    assert replies == expected
    assert handler.rejections[0][1] == Reply(451, "4.7.1", "not now")


async def test_a_handler_that_suspends_several_times(start: Start, handler: GatedHandler) -> None:
    handler.suspend = True  # first an asyncio.sleep, then three futures
    handler.gate("rcpt_to", 3)
    listener = await start()
    client = asyncio.create_task(raw(listener.address[1], converse))
    for i in range(2):
        (await handler.next_wait("rcpt_to")).set_result(Reply(550, "5.1.1", f"not this one {i}"))
    (await handler.next_wait("rcpt_to")).set_result(Reply(250, "2.1.5", "third time lucky"))
    replies = [r.split("\n")[0] for r in await client]
    assert replies == [*ANSWERS[:2], "250 2.1.5 third time lucky", *ANSWERS[3:]]
    assert handler.cancelled == []


async def test_a_future_pending_at_shutdown_is_cancelled(
    start: Start, handler: GatedHandler, caplog: pytest.LogCaptureFixture
) -> None:
    """The drain timeout aborts the connection: the task finishing the handler is cancelled,
    and with it the future the handler waits on; nothing is left pending."""
    handler.gate("mail_from")
    listener = await start()
    client = asyncio.create_task(raw(listener.address[1], ehlo_then_mail))
    fut = await handler.next_wait("mail_from")
    with caplog.at_level(logging.WARNING):
        await asyncio.wait_for(listener.close(drain_seconds=0.2), 5)
        assert fut.cancelled()
        assert handler.cancelled == ["mail_from"]
        assert listener.connection_count == 0
        assert [r.split("\n")[0] for r in await client] == ANSWERS[:1]
        gc.collect()
        await asyncio.sleep(0)
    assert "aborting 1 connections" in caplog.text
    assert "destroyed but it is pending" not in caplog.text
    assert "failed" not in caplog.text


async def test_shutdown_waits_for_a_suspended_handler(start: Start, handler: GatedHandler) -> None:
    handler.gate("rcpt_to")
    listener = await start()
    envelope = ENVELOPE.replace(b"NOOP\r\nQUIT\r\n", b"")  # the next wait for input: 421
    client = asyncio.create_task(raw(listener.address[1], lambda c: converse(c, envelope)))
    fut = await handler.next_wait("rcpt_to")
    closing = asyncio.create_task(listener.close(drain_seconds=5))
    await asyncio.sleep(0.05)
    assert not closing.done()  # the handler call in progress holds the drain
    fut.set_result(None)
    await asyncio.wait_for(closing, 5)
    assert [r.split("\n")[0] for r in await client] == [
        *ANSWERS[:3],
        "421 4.3.2 mx.test shutting down",
    ]
    assert listener.connection_count == 0


async def test_a_client_gone_while_the_handler_waits(start: Start, handler: GatedHandler) -> None:
    handler.gate("mail_from")
    listener = await start()

    def hang_up(c: RawClient) -> None:
        c.reply()
        c.send(b"MAIL FROM:<s@example.com>\r\n")

    await raw(listener.address[1], hang_up)
    fut = await handler.next_wait("mail_from")
    await asyncio.sleep(0.05)
    assert listener.connection_count == 1  # the handler call is still in progress
    fut.set_result(None)
    for _ in range(100):
        if listener.connection_count == 0:
            break
        await asyncio.sleep(0.01)
    assert listener.connection_count == 0
    assert not fut.cancelled()


def test_suspending_handlers_on_uvloop() -> None:
    handler = GatedHandler()

    async def main() -> tuple[list[str], bool, list[str]]:
        assert "uvloop" in type(asyncio.get_running_loop()).__module__
        config = EsmtpListenerConfig.from_mapping({"listen": "127.0.0.1:0", "hostname": "mx"})
        listener: EsmtpListener = await start_esmtp_listener(config, handler)
        try:
            handler.gate("mail_from")
            handler.gate("rcpt_to", 2)
            client = asyncio.create_task(raw(listener.address[1], converse))
            (await handler.next_wait("mail_from")).set_result(None)
            (await handler.next_wait("rcpt_to")).set_exception(RejectError(450, "4.2.1 busy"))
            replies = [r.split("\n")[0] for r in await client]
            # a second connection is left waiting when the listener shuts down
            handler.gate("mail_from")
            stuck = asyncio.create_task(raw(listener.address[1], ehlo_then_mail))
            pending = await handler.next_wait("mail_from")
        finally:
            await listener.close(drain_seconds=0.2)
        return replies, pending.cancelled(), [r.split("\n")[0] for r in await stuck]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        replies, cancelled, stuck = runner.run(main())
    assert replies == [
        "250-mx Aloha x",
        "250 2.1.0 OK <s@example.com>",
        "450 4.2.1 busy",
        "250 2.0.0 the goggles do nothing",
        "221 2.0.0 So long, and thanks for all the fish!",
    ]
    assert cancelled
    assert stuck == ["250-mx Aloha x"]
    assert handler.cancelled == ["mail_from"]
