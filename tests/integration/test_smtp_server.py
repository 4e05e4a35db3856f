"""kumoq.smtp.server over real sockets on 127.0.0.1, with stdlib smtplib and aiosmtplib clients
and a small fake SmtpHandler."""

from __future__ import annotations

import asyncio
import smtplib
import socket
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import pytest
import uvloop

from kumoq.config.listener import EsmtpListenerConfig
from kumoq.errors import ListenerError, RejectError
from kumoq.message import EnvelopeAddress
from kumoq.smtp.replies import Reply
from kumoq.smtp.server import ConnectionMeta, EsmtpListener, start_esmtp_listener

pytestmark = pytest.mark.integration

BODY = b"Subject: hello\r\n\r\nline one\r\n.leading dot\r\n"


class FakeHandler:
    """Records every call; behaviour is set per test through the attributes."""

    def __init__(self) -> None:
        self.is_ready = True
        self.extensions: list[str] | Reply | None = None
        self.mail_reply: Reply | None = None
        self.rcpt_reply: Reply | None = None
        self.data_reply = Reply(250, None, "OK ids=1")
        self.raise_in: dict[str, BaseException] = {}
        self.suspend = False
        self.data_gate: asyncio.Event | None = None
        self.calls: list[tuple[str, Any]] = []
        self.messages: list[tuple[EnvelopeAddress, list[EnvelopeAddress], bytes]] = []
        self.rejections: list[tuple[str, Reply]] = []
        self.conns: list[ConnectionMeta] = []

    def ready(self) -> bool:
        return self.is_ready

    async def _enter(self, name: str, conn: ConnectionMeta, arg: Any) -> None:
        self.calls.append((name, arg))
        if conn not in self.conns:
            self.conns.append(conn)
        if self.suspend:
            await asyncio.sleep(0.001)
        exc = self.raise_in.get(name)
        if exc is not None:
            raise exc

    async def ehlo(
        self, conn: ConnectionMeta, domain: str, extensions: list[str]
    ) -> list[str] | Reply | None:
        await self._enter("ehlo", conn, (domain, extensions))
        return self.extensions

    async def mail_from(self, conn: ConnectionMeta, sender: EnvelopeAddress) -> Reply | None:
        await self._enter("mail_from", conn, sender)
        return self.mail_reply

    async def rcpt_to(self, conn: ConnectionMeta, recipient: EnvelopeAddress) -> Reply | None:
        await self._enter("rcpt_to", conn, recipient)
        return self.rcpt_reply

    async def data(
        self,
        conn: ConnectionMeta,
        sender: EnvelopeAddress,
        recipients: list[EnvelopeAddress],
        data: bytes,
    ) -> Reply:
        await self._enter("data", conn, len(data))
        if self.data_gate is not None:
            await self.data_gate.wait()
        self.messages.append((sender, recipients, data))
        return self.data_reply

    def rejected(self, conn: ConnectionMeta, command: str, reply: Reply) -> None:
        self.rejections.append((command, reply))


Start = Callable[..., Any]


@pytest.fixture
def handler() -> FakeHandler:
    return FakeHandler()


@pytest.fixture
async def start(handler: FakeHandler) -> AsyncIterator[Start]:
    """``await start(**config)`` -> a running listener on 127.0.0.1:<free port>."""
    listeners: list[EsmtpListener] = []

    async def make(**kw: Any) -> EsmtpListener:
        mapping = {"listen": "127.0.0.1:0", "hostname": "mx.test", **kw}
        listener = await start_esmtp_listener(EsmtpListenerConfig.from_mapping(mapping), handler)
        listeners.append(listener)
        return listener

    yield make
    for listener in listeners:
        await listener.close(drain_seconds=2)


def smtplib_send(port: int, rcpts: list[str], body: bytes = BODY) -> dict[str, Any]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail("sender@example.com", rcpts, body)


