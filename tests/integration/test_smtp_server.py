"""kumoq.smtp.server over real sockets on 127.0.0.1, with stdlib smtplib and aiosmtplib clients
and a small fake SmtpHandler: whole sessions and rejections. Connection management (readiness,
timeouts, limits, shutdown) is in test_smtp_server_connections.py, handlers that suspend in
test_smtp_server_suspending.py; the fake handler and the clients in smtp_server_support.py."""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage

import aiosmtplib
import pytest

from kumoq.errors import RejectError
from kumoq.message import EnvelopeAddress
from kumoq.smtp.replies import Reply
from tests.integration.smtp_server_support import (
    BODY,
    FakeHandler,
    RawClient,
    Start,
    raw,
    smtplib_send,
)

pytestmark = pytest.mark.integration


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


def _send_from(source: str, port: int) -> None:
    with smtplib.SMTP("127.0.0.3", port, timeout=10, source_address=(source, 0)) as client:
        client.sendmail("sender@example.com", ["a@example.com"], BODY)


async def test_the_connection_addresses_on_a_wildcard_listener(
    start: Start, handler: FakeHandler
) -> None:
    """Bound to 0.0.0.0, the local address is each connection's own (127.0.0.3 here), not
    the listener's; the peer's is the client's source address."""
    listener = await start(listen="0.0.0.0:0", relay_hosts=["127.0.0.0/8"])
    port = listener.address[1]
    await asyncio.to_thread(_send_from, "127.0.0.2", port)
    (conn,) = handler.conns
    assert conn["received_from"] == "127.0.0.2"
    assert conn["received_via"] == f"127.0.0.3:{port}"


async def test_aiosmtplib_session(start: Start, handler: FakeHandler) -> None:
    listener = await start()
    message = EmailMessage()
    message["From"] = "sender@example.com"
    message["To"] = "rcpt@example.com"
    message["Subject"] = "hi"
    message.set_content("hello\n.\nworld\n")
    # aiosmtplib takes the STARTTLS offered (the self-signed certificate: no verification).
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=listener.address[1], timeout=10, validate_certs=False
    )
    async with client:
        errors, response = await client.send_message(message)
        assert errors == {}
        assert response == "OK ids=1"
        assert client.supports_extension("pipelining")
        assert client.supports_extension("8bitmime")
        assert client.supports_extension("smtputf8")
        assert client.supports_extension("enhancedstatuscodes")
        assert not client.supports_extension("size")  # as KumoMTA: not advertised
        # a second transaction on the same connection
        await client.sendmail("s@example.com", ["r2@example.com"], b"Subject: 2\r\n\r\nx\r\n")
        noop = await client.noop()
        assert noop.code == 250
    assert len(handler.messages) == 2
    assert b"\r\n.\r\nworld\r\n" in handler.messages[0][2]
    assert len({c["session_id"] for c in handler.conns}) == 1
    assert handler.conns[0]["tls_protocol_version"] in {"TLSv1.2", "TLSv1.3"}


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
    # The relay check comes first, as in KumoMTA: the handler is not asked about a recipient
    # it may not take.
    assert [name for name, _ in handler.calls] == ["ehlo", "mail_from"]


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
    # smtplib sends no size= since SIZE is not advertised (as KumoMTA)
    assert handler.rejections[0] == ("mail FROM:<sender@example.com>", handler.mail_reply)


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

    def script(c: RawClient) -> tuple[str, str]:
        c.reply()
        c.send(b"MAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n")
        c.reply()
        c.reply()
        c.reply()
        c.send(b"x\r\n.\r\nNOOP\r\n")
        return c.reply(), c.reply()

    # A generic 451 (the error text stays in the log); the session goes on.
    assert await raw(listener.address[1], script) == (
        "451 4.3.0 mx.test technical difficulties",
        "250 2.0.0 the goggles do nothing",
    )
    assert "boom" in caplog.text
    assert handler.rejections[-1][1].code == 451


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
