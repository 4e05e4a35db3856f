"""Shutdown bounds (issue 9, defect 8): the daemon's ``ShutdownBounds`` from the environment,
60 s in all by default; and egress ``close()``, which resolves or cancels the attempt of every
message it holds, a half-sent one included, within its drain plus a short grace."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from kumoq.clock import SystemClock
from kumoq.config.egress import EgressPathConfig, EgressPool, EgressSource
from kumoq.config.queue import CustomLuaProtocol, QueueConfig, SmtpProtocol
from kumoq.dns.mx_cache import MxCache
from kumoq.dns.resolver import TestResolver
from kumoq.egress.lua_dispatch import LuaDispatch
from kumoq.egress.smtp_dispatch import SmtpDispatch
from kumoq.errors import ConfigError
from kumoq.message import EnvelopeAddress, Message, new_spool_id
from kumoq.shutdown import ShutdownBounds, shutdown_bounds


def test_the_default_bound_is_60_seconds() -> None:
    bounds = shutdown_bounds({})
    assert bounds == ShutdownBounds(listener_drain=25.0, delivery_drain=25.0, flush=10.0)
    assert bounds.total == 60.0


def test_bounds_come_from_the_environment_in_seconds_or_durations() -> None:
    bounds = shutdown_bounds(
        {
            "KUMOQ_SHUTDOWN_LISTENER_DRAIN": "2.5",
            "KUMOQ_SHUTDOWN_DELIVERY_DRAIN": "1m",
            "KUMOQ_SHUTDOWN_FLUSH": " ",
        }
    )
    assert bounds == ShutdownBounds(listener_drain=2.5, delivery_drain=60.0, flush=10.0)
    assert bounds.total == 72.5


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon", "5 parsecs"])
def test_a_bad_bound_is_a_config_error_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="KUMOQ_SHUTDOWN_FLUSH"):
        shutdown_bounds({"KUMOQ_SHUTDOWN_FLUSH": value})


class HalfDataServer:
    """Answers up to DATA (354), reads the body, and never answers the final dot."""

    def __init__(self) -> None:
        self.body_seen = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 half ESMTP\r\n")
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                if line.startswith(b"EHLO"):
                    writer.write(b"250 half\r\n")
                elif line.startswith(b"DATA"):
                    writer.write(b"354 go on\r\n")
                elif line == b".\r\n":
                    self.body_seen.set()  # and no reply, ever
                elif not self.body_seen.is_set() and line[:4] in (b"MAIL", b"RCPT"):
                    writer.write(b"250 ok\r\n")
        writer.close()


class Policy:
    def get_egress_pool(self, name: str) -> EgressPool:
        return EgressPool.from_mapping({"name": name, "entries": [{"name": "s"}]})

    def get_egress_source(self, name: str) -> EgressSource:
        return EgressSource.from_mapping({"name": name})

    def get_egress_path_config(self, routing_domain: str, source: str, site: str) -> Any:
        return EgressPathConfig.from_mapping(
            {"prohibited_hosts": [], "enable_tls": "Disabled", "data_dot_timeout": "60s"}
        )


def make_msg(user: str = "r") -> Message:
    return Message(
        id=new_spool_id(time.time()),
        sender=EnvelopeAddress.parse("s@example.com"),
        recipients=[EnvelopeAddress.parse(f"{user}@example.com")],
        data=b"Subject: x\r\n\r\nbody\r\n",
    )


async def test_close_cancels_the_attempt_of_a_half_sent_message_within_its_drain() -> None:
    script = HalfDataServer()
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mx = MxCache(TestResolver())
    dispatch = SmtpDispatch(
        policy=Policy(), mx=mx, resolver=lambda: mx.resolver, clock=SystemClock(), hostname="h"
    )
    config = QueueConfig(protocol=SmtpProtocol(mx_list=(f"127.0.0.1:{port}",)))
    attempt = asyncio.ensure_future(dispatch.deliver(make_msg(), config))
    try:
        await asyncio.wait_for(script.body_seen.wait(), 5)
        started = time.monotonic()
        await asyncio.wait_for(dispatch.close(drain_seconds=0.2), 5)
        assert time.monotonic() - started < 0.2 + 1.0
        # Not left hanging: cancelled, so the queue manager writes no record and the
        # message stays spooled for the next start.
        done, _ = await asyncio.wait([attempt], timeout=1)
        assert attempt in done
        assert attempt.cancelled()
        late = asyncio.ensure_future(dispatch.deliver(make_msg("late"), config))
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(late, 1)  # after close: not attempted
    finally:
        attempt.cancel()
        server.close()


class SlowRuntime:
    async def construct(self, name: str, *args: str | None) -> int:
        return 1

    async def conn_send(self, conn: int, msg: Message) -> Any:
        await asyncio.sleep(3600)

    async def conn_send_batch(self, conn: int, msgs: Any) -> Any:
        await asyncio.sleep(3600)

    def conn_close(self, conn: int) -> None:
        pass


async def test_lua_close_is_bounded_by_its_drain() -> None:
    dispatch = LuaDispatch(SlowRuntime(), clock=SystemClock())
    config = QueueConfig(protocol=CustomLuaProtocol(constructor="make.x", batch_size=2))
    attempts = [asyncio.ensure_future(dispatch.deliver(make_msg(u), config)) for u in "ab"]
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await asyncio.wait_for(dispatch.close(drain_seconds=0.2), 5)
    assert time.monotonic() - started < 0.2 + 1.0
    done, _ = await asyncio.wait(attempts, timeout=1)
    assert len(done) == 2
    assert all(a.cancelled() or a.exception() is not None for a in attempts)