class RawClient:
    """A blocking line-oriented client for exact-bytes tests (run it in a thread)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        """One complete (possibly multi-line) reply, as text."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise EOFError(self.buf)
                self.buf += chunk
            line, _, self.buf = self.buf.partition(b"\r\n")
            lines.append(line.decode())
            if line[3:4] != b"-":
                return "\n".join(lines)

    def at_eof(self) -> bool:
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return True
            self.buf += chunk

    def close(self) -> None:
        self.sock.close()


async def raw(port: int, script: Callable[[RawClient], Any]) -> Any:
    def run() -> Any:
        client = RawClient(port)
        try:
            return script(client)
        finally:
            client.close()

    return await asyncio.to_thread(run)


# --- happy paths -------------------------------------------------------------------------------
async def test_smtplib_session(start: Start, handler: FakeHandler) -> None:
    listener = await start(meta={"tenant": "t1"})
    port = listener.address[1]
    refused = await asyncio.to_thread(smtplib_send, port, ["a@example.com", "b@example.org"])
    assert refused == {}
    (msg,) = handler.messages
    assert msg[0] == EnvelopeAddress("sender", "example.com")
    assert msg[1] == [EnvelopeAddress("a", "example.com"), EnvelopeAddress("b", "example.org")]
    assert msg[2] == BODY
    (conn,) = handler.conns
    assert conn["received_from"] == "127.0.0.1"
    assert conn["received_via"] == f"127.0.0.1:{port}"
    assert conn["hostname"] == "mx.test"
    assert conn["reception_protocol"] == "ESMTP"
    assert len(conn["session_id"]) == 32
    assert conn["tenant"] == "t1"
    assert conn["ehlo_domain"]
    assert handler.rejections == []


async def test_aiosmtplib_session(start: Start, handler: FakeHandler) -> None:
    listener = await start()
    message = EmailMessage()
    message["From"] = "sender@example.com"
    message["To"] = "rcpt@example.com"
    message["Subject"] = "hi"
    message.set_content("hello\n.\nworld\n")
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=listener.address[1], timeout=10)
    async with client:
        errors, response = await client.send_message(message)
        assert errors == {}
        assert response == "OK ids=1"
        assert client.supports_extension("pipelining")
        assert client.supports_extension("8bitmime")
        assert client.supports_extension("smtputf8")
        assert client.supports_extension("enhancedstatuscodes")
        assert client.esmtp_extensions["size"] == str(20 * 1024 * 1024)
        # a second transaction on the same connection
        await client.sendmail("s@example.com", ["r2@example.com"], b"Subject: 2\r\n\r\nx\r\n")
        noop = await client.noop()
        assert noop.code == 250
    assert len(handler.messages) == 2
    assert b"\r\n.\r\nworld\r\n" in handler.messages[0][2]
    assert len({c["session_id"] for c in handler.conns}) == 1


async def test_pipelined_commands_in_one_write(start: Start, handler: FakeHandler) -> None:
    listener = await start()

    def script(c: RawClient) -> list[str]:
        assert c.reply() == "220 mx.test KumoMTA"
        c.send(
            b"EHLO raw\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\n"
            b"RCPT TO:<b@example.com>\r\nDATA\r\n"
        )
        replies = [c.reply() for _ in range(5)]
        c.send(b"..x\r\n.\r\nNOOP\r\nQUIT\r\n")
        replies += [c.reply() for _ in range(3)]
        assert c.at_eof()
        return replies

    replies = await raw(listener.address[1], script)
    assert replies[0].startswith("250-mx.test Aloha raw\n250-PIPELINING")
    assert [r[:9] for r in replies[1:]] == [
        "250 2.1.0", "250 2.1.5", "250 2.1.5", "354 Send ", "250 OK id", "250 2.0.0", "221 2.0.0",
    ]  # fmt: skip
    assert handler.messages[0][2] == b".x\r\n"


