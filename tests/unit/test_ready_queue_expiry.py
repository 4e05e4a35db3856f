"""Expiry while a message waits for delivery (issue 9, defect 6): in an SMTP ready queue (in
the FIFO, or held by a dispatcher waiting for a connection), in a custom_lua batch, or waiting
for a custom_lua connection's call in progress. A message past its deadline is not attempted;
it gets an ``Expiration`` with the text the queue manager writes for an expiry at requeue, and
the manager logs it and removes it from the spool."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kumoq.clock import Clock, FakeClock, SystemClock
from kumoq.config.egress import EgressPathConfig, EgressPool, EgressSource
from kumoq.config.queue import CustomLuaProtocol, QueueConfig, SmtpProtocol
from kumoq.config.spool import SpoolDefinition
from kumoq.dns.mx_cache import MxCache
from kumoq.dns.resolver import TestResolver
from kumoq.egress.lua_dispatch import LuaDispatch
from kumoq.egress.ready import ReadyFifo, expiration, expiry_deadline
from kumoq.egress.ready_queue import QueuedMessage, ReadyQueue
from kumoq.egress.smtp_dispatch import SmtpDispatch
from kumoq.logs.records import RecordType, Response
from kumoq.message import EnvelopeAddress, Message, QueueNameParts, new_spool_id
from kumoq.scheduler.attempt import Attempt
from kumoq.scheduler.manager import QueueManager
from kumoq.scheduler.retry import expiry_after_increment, expiry_without_increment
from kumoq.spool import LocalDiskSpool
from kumoq.testing.faults import ScriptedDeliverer

T0 = 1_700_000_000.0
EXPIRES = "2023-11-14T22:13:30+00:00"  # T0 + 10 s


def make_msg(created: float, user: str = "r", schedule: dict[str, Any] | None = None) -> Message:
    return Message(
        id=new_spool_id(created),
        sender=EnvelopeAddress.parse("s@example.com"),
        recipients=[EnvelopeAddress.parse(f"{user}@example.com")],
        data=b"Subject: x\r\n\r\nbody\r\n",
        schedule=schedule,
        created=created,  # new_spool_id(created) is later once a later id was made
    )


# -- the pure parts ----------------------------------------------------------------------------


def test_fifo_remove_if_keeps_the_order_of_the_rest() -> None:
    fifo: ReadyFifo[str] = ReadyFifo(10)
    for item, priority in [("a", 1), ("x1", 1), ("b", 2), ("x2", 2), ("c", 0)]:
        assert fifo.try_push(item, priority)
    assert fifo.remove_if(lambda item: item.startswith("x")) == ["x2", "x1"]
    assert len(fifo) == 3
    assert list(fifo) == ["b", "a", "c"]
    fifo._check()


def test_the_expiration_text_is_the_managers_text_for_an_expiry_at_requeue() -> None:
    msg = make_msg(T0)
    assert expiry_deadline(msg, 60.0) == T0 + 60.0
    assert expiration(msg, 60.0, T0 + 59.0) is None
    attempt = expiration(msg, 60.0, T0 + 61.5)
    assert attempt is not None
    expired = expiry_without_increment(T0, T0 + 61.5, 60.0)
    assert expired is not None
    assert attempt.disposition is RecordType.Expiration
    assert attempt.response == Response(551, (5, 4, 7), expired.content, None)
    assert attempt.response.content == "Next delivery time PT61.5S > PT60S"
    assert attempt.site == "localhost"


def test_set_scheduling_expires_replaces_max_age() -> None:
    msg = make_msg(T0, schedule={"expires": EXPIRES})
    assert expiry_deadline(msg, 1.0) == T0 + 10.0
    assert expiration(msg, 1.0, T0 + 5.0) is None  # max_age is ignored
    attempt = expiration(msg, 1.0, T0 + 10.0)
    assert attempt is not None
    expired = expiry_after_increment(T0, T0 + 10.0, 0.0, 1.0, T0 + 10.0, next_due=T0 + 10.0)
    assert expired is not None
    assert attempt.response.content == expired.content
    assert "configured via set_scheduling" in attempt.response.content


# -- the SMTP ready queue ----------------------------------------------------------------------


def ready_queue(clock: Clock) -> ReadyQueue:
    return ReadyQueue(
        name="s->site@smtp_client",
        source=EgressSource(name="s"),
        pool="unspecified",
        site_name="site",
        routing_domain="example.com",
        exchanger=None,
        mx_list=None,
        path=EgressPathConfig(),
        path_until=math.inf,
        clock=clock,
    )


async def test_expire_due_settles_waiting_and_held_messages_past_their_deadline() -> None:
    clock = FakeClock(T0)
    ready = ready_queue(clock)
    loop = asyncio.get_running_loop()
    items = [
        QueuedMessage(make_msg(T0, f"u{age}"), loop.create_future(), T0 + age, float(age))
        for age in (10, 20, 30)
    ]
    for item in items[:2]:
        assert ready.push(item, 1)
    ready.held.add(items[2])  # popped by a dispatcher still connecting
    clock.advance(25)
    assert ready.expire_due(clock.now()) == T0 + 30
    assert [it.future.done() for it in items] == [True, True, False]
    assert len(ready.fifo) == 0
    first = items[0].future.result()
    assert first.disposition is RecordType.Expiration
    assert first.response.content == "Next delivery time PT25S > PT10S"
    clock.advance(5)
    assert ready.expire_due(clock.now()) == math.inf
    assert items[2].future.result().disposition is RecordType.Expiration
    ready.expiry.cancel()


class CountingServer:
    """Accepts connections and never says a word (no banner); counts them."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


