"""kumoq.smtp.server over real sockets on 127.0.0.1: connection management -- readiness,
idle timeout, connection limit, graceful shutdown and its drain timeout, bind failures, client
disconnects, and uvloop."""

from __future__ import annotations

import asyncio
import smtplib
import socket
from typing import Any

import aiosmtplib
import pytest
import uvloop

from kumoq.config.listener import EsmtpListenerConfig
from kumoq.errors import ListenerError
from kumoq.smtp.server import start_esmtp_listener
from tests.integration.smtp_server_support import FakeHandler, RawClient, Start, raw, smtplib_send

pytestmark = pytest.mark.integration


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

    async def main() -> tuple[dict[str, Any], int, str]:
        config = EsmtpListenerConfig.from_mapping({"listen": "127.0.0.1:0", "hostname": "mx"})
        listener = await start_esmtp_listener(config, handler)
        try:
            loop = asyncio.get_running_loop()
            assert "uvloop" in type(loop).__module__
            refused = await asyncio.to_thread(smtplib_send, listener.address[1], ["a@example.com"])
            # aiosmtplib takes the STARTTLS offered: the handshake on uvloop's start_tls
            client = aiosmtplib.SMTP(
                hostname="127.0.0.1", port=listener.address[1], timeout=10, validate_certs=False
            )
            async with client:
                await client.sendmail(
                    "s@example.com", ["b@example.com"], b"Subject: x\r\n\r\nhi\r\n"
                )
            return refused, len(handler.messages), handler.conns[-1]["tls_cipher"]
        finally:
            await listener.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        refused, received, cipher = runner.run(main())
    assert (refused, received) == ({}, 2)
    assert cipher.startswith("TLS_") or "-" in cipher