async def test_handler_that_suspends(start: Start, handler: FakeHandler) -> None:
    handler.suspend = True
    handler.raise_in["rcpt_to"] = RejectError(450, "4.2.1 try later")
    listener = await start()

    def script(c: RawClient) -> list[str]:
        c.reply()
        c.send(b"EHLO x\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\nQUIT\r\n")
        return [c.reply()[:9] for _ in range(4)]

    assert await raw(listener.address[1], script) == [
        "250-mx.te",
        "250 2.1.0",
        "450 4.2.1",
        "221 2.0.0",
    ]
    assert [name for name, _ in handler.calls] == ["ehlo", "mail_from", "rcpt_to"]


async def test_replacement_extensions(start: Start, handler: FakeHandler) -> None:
    handler.extensions = ["PIPELINING", "X-KUMOQ"]
    listener = await start()

    def script(c: RawClient) -> str:
        c.reply()
        c.send(b"EHLO x\r\n")
        return c.reply()

    assert await raw(listener.address[1], script) == (
        "250-mx.test Aloha x\n250-PIPELINING\n250 X-KUMOQ"
    )
    assert handler.calls[0][1][1][0] == "PIPELINING"  # the defaults were offered


async def test_big_message(start: Start, handler: FakeHandler) -> None:
    listener = await start()
    body = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 3000
    await asyncio.to_thread(smtplib_send, listener.address[1], ["a@example.com"], body)
    assert handler.messages[0][2] == body


# --- rejections --------------------------------------------------------------------------------
async def test_relay_denied(start: Start, handler: FakeHandler) -> None:
    listener = await start(relay_hosts=["10.0.0.0/8"])

    def script(c: RawClient) -> tuple[str, str, str]:
        c.reply()
        c.send(b"EHLO x\r\nMAIL FROM:<s@example.com>\r\n")
        c.reply()
        c.reply()
        c.send(b"RCPT TO:<a@example.com>\r\n")
        rcpt = c.reply()
        c.send(b"DATA\r\n")
        data = c.reply()
        port = c.sock.getsockname()[1]
        return rcpt, data, f"127.0.0.1:{port}"

    rcpt, data, peer = await raw(listener.address[1], script)
    assert rcpt == f"550 5.7.1 relaying not permitted for {peer}"
    assert data.startswith("503 5.5.1")
    assert (
        "RCPT TO:<a@example.com>",
        Reply(550, "5.7.1", f"relaying not permitted for {peer}"),
    ) in (handler.rejections)
    assert [name for name, _ in handler.calls] == ["ehlo", "mail_from", "rcpt_to"]


async def test_relay_denied_with_smtplib(start: Start, handler: FakeHandler) -> None:
    handler.rcpt_reply = Reply(250, "2.1.5", "sure")  # a positive answer does not bypass it
    listener = await start(relay_hosts=["10.0.0.0/8"])
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        await asyncio.to_thread(smtplib_send, listener.address[1], ["a@example.com"])
    code, text = info.value.recipients["a@example.com"]
    assert code == 550
    assert text.startswith(b"5.7.1 relaying not permitted for 127.0.0.1:")
    assert handler.messages == []


async def test_handler_positive_reply_is_used(start: Start, handler: FakeHandler) -> None:
    handler.rcpt_reply = Reply(250, "2.1.5", "recipient ok, for real")
    listener = await start()

    def script(c: RawClient) -> str:
        c.reply()
        c.send(b"MAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\n")
        c.reply()
        return c.reply()

    assert await raw(listener.address[1], script) == "250 2.1.5 recipient ok, for real"


async def test_handler_rejections(start: Start, handler: FakeHandler) -> None:
    handler.mail_reply = Reply(550, "5.7.1", "sender blocked")
    listener = await start()
    with pytest.raises(smtplib.SMTPSenderRefused) as info:
        await asyncio.to_thread(smtplib_send, listener.address[1], ["a@example.com"])
    assert info.value.smtp_code == 550
    assert handler.rejections[0] == ("mail FROM:<sender@example.com> size=42", handler.mail_reply)