class Policy:
    def __init__(self, **path: Any) -> None:
        self.path = EgressPathConfig.from_mapping({"prohibited_hosts": [], **path})

    def get_egress_pool(self, name: str) -> EgressPool:
        return EgressPool.from_mapping({"name": name, "entries": [{"name": "s"}]})

    def get_egress_source(self, name: str) -> EgressSource:
        return EgressSource.from_mapping({"name": name})

    def get_egress_path_config(self, routing_domain: str, source: str, site: str) -> Any:
        return self.path


def smtp_dispatch(clock: Clock, **path: Any) -> SmtpDispatch:
    mx = MxCache(TestResolver())
    return SmtpDispatch(
        policy=Policy(**path), mx=mx, resolver=lambda: mx.resolver, clock=clock, hostname="h"
    )


def smtp_config(port: int, max_age: float) -> QueueConfig:
    return QueueConfig(max_age=max_age, protocol=SmtpProtocol(mx_list=(f"127.0.0.1:{port}",)))


async def test_a_message_popped_after_its_deadline_is_not_attempted() -> None:
    server = CountingServer()
    port = await server.start()
    clock = FakeClock(T0 + 100)
    dispatch = smtp_dispatch(clock, connect_timeout="2s", banner_timeout="1s")
    try:
        attempt = await asyncio.wait_for(dispatch.deliver(make_msg(T0), smtp_config(port, 50.0)), 5)
    finally:
        await dispatch.close(drain_seconds=0.5)
        await server.stop()
    assert attempt.disposition is RecordType.Expiration
    assert attempt.response.content == "Next delivery time PT100S > PT50S"
    assert server.connections == 0


async def test_waiting_messages_expire_on_time_while_the_connection_hangs() -> None:
    """connection_limit 1: the first message is held by the dispatcher, which waits for a
    banner that never comes; the second waits in the FIFO. Both expire at max_age."""
    server = CountingServer()
    port = await server.start()
    clock = SystemClock()
    dispatch = smtp_dispatch(clock, connection_limit=1, banner_timeout="60s")
    config = smtp_config(port, 0.5)
    started = time.monotonic()
    try:
        attempts = await asyncio.wait_for(
            asyncio.gather(*(dispatch.deliver(make_msg(clock.now(), u), config) for u in "ab")),
            5,
        )
        elapsed = time.monotonic() - started
    finally:
        await dispatch.close(drain_seconds=0.1)
        await server.stop()
    assert [a.disposition for a in attempts] == [RecordType.Expiration] * 2
    assert all(a.response.content.startswith("Next delivery time PT0.5") for a in attempts)
    assert 0.45 <= elapsed < 1.5
    assert server.connections == 1


# -- custom_lua --------------------------------------------------------------------------------


