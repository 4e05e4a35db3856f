"""Idle outbound sessions (``IdleSessions``): a message placed in a ready queue resumes one
session that waits for work, the one that went idle last; a session woken for a message that
another session took keeps waiting until its own ``idle_timeout`` (KumoMTA's dispatcher
"raced with another dispatcher; snooze and try again").

The dispatcher tests run SmtpDispatch against a small SMTP server on 127.0.0.1 that counts
its connections."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from kumoq.clock import SystemClock
from kumoq.config.queue import QueueConfig, SmtpProtocol
from kumoq.egress.ready_queue import IdleSessions
from kumoq.logs.records import RecordType
from tests.unit.test_state_reaping import MiniSink, make_msg, smtp_dispatch


async def test_wake_one_resumes_the_session_idle_last() -> None:
    idle = IdleSessions()
    deadline = asyncio.get_running_loop().time() + 5.0
    first = asyncio.ensure_future(idle.wait(deadline, asyncio.get_running_loop()))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(idle.wait(deadline, asyncio.get_running_loop()))
    await asyncio.sleep(0)
    assert len(idle) == 2
    assert idle.wake_one()
    await asyncio.sleep(0)
    assert second.done()
    assert second.result() is True
    assert not first.done()
    idle.wake_all()
    assert await first is True
    assert len(idle) == 0
    assert not idle.wake_one()  # nobody waits


async def test_a_wait_past_its_deadline_returns_false_and_leaves_the_queue() -> None:
    idle = IdleSessions()
    loop = asyncio.get_running_loop()
    assert await idle.wait(loop.time() + 0.02, loop) is False
    assert len(idle) == 0
    assert not idle.wake_one()


async def test_a_cancelled_wait_leaves_the_queue_and_is_not_woken() -> None:
    idle = IdleSessions()
    deadline = asyncio.get_running_loop().time() + 5.0
    cancelled = asyncio.ensure_future(idle.wait(deadline, asyncio.get_running_loop()))
    waiting = asyncio.ensure_future(idle.wait(deadline, asyncio.get_running_loop()))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    assert len(idle) == 1
    assert idle.wake_one()
    assert await waiting is True


class Relay:
    """SmtpDispatch relaying to a MiniSink on 127.0.0.1, sessions kept ``idle_timeout``."""

    def __init__(self, sink: MiniSink, port: int, idle_timeout: float) -> None:
        self.sink = sink
        self.clock = SystemClock()
        self.dispatch = smtp_dispatch(
            self.clock, 60.0, prohibited_hosts=[], enable_tls="Disabled", idle_timeout=idle_timeout
        )
        self.config = QueueConfig(protocol=SmtpProtocol(mx_list=(f"127.0.0.1:{port}",)))

    async def send(self, *users: str) -> None:
        """Deliver one message per user at once; each must be a Delivery."""
        attempts = await asyncio.gather(
            *(self.dispatch.deliver(make_msg("a.test", self.clock, u), self.config) for u in users)
        )
        assert {a.disposition for a in attempts} == {RecordType.Delivery}


@contextlib.asynccontextmanager
async def relay(idle_timeout: float) -> AsyncIterator[Relay]:
    sink = MiniSink()
    port = await sink.start()
    started = Relay(sink, port, idle_timeout)
    try:
        yield started
    finally:
        await started.dispatch.close(drain_seconds=0.5)
        await sink.stop()


async def test_one_message_at_a_time_keeps_every_idle_session_open() -> None:
    """Before the fix, a message woke every idle session; those that found the FIFO empty
    closed their connection, so a trickle of mail reconnected over and over."""
    async with relay(idle_timeout=30.0) as r:
        await r.send(*(f"u{i}" for i in range(8)))
        opened = r.sink.connections
        assert opened > 1  # the connection curve opened several sessions
        for i in range(10):
            await asyncio.sleep(0.02)  # time for a session that would close to do so
            await r.send(f"t{i}")
        await asyncio.sleep(0.05)
        assert r.sink.connections == opened  # no new connection
        assert r.sink.open == opened  # and none closed


async def test_the_session_idle_longest_reaches_its_idle_timeout_under_a_trickle() -> None:
    """Two sessions, a message every 50 ms: the one that went idle last takes each message,
    so the other idles out after ``idle_timeout`` while mail still flows."""
    async with relay(idle_timeout=0.3) as r:
        await r.send("a", "b")
        assert r.sink.connections == 2
        for i in range(24):  # 1.2 s of mail, four idle timeouts
            await r.send(f"t{i}")
            await asyncio.sleep(0.05)
        assert r.sink.open == 1  # the other session quit at its idle timeout
        assert r.sink.connections == 2  # and the busy one never reconnected


async def test_close_ends_idle_sessions_at_once_with_quit() -> None:
    """Shutdown wakes every idle session: each sends QUIT and ends, instead of waiting out
    its idle_timeout (here 60 s, longer than the test's bound) or the drain."""
    async with relay(idle_timeout=60.0) as r:
        await r.send("a", "b", "c")
        assert r.sink.open >= 1
        await asyncio.wait_for(r.dispatch.close(drain_seconds=120.0), timeout=10.0)
        await asyncio.sleep(0.05)
        assert r.sink.open == 0