async def test_reject_error_421_disconnects(start: Start, handler: FakeHandler) -> None:
    handler.raise_in["mail_from"] = RejectError(421, "4.7.0 go away")
    listener = await start()

    def script(c: RawClient) -> tuple[str, bool]:
        c.reply()
        c.send(b"MAIL FROM:<s@example.com>\r\nNOOP\r\n")
        return c.reply(), c.at_eof()

    assert await raw(listener.address[1], script) == ("421 4.7.0 go away", True)


async def test_handler_exception_is_technical_difficulties(
    start: Start, handler: FakeHandler, caplog: pytest.LogCaptureFixture
) -> None:
    handler.raise_in["data"] = RuntimeError("boom")
    listener = await start()

    def script(c: RawClient) -> tuple[str, bool]:
        c.reply()
        c.send(b"MAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n")
        c.reply()
        c.reply()
        c.reply()
        c.send(b"x\r\n.\r\nNOOP\r\n")
        return c.reply(), c.at_eof()

    assert await raw(listener.address[1], script) == (
        "421 4.3.0 mx.test technical difficulties",
        True,
    )
    assert "boom" in caplog.text
    assert handler.rejections[-1][1].code == 421


async def test_data_rejection_and_content_errors(start: Start, handler: FakeHandler) -> None:
    handler.data_reply = Reply(554, "5.7.1", "content rejected")
    listener = await start(max_message_size=1000)

    def script(c: RawClient) -> list[str]:
        c.reply()
        out = []
        for body in (b"fine\r\n", b"bare\nlf\r\n", b"y" * 2000 + b"\r\n"):
            c.send(b"MAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n")
            c.reply()
            c.reply()
            c.reply()
            c.send(body + b".\r\n")
            out.append(c.reply())
        return out

    assert await raw(listener.address[1], script) == [
        "554 5.7.1 content rejected",
        "552 5.6.0 message data must use CRLF for line endings",
        "552 5.3.4 message too big",
    ]
    assert [cmd for cmd, _ in handler.rejections] == ["DATA", "DATA", "DATA"]


async def test_data_processing_timeout(start: Start, handler: FakeHandler) -> None:
    handler.data_gate = asyncio.Event()  # never set
    listener = await start(data_processing_timeout=0.2)
    with pytest.raises(smtplib.SMTPDataError) as info:
        await asyncio.to_thread(smtplib_send, listener.address[1], ["a@example.com"])
    assert info.value.smtp_code == 451
    assert info.value.smtp_error == b"4.4.5 data_processing_timeout exceeded"


# --- connection management ---------------------------------------------------------------------
async def test_not_ready(start: Start, handler: FakeHandler) -> None:
    handler.is_ready = False
    listener = await start()

    def script(c: RawClient) -> tuple[str, bool]:
        return c.reply(), c.at_eof()

    assert await raw(listener.address[1], script) == (
        "421 4.3.2 mx.test waiting for spool startup. Try again soon!",
        True,
    )
    with pytest.raises(smtplib.SMTPConnectError):
        await asyncio.to_thread(smtplib_send, listener.address[1], ["a@example.com"])
    assert handler.calls == []
    assert handler.rejections[0][1].code == 421


async def test_idle_timeout(start: Start, handler: FakeHandler) -> None:
    listener = await start(client_timeout=0.3)

    def script(c: RawClient) -> tuple[str, str, bool]:
        c.reply()
        c.send(b"NOOP\r\n")
        noop = c.reply()
        return noop, c.reply(), c.at_eof()  # then say nothing

    noop, idle, eof = await raw(listener.address[1], script)
    assert noop.startswith("250 2.0.0")
    assert idle == "421 4.3.2 mx.test idle too long"
    assert eof
    assert listener.connection_count == 0


