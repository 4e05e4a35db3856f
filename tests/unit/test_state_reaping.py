"""Per-site and per-queue state is reaped (issue 10, defect 3).

- An SMTP ready queue with nothing in progress for its reap interval after its last use is
  dropped, holding no connection, timer or dispatcher task; one with a session still open is
  not.
- A custom_lua ready queue is reaped the same way, and its connection is closed.
- Reaping a scheduled queue drops its round robin of sources (``SourceSelector.forget``) and
  its cached failed resolve; failed resolves of queues never created are swept.
- A churn of 100,000 distinct destination domains through the real QueueManager and
  SmtpDispatch keeps memory flat (``state_churn``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import traceback
from collections.abc import Sequence
from typing import Any

import pytest

from kumoq.clock import Clock, FakeClock, SystemClock
from kumoq.config.egress import EgressPathConfig, EgressPool, EgressSource
from kumoq.config.queue import CustomLuaProtocol, QueueConfig, SmtpProtocol
from kumoq.dns.mx_cache import MxCache
from kumoq.egress.lua_dispatch import LuaDispatch
from kumoq.egress.ready_queue import READY_QUEUE_REAP_INTERVAL, ReadyQueue
from kumoq.egress.smtp_dispatch import SmtpDispatch
from kumoq.egress.sources import SourceSelector
from kumoq.errors import PolicyError
from kumoq.logs.records import RecordType
from kumoq.message import EnvelopeAddress, Message, QueueNameParts, new_spool_id
from kumoq.scheduler.manager import QueueManager
from kumoq.scheduler.retry import FailureCache
from kumoq.testing.faults import NullSpool
from tests.unit import state_churn
from tests.unit.state_churn import Records, Resolver
from tests.unit.virtual_time import run_virtual

REAP = 5.0


def make_msg(domain: str, clock: Clock, user: str = "u") -> Message:
    return Message(
        id=new_spool_id(clock.now()),
        sender=EnvelopeAddress.parse("s@sender.test"),
        recipients=[EnvelopeAddress.parse(f"{user}@{domain}")],
        data=b"Subject: x\r\n\r\nbody\r\n",
        created=clock.now(),
    )


class Policy:
    def __init__(self, **path: Any) -> None:
        self.path = EgressPathConfig.from_mapping(path)

    def get_egress_pool(self, name: str) -> EgressPool:
        return EgressPool.from_mapping({"name": name, "entries": [{"name": "s1"}, {"name": "s2"}]})

    def get_egress_source(self, name: str) -> EgressSource:
        return EgressSource.from_mapping({"name": name})

    def get_egress_path_config(self, routing_domain: str, source: str, site: str) -> Any:
        return self.path


def smtp_dispatch(clock: Clock, reap_interval: float, **path: Any) -> SmtpDispatch:
    mx = MxCache(Resolver())
    return SmtpDispatch(
        policy=Policy(**path),
        mx=mx,
        resolver=lambda: mx.resolver,
        clock=clock,
        hostname="h.test",
        reap_interval=reap_interval,
    )


def live_timers_of(obj: object) -> list[asyncio.TimerHandle]:
    """The pending timers of the running loop whose callback is bound to ``obj`` or one of its
    attributes, or that were given ``obj``."""
    loop = asyncio.get_running_loop()
    related = {id(obj), *(id(v) for v in vars(obj).values())} if hasattr(obj, "__dict__") else set()
    related.add(id(obj))
    found = []
    for handle in loop._scheduled:  # type: ignore[attr-defined]
        if handle.cancelled():
            continue
        owner = getattr(handle._callback, "__self__", None)
        if id(owner) in related or any(id(arg) in related for arg in handle._args):
            found.append(handle)
    return found


class MiniSink:
    """A small SMTP server on 127.0.0.1 that accepts everything; counts open connections."""

    def __init__(self) -> None:
        self.open = 0
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.connections += 1
        try:
            writer.write(b"220 sink.test ESMTP\r\n")
            in_data = False
            while line := await reader.readline():
                if in_data:
                    if line == b".\r\n":
                        in_data = False
                        writer.write(b"250 2.0.0 queued\r\n")
                    continue
                verb = line[:4].upper()
                if verb == b"QUIT":
                    writer.write(b"221 2.0.0 bye\r\n")
                    break
                if verb == b"DATA":
                    in_data = True
                    writer.write(b"354 go ahead\r\n")
                else:
                    writer.write(b"250 ok\r\n")
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            writer.close()
            self.open -= 1

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


async def wait_until(predicate: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


# -- SMTP ready queues -------------------------------------------------------------------------


def test_kumomtas_ready_queue_age_out_is_the_default() -> None:
    assert READY_QUEUE_REAP_INTERVAL == 600.0  # AGE_OUT_INTERVAL in ready_queue.rs


async def test_an_idle_smtp_ready_queue_is_reaped_holding_no_connection_timer_or_task() -> None:
    sink = MiniSink()
    port = await sink.start()
    clock = SystemClock()
    dispatch = smtp_dispatch(
        clock, 0.3, prohibited_hosts=[], enable_tls="Disabled", idle_timeout=0.05
    )
    config = QueueConfig(protocol=SmtpProtocol(mx_list=(f"127.0.0.1:{port}",)))
    try:
        attempts = await asyncio.gather(
            *(dispatch.deliver(make_msg("a.test", clock, u), config) for u in "ab")
        )
        assert [a.disposition for a in attempts] == [RecordType.Delivery] * 2
        (ready,) = dispatch.ready_queues.values()
        assert isinstance(ready, ReadyQueue)
        assert live_timers_of(ready.expiry)  # watching the messages' max_age
        await wait_until(lambda: len(dispatch.ready_queues) == 0)
        assert sink.connections == 2  # two sessions for two messages (the connection curve)
        assert sink.open == 0  # they idled out and quit before the reap
        assert (ready.running, ready.dispatchers, len(ready.fifo), ready.held) == (0, 0, 0, set())
        assert not dispatch._dispatchers._tasks
        assert not live_timers_of(ready)
        assert not live_timers_of(ready.expiry)
        assert not live_timers_of(dispatch)  # no reap timer left either
        # The next message makes the ready queue again.
        attempt = await dispatch.deliver(make_msg("a.test", clock, "c"), config)
        assert attempt.disposition is RecordType.Delivery
        assert len(dispatch.ready_queues) == 1
        assert dispatch.ready_queues.get(ready.name) is not ready
    finally:
        await dispatch.close(drain_seconds=0.5)
        await sink.stop()


async def test_a_ready_queue_with_a_session_open_is_not_reaped() -> None:
    sink = MiniSink()
    port = await sink.start()
    clock = SystemClock()
    dispatch = smtp_dispatch(
        clock, 0.1, prohibited_hosts=[], enable_tls="Disabled", idle_timeout=1.5
    )
    config = QueueConfig(protocol=SmtpProtocol(mx_list=(f"127.0.0.1:{port}",)))
    try:
        attempt = await dispatch.deliver(make_msg("a.test", clock), config)
        assert attempt.disposition is RecordType.Delivery
        await asyncio.sleep(0.4)  # past the reap interval, within the session's idle_timeout
        assert len(dispatch.ready_queues) == 1
        assert sink.open == 1
        await wait_until(lambda: len(dispatch.ready_queues) == 0)  # once the session has quit
        assert sink.open == 0
    finally:
        await dispatch.close(drain_seconds=0.5)
        await sink.stop()


def test_a_ready_queue_used_again_waits_a_whole_reap_interval_after_its_last_message() -> None:
    """Loopback is prohibited by default: each attempt bounces after the connection plan,
    without a socket, so the loop can run on a FakeClock."""
    clock = FakeClock()

    async def main() -> None:
        dispatch = smtp_dispatch(clock, REAP)
        config = QueueConfig(protocol=SmtpProtocol())
        attempt = await dispatch.deliver(make_msg("a.test", clock), config)
        assert attempt.disposition is RecordType.Bounce
        assert attempt.response.content == "127.0.0.1 is on the list of prohibited_hosts"
        await asyncio.sleep(0.6 * REAP)
        await dispatch.deliver(make_msg("a.test", clock), config)
        await asyncio.sleep(0.6 * REAP)  # 1.2 reap intervals after the first message
        assert len(dispatch.ready_queues) == 1
        await asyncio.sleep(0.5 * REAP)
        assert len(dispatch.ready_queues) == 0
        await dispatch.close()

    run_virtual(clock, main)


# -- custom_lua ready queues -------------------------------------------------------------------


class LuaRuntime:
    """Connections whose sends wait for ``gate`` when it is set; records what happens."""

    def __init__(self) -> None:
        self.constructed: list[str | None] = []
        self.closed: list[int] = []
        self.gate: asyncio.Event | None = None

    async def construct(self, name: str, *args: str | None) -> int:
        self.constructed.append(args[0])
        return len(self.constructed)

    async def conn_send(self, conn: int, msg: Message) -> Any:
        if self.gate is not None:
            await self.gate.wait()
        return "ok"

    async def conn_send_batch(self, conn: int, msgs: Sequence[Message]) -> Any:
        return f"batch of {len(msgs)}"

    def conn_close(self, conn: int) -> None:
        self.closed.append(conn)


def lua_config(**protocol: Any) -> QueueConfig:
    return QueueConfig(protocol=CustomLuaProtocol(constructor="make.hook", **protocol))


@pytest.mark.parametrize("batch_size", [1, 3])
def test_an_idle_lua_ready_queue_is_reaped_and_its_connection_closed(batch_size: int) -> None:
    clock = FakeClock()
    runtime = LuaRuntime()

    async def main() -> None:
        dispatch = LuaDispatch(runtime, clock=clock, reap_interval=REAP)
        config = lua_config(batch_size=batch_size, min_batch_size=1)
        attempt = await dispatch.deliver(make_msg("a.test", clock), config)
        assert attempt.disposition is RecordType.Delivery
        assert dispatch.ready_queues.names() == ["unspecified->a.test@lua:make.hook"]
        await asyncio.sleep(0.9 * REAP)
        assert runtime.closed == []
        await asyncio.sleep(0.2 * REAP)
        assert len(dispatch.ready_queues) == 0
        assert runtime.closed == [1]
        assert not live_timers_of(dispatch)
        await dispatch.deliver(make_msg("a.test", clock), config)  # a new connection
        assert runtime.constructed == ["a.test", "a.test"]
        await dispatch.close()
        assert runtime.closed == [1, 2]

    run_virtual(clock, main)


def test_a_lua_ready_queue_with_a_call_in_progress_is_not_reaped() -> None:
    clock = FakeClock()
    runtime = LuaRuntime()

    async def main() -> None:
        runtime.gate = asyncio.Event()
        dispatch = LuaDispatch(runtime, clock=clock, reap_interval=REAP)
        sending = asyncio.ensure_future(dispatch.deliver(make_msg("a.test", clock), lua_config()))
        await asyncio.sleep(3 * REAP)
        assert len(dispatch.ready_queues) == 1
        assert runtime.closed == []
        runtime.gate.set()
        assert (await sending).disposition is RecordType.Delivery
        await asyncio.sleep(REAP + 1)  # a whole reap interval after its last use
        assert runtime.closed == [1]
        assert len(dispatch.ready_queues) == 0
        await dispatch.close()

    run_virtual(clock, main)


# -- scheduled queues --------------------------------------------------------------------------


class Configs:
    def __init__(self) -> None:
        self.fail: set[str] = set()

    def get_queue_config(self, parts: QueueNameParts) -> QueueConfig:
        if parts.domain in self.fail:
            raise PolicyError(f"no config for {parts.domain}")
        return QueueConfig(reap_interval=REAP, refresh_interval=1.0, egress_pool="pool")


def test_reaping_a_scheduled_queue_drops_its_round_robin_and_its_failed_resolve() -> None:
    clock = FakeClock()

    async def main() -> None:
        policy = Policy()
        sources = SourceSelector(policy, clock)
        mx = MxCache(Resolver())
        dispatch = SmtpDispatch(
            policy=policy, mx=mx, resolver=lambda: mx.resolver, clock=clock, sources=sources
        )
        lua = LuaDispatch(LuaRuntime(), clock=clock, sources=sources)
        configs = Configs()
        records = Records()
        records.expected = 1
        manager = QueueManager(
            configs=configs,
            deliverers={SmtpProtocol: dispatch, CustomLuaProtocol: lua},
            spool=NullSpool(),
            records=records,
            clock=clock,
        )
        manager.insert(make_msg("a.test", clock))
        await records.done.wait()
        assert records.counts == {RecordType.Bounce: 1}
        assert list(sources._rr) == ["a.test"]
        configs.fail.add("a.test")
        await asyncio.sleep(2.0)  # past refresh_interval: the refresh fails, the queue keeps
        assert manager.resolve("a.test").config.egress_pool == "pool"
        assert manager._failed.get("a.test", clock.monotonic()) is not None
        await asyncio.sleep(REAP)
        assert manager.queue_names() == []
        assert sources._rr == {}
        assert len(manager._failed) == 0
        await manager.close()
        await dispatch.close()
        await lua.close()

    run_virtual(clock, main)


async def test_failed_resolves_of_queues_never_created_are_swept() -> None:
    clock = FakeClock()
    configs = Configs()
    manager = QueueManager(
        configs=configs, deliverers={}, spool=NullSpool(), records=Records(), clock=clock
    )
    for i in range(10_000):
        configs.fail.add(f"f{i}.test")
        with pytest.raises(PolicyError):
            manager.resolve(f"f{i}.test")
        clock.advance(0.1)  # 600 failures remembered at a time (60 s each)
    assert len(manager._failed) <= 2 * 1024
    await manager.close()


async def test_a_cached_failure_raised_again_does_not_grow_its_traceback() -> None:
    clock = FakeClock()
    configs = Configs()
    configs.fail.add("f.test")
    manager = QueueManager(
        configs=configs, deliverers={}, spool=NullSpool(), records=Records(), clock=clock
    )
    depths = []
    for _ in range(50):
        try:
            manager.resolve("f.test")
        except PolicyError as exc:
            depths.append(len(list(traceback.walk_tb(exc.__traceback__))))
    assert max(depths[1:]) <= depths[0]
    await manager.close()


def test_failure_cache_forgets_expired_failures_when_it_doubles() -> None:
    cache: FailureCache[ValueError] = FailureCache(min_sweep=4)
    for i in range(100):
        cache.add(f"n{i}", ValueError(i), until=i + 2.5, now=float(i))
        assert len(cache) <= 8
    assert cache.get("n99", 99.0) is not None
    assert cache.get("n99", 101.5) is None
    cache.forget("n99")
    assert cache.get("n99", 99.0) is None


# -- the churn ---------------------------------------------------------------------------------

DOMAINS = 100_000
WARMUP = 10_000


@pytest.mark.slow
@pytest.mark.timeout(480)  # tracemalloc is slow, and a loaded 2-core machine slower still
def test_a_churn_of_100000_domains_keeps_memory_flat() -> None:
    """100,000 distinct domains, 1,000 at a time, each batch followed by a reap interval.

    tracemalloc makes the run about four times slower (``python -m tests.unit.state_churn``
    traces it all: about 2.4 MB held after 10,000 domains and after 100,000, 130 s), so this
    traces two windows: 2,000 domains after the 10,000 of the warm-up, and the last 5,000.
    What a window allocates and still holds at its end is what replaced the entries of the
    bounded tables (MX cache, failed resolves, throttle keys) plus any leak; a leak grows with
    the window, the replacements do not. And the blocks allocated in the whole process stay
    flat from the end of the warm-up to the end (``sys.getallocatedblocks``)."""
    early, late = (WARMUP, WARMUP + 2_000), (DOMAINS - 5_000, DOMAINS)
    result = state_churn.churn(DOMAINS, windows=[early, late], checkpoints=[WARMUP, DOMAINS])
    assert result.records == {RecordType.Bounce: DOMAINS - DOMAINS // state_churn.FAIL_EVERY}
    # Everything per domain is reaped after each batch; the bounded tables stay bounded.
    assert result.busiest["ready_queues"] >= 900
    assert result.after_reap["scheduled_queues"] == 0
    assert result.after_reap["round_robins"] == 0
    assert result.after_reap["ready_queues"] == 0
    assert result.after_reap["mx_cache"] <= state_churn.MX_CAPACITY
    assert result.after_reap["failed_resolves"] <= 2 * 1024
    assert result.after_reap["throttle_keys"] <= 2 * 3 * 1000
    # Memory: no growth with the number of domains.
    early_held, late_held = result.traced[early][0], result.traced[late][0]
    assert late_held < early_held + 1_000_000, (early_held, late_held)  # 2.5x the domains
    assert late_held < 5_000_000, late_held
    warm_blocks, end_blocks = result.blocks[WARMUP], result.blocks[DOMAINS]
    assert math.isclose(end_blocks, warm_blocks, rel_tol=0.10), (warm_blocks, end_blocks)
