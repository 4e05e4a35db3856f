"""kumoq.smtp.server over real sockets on 127.0.0.1: the listener's admission and abuse limits
(issue 10, defects 2 and 7; docs/security.md#limits).

- connections per client IP, and relay hosts exempt from that cap;
- the in-flight data budget, per client IP and for the listener: a message that cannot get its
  bytes ends in ``452 4.3.1`` and holds nothing; a message held by its DATA handler counts;
- the whole-command and whole-DATA deadlines against a client that drips bytes;
- the error limit ends the connection after 21 Rejection records;
- a failed accept() (EMFILE) is logged once and counted, on asyncio's loop and uvloop's.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from kumoq.smtp.server import EsmtpListener
from tests.integration.smtp_server_support import FakeHandler, RawClient, Start, raw

pytestmark = pytest.mark.integration
STORAGE = "452 4.3.1 Insufficient system storage: too much message data in flight"

ROOT = Path(__file__).resolve().parents[2]
NOT_RELAY: dict[str, Any] = {"relay_hosts": ["10.0.0.0/8"]}  # 127.0.0.1: an ordinary client
LINE = b"x" * 998 + b"\r\n"
ENVELOPE = b"EHLO c\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n"


async def until(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def client(port: int) -> RawClient:
    c = await asyncio.to_thread(RawClient, port)
    assert (await asyncio.to_thread(c.reply)).startswith("220 ")
    return c


async def start_data(port: int, content: bytes) -> RawClient:
    """A client in DATA that has sent ``content`` and not the final dot."""
    c = await client(port)
    await asyncio.to_thread(c.send, ENVELOPE)
    for _ in range(4):
        await asyncio.to_thread(c.reply)
    await asyncio.to_thread(c.send, content)
    return c


async def finish(c: RawClient) -> str:
    await asyncio.to_thread(c.send, b".\r\nQUIT\r\n")
    reply = await asyncio.to_thread(c.reply)
    await asyncio.to_thread(c.reply)
    c.close()
    return reply


# --- connections per IP ------------------------------------------------------------------------
async def test_connections_per_ip_are_capped(start: Start, handler: FakeHandler) -> None:
    listener: EsmtpListener = await start(max_connections_per_ip=2, **NOT_RELAY)
    port = listener.address[1]
    first, second = await client(port), await client(port)
    try:

        def third(c: RawClient) -> tuple[str, bool]:
            return c.reply(), c.at_eof()

        assert await raw(port, third) == (
            "421 4.7.0 mx.test too many connections from your address",
            True,
        )
        assert listener.admission.connections_from("127.0.0.1") == 2
        first.close()
        await until(lambda: listener.admission.connections_from("127.0.0.1") == 1)
        (await client(port)).close()
    finally:
        first.close()
        second.close()
    await until(lambda: listener.admission.connections_from("127.0.0.1") == 0)
    assert [r.code for _, r in handler.rejections] == [421]


async def test_relay_hosts_are_not_capped(start: Start) -> None:
    listener = await start(max_connections_per_ip=1)  # relay_hosts: loopback
    clients = [await client(listener.address[1]) for _ in range(3)]
    for c in clients:
        c.close()


# --- the in-flight data budget -----------------------------------------------------------------
async def test_per_ip_budget_fails_the_message_that_goes_over(
    start: Start, handler: FakeHandler
) -> None:
    listener: EsmtpListener = await start(max_buffered_data_per_ip="100 KiB")
    port = listener.address[1]
    books = listener.admission
    first = await start_data(port, LINE * 70)
    await until(lambda: books.held_by("127.0.0.1") >= 70_000)
    second = await start_data(port, LINE * 70)  # 140 KB from one IP: over 100 KiB
    await until(lambda: books.held_by("127.0.0.1") < 80_000)
    await asyncio.to_thread(second.send, LINE * 500)  # dropped as it arrives
    await asyncio.sleep(0.1)
    assert books.held_by("127.0.0.1") < 80_000
    assert await finish(second) == STORAGE
    assert await finish(first) == "250 OK ids=1"
    assert [len(data) for _, _, data in handler.messages] == [70_000]
    await until(lambda: books.held == 0)
    assert ("DATA", STORAGE) in [(command, str(reply)) for command, reply in handler.rejections]


async def test_listener_budget(start: Start, handler: FakeHandler) -> None:
    listener: EsmtpListener = await start(max_buffered_data=150_000)
    port = listener.address[1]
    first = await start_data(port, LINE * 100)
    await until(lambda: listener.admission.held >= 100_000)
    second = await start_data(port, LINE * 100)
    assert await finish(second) == STORAGE
    assert await finish(first) == "250 OK ids=1"
    await until(lambda: listener.admission.held == 0)


async def test_a_message_counts_while_its_handler_runs(start: Start, handler: FakeHandler) -> None:
    handler.data_gate = asyncio.Event()
    listener: EsmtpListener = await start()
    c = await start_data(listener.address[1], LINE * 50)
    await asyncio.to_thread(c.send, b".\r\n")
    await until(lambda: bool(handler.calls) and handler.calls[-1][0] == "data")
    assert listener.admission.held == 50_000
    handler.data_gate.set()
    assert (await asyncio.to_thread(c.reply)) == "250 OK ids=1"
    await until(lambda: listener.admission.held == 0)
    c.close()


# --- deadlines ---------------------------------------------------------------------------------
def drip(c: RawClient, data: bytes, every: float) -> tuple[str, float, bool]:
    """Send ``data`` a piece at a time until the server says something; its reply, after how
    long, and whether the server then closed."""
    t0 = time.monotonic()
    c.sock.settimeout(every)
    for i in range(0, len(data), 3):
        c.send(data[i : i + 3])
        try:
            c.buf += c.sock.recv(65536)
            break
        except TimeoutError:
            continue
    c.sock.settimeout(10)
    reply = c.reply()
    return reply, time.monotonic() - t0, c.at_eof()


async def test_a_command_line_must_complete_in_client_timeout(
    start: Start, handler: FakeHandler
) -> None:
    listener = await start(client_timeout=0.6)

    def script(c: RawClient) -> tuple[str, float, bool]:
        c.reply()
        return drip(c, b"NOOP " + b"z" * 60 + b"\r\n", every=0.1)

    reply, elapsed, eof = await raw(listener.address[1], script)
    assert reply == "421 4.4.2 mx.test command line not completed in time"
    assert eof
    assert 0.5 < elapsed < 1.5


async def test_message_content_must_complete_in_data_timeout(
    start: Start, handler: FakeHandler
) -> None:
    listener = await start(client_timeout=5, data_timeout=0.6)

    def script(c: RawClient) -> tuple[str, float, bool]:
        c.reply()
        c.send(ENVELOPE)
        [c.reply() for _ in range(4)]
        return drip(c, b"a line\r\n" * 100, every=0.05)

    reply, elapsed, eof = await raw(listener.address[1], script)
    assert reply == "421 4.4.2 mx.test message data not completed in time"
    assert eof
    assert 0.5 < elapsed < 1.5
    assert handler.messages == []
    assert handler.rejections[-1][0] == "DATA"


async def test_each_message_has_its_own_data_timeout(start: Start, handler: FakeHandler) -> None:
    """A transaction pipelined behind the final dot starts a new clock."""
    listener = await start(client_timeout=5, data_timeout=0.8)

    def script(c: RawClient) -> list[str]:
        c.reply()
        c.send(ENVELOPE)
        [c.reply() for _ in range(4)]
        for _ in range(2):
            for _ in range(5):
                c.send(b"a line\r\n")
                time.sleep(0.1)
            c.send(b".\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n")
            [c.reply() for _ in range(4)]
        c.send(b".\r\nQUIT\r\n")
        return [c.reply(), c.reply()]

    assert await raw(listener.address[1], script) == [
        "250 OK ids=1",
        "221 2.0.0 So long, and thanks for all the fish!",
    ]
    assert len(handler.messages) == 3


async def test_a_bare_lf_command_is_answered_at_once(start: Start) -> None:
    listener = await start(client_timeout=30)

    def script(c: RawClient) -> tuple[str, float]:
        c.reply()
        t0 = time.monotonic()
        c.send(b"NOOP\n")
        return c.reply(), time.monotonic() - t0

    reply, elapsed = await raw(listener.address[1], script)
    assert reply == "500 5.5.2 bare LF not allowed"
    assert elapsed < 1


# --- the error limit ---------------------------------------------------------------------------
async def test_error_limit_ends_the_connection_and_its_records(
    start: Start, handler: FakeHandler
) -> None:
    listener = await start()

    def script(c: RawClient) -> tuple[list[str], bool]:
        c.reply()
        c.send(b"BAD\r\n" * 5000)
        replies = [c.reply() for _ in range(21)]
        return replies, c.at_eof()

    replies, eof = await raw(listener.address[1], script)
    assert replies[-1] == "421 4.7.0 mx.test too many errors"
    assert eof
    assert len(handler.rejections) == 21


# --- accept failures ---------------------------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import asyncio, logging, os, resource, sys
    from kumoq.config.listener import EsmtpListenerConfig
    from kumoq.metrics import ACCEPT_FAILURES
    from kumoq.smtp.server import start_esmtp_listener
    from tests.integration.smtp_server_support import FakeHandler

    async def main():
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        config = EsmtpListenerConfig.from_mapping({"listen": "127.0.0.1:0", "hostname": "mx"})
        listener = await start_esmtp_listener(config, FakeHandler())
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: None)  # start the reader thread first
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
        print(listener.address[1], flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        print(ACCEPT_FAILURES.labels(config.listen)._value.get(), flush=True)
        await listener.close(drain_seconds=1)

    if sys.argv[1] == "uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())
    """
)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_accept_failures_are_logged_once_and_counted(loop: str) -> None:
    import socket

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, loop],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        port = int(child.stdout.readline())
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(40)]
        time.sleep(1.0)  # the first few are greeted; accepting the others fails, and pauses
        for c in clients:
            c.close()
        time.sleep(1.0)  # their descriptors come back; accepting resumes
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            assert c.recv(100).startswith(b"220 mx ")
        child.stdin.write("stop\n")
        child.stdin.flush()
        failures = float(child.stdout.readline())
        _, stderr = child.communicate(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert failures >= 1
    logged = [line for line in stderr.splitlines() if "accept failed" in line]
    assert len(logged) == 1, stderr[-3000:]
    assert logged[0].startswith("ERROR accept failed on 127.0.0.1:0: too many open files")
    assert "out of system resource" not in stderr  # asyncio's own line, once per attempt