async def test_slow_handler_is_not_idleness(start: Start, handler: FakeHandler) -> None:
    handler.data_gate = asyncio.Event()
    listener = await start(client_timeout=0.2)
    loop = asyncio.get_running_loop()
    loop.call_later(0.6, handler.data_gate.set)
    await asyncio.to_thread(smtplib_send, listener.address[1], ["a@example.com"])
    assert len(handler.messages) == 1


async def test_max_connections(start: Start, handler: FakeHandler) -> None:
    listener = await start(max_connections=1)
    port = listener.address[1]
    first = await asyncio.to_thread(RawClient, port)
    try:
        assert (await asyncio.to_thread(first.reply)).startswith("220 ")

        def second(c: RawClient) -> str:
            return c.reply()

        assert (await raw(port, second)).startswith("421 4.3.2 mx.test too many connections")
    finally:
        first.close()


async def test_graceful_close(start: Start, handler: FakeHandler) -> None:
    handler.data_gate = asyncio.Event()
    listener = await start()
    port = listener.address[1]
    idle = await asyncio.to_thread(RawClient, port)
    try:
        await asyncio.to_thread(idle.reply)

        def busy(c: RawClient) -> list[str]:
            c.reply()
            c.send(b"MAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n")
            [c.reply() for _ in range(3)]
            c.send(b"x\r\n.\r\n")
            return [c.reply(), c.reply()]

        busy_task = asyncio.create_task(raw(port, busy))
        while not handler.calls or handler.calls[-1][0] != "data":  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        closing = asyncio.create_task(listener.close(drain_seconds=5))
        assert (await asyncio.to_thread(idle.reply)) == "421 4.3.2 mx.test shutting down"
        assert not closing.done()  # the DATA in progress holds the drain
        handler.data_gate.set()
        assert await busy_task == ["250 OK ids=1", "421 4.3.2 mx.test shutting down"]
        await closing
        assert listener.connection_count == 0
        with pytest.raises(ConnectionRefusedError):
            await asyncio.to_thread(socket.create_connection, ("127.0.0.1", port), 2)
    finally:
        idle.close()


async def test_drain_timeout_aborts(start: Start, handler: FakeHandler) -> None:
    handler.data_gate = asyncio.Event()  # never set: the handler outlives the drain
    listener = await start()
    sent = asyncio.create_task(
        asyncio.to_thread(smtplib_send, listener.address[1], ["a@example.com"])
    )
    while not handler.calls or handler.calls[-1][0] != "data":  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    await listener.close(drain_seconds=0.2)
    assert listener.connection_count == 0
    with pytest.raises(smtplib.SMTPServerDisconnected):
        await sent
    assert handler.messages == []


async def test_bind_failure(start: Start) -> None:
    listener = await start()
    with pytest.raises(ListenerError, match="failed to bind"):
        await start(listen=f"127.0.0.1:{listener.address[1]}")


async def test_client_disconnect_mid_transaction(start: Start, handler: FakeHandler) -> None:
    listener = await start()

    def script(c: RawClient) -> None:
        c.reply()
        c.send(b"MAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\nDATA\r\npartial")

    await raw(listener.address[1], script)
    for _ in range(100):
        if listener.connection_count == 0:
            break
        await asyncio.sleep(0.01)
    assert listener.connection_count == 0
    assert handler.messages == []


def test_works_on_uvloop() -> None:
    handler = FakeHandler()

    async def main() -> tuple[dict[str, Any], int]:
        config = EsmtpListenerConfig.from_mapping({"listen": "127.0.0.1:0", "hostname": "mx"})
        listener = await start_esmtp_listener(config, handler)
        try:
            loop = asyncio.get_running_loop()
            assert "uvloop" in type(loop).__module__
            refused = await asyncio.to_thread(smtplib_send, listener.address[1], ["a@example.com"])
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=listener.address[1], timeout=10)
            async with client:
                await client.sendmail(
                    "s@example.com", ["b@example.com"], b"Subject: x\r\n\r\nhi\r\n"
                )
            return refused, len(handler.messages)
        finally:
            await listener.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main()) == ({}, 2)