class HangingRuntime:
    """A connection whose calls wait until ``release``; records the users it was given."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.released = asyncio.Event()

    async def construct(self, name: str, *args: str | None) -> int:
        return 1

    async def conn_send(self, conn: int, msg: Message) -> Any:
        self.calls.append([msg.recipient.local_part])
        await self.released.wait()
        return "ok"

    async def conn_send_batch(self, conn: int, msgs: Sequence[Message]) -> Any:
        self.calls.append([m.recipient.local_part for m in msgs])
        return "ok"

    def conn_close(self, conn: int) -> None:
        pass


def lua_config(max_age: float, **protocol: Any) -> QueueConfig:
    return QueueConfig(
        max_age=max_age, protocol=CustomLuaProtocol(constructor="make.hook", **protocol)
    )


async def test_lua_a_message_past_its_deadline_is_not_sent() -> None:
    clock = FakeClock(T0 + 100)
    runtime = HangingRuntime()
    dispatch = LuaDispatch(runtime, clock=clock)
    attempt = await dispatch.deliver(make_msg(T0), lua_config(50.0))
    await dispatch.close(drain_seconds=0.1)
    assert attempt.disposition is RecordType.Expiration
    assert attempt.response.content == "Next delivery time PT100S > PT50S"
    assert runtime.calls == []


async def test_lua_a_message_waiting_for_a_batch_expires_on_time() -> None:
    clock = FakeClock(T0)
    runtime = HangingRuntime()
    dispatch = LuaDispatch(runtime, clock=clock)
    config = lua_config(0.2, batch_size=10, min_batch_size=10, max_batch_latency=60.0)
    task = asyncio.ensure_future(dispatch.deliver(make_msg(T0), config))
    await asyncio.sleep(0.05)
    assert not task.done()
    clock.advance(1.0)  # the sweep fires 0.2 s after the push (real time) and sees T0 + 1
    attempt = await asyncio.wait_for(task, 2)
    await dispatch.close(drain_seconds=0.1)
    assert attempt.disposition is RecordType.Expiration
    assert attempt.response.content == "Next delivery time PT1S > PT0.2S"
    assert runtime.calls == []


async def test_lua_a_message_waiting_for_its_connection_expires_on_time() -> None:
    clock = SystemClock()
    runtime = HangingRuntime()
    dispatch = LuaDispatch(runtime, clock=clock)
    config = lua_config(0.3)
    first = asyncio.ensure_future(dispatch.deliver(make_msg(clock.now(), "a"), config))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(dispatch.deliver(make_msg(clock.now(), "b"), config))
    attempt = await asyncio.wait_for(second, 2)
    assert attempt.disposition is RecordType.Expiration
    assert attempt.response.content.startswith("Next delivery time PT0.3")
    assert runtime.calls == [["a"]]  # b was never sent
    runtime.released.set()
    assert (await first).disposition is RecordType.Delivery
    await dispatch.close(drain_seconds=0.1)


# -- the queue manager -------------------------------------------------------------------------


class Configs:
    def get_queue_config(self, parts: QueueNameParts) -> QueueConfig:
        return QueueConfig(protocol=SmtpProtocol())


class Records:
    def __init__(self) -> None:
        self.logged: list[tuple[RecordType, str, Response, dict[str, Any]]] = []

    def log(self, type: RecordType, msg: Message, *, response: Response, **fields: Any) -> None:
        self.logged.append((type, msg.id, response, fields))


async def test_the_manager_logs_an_expiration_attempt_and_removes_the_message(
    tmp_path: Path,
) -> None:
    data, meta = (
        SpoolDefinition.from_mapping({"name": n, "path": str(tmp_path / n)})
        for n in ("data", "meta")
    )
    spool = LocalDiskSpool(data, meta)
    await spool.start()
    clock = FakeClock(T0 + 100)
    msg = make_msg(T0)
    await spool.store(msg.id, msg.data, json.dumps(msg.to_spool_meta()).encode())
    expired = expiration(msg, 50.0, clock.now())
    assert isinstance(expired, Attempt)
    deliverer = ScriptedDeliverer(script=[expired])
    records = Records()
    manager = QueueManager(
        configs=Configs(),
        deliverers={SmtpProtocol: deliverer},
        spool=spool,
        records=records,
        clock=clock,
    )
    try:
        manager.insert(msg)
        for _ in range(200):
            if records.logged:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
    finally:
        await manager.close(drain_seconds=1)
    remaining = [spool_id async for spool_id, _ in spool.enumerate()]
    await spool.close()
    ((kind, msg_id, response, fields),) = records.logged
    assert (kind, msg_id) == (RecordType.Expiration, msg.id)
    assert response.content == "Next delivery time PT100S > PT50S"
    assert fields["site"] == "localhost"
    assert remaining == []
