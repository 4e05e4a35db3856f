"""QueueManager.resolve: config caching, refresh, and failures (fakes behind our seams)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kumoq.clock import FakeClock
from kumoq.config.queue import QueueConfig
from kumoq.errors import PolicyError, PolicyWouldBlock
from kumoq.logs.records import RecordType
from kumoq.message import EnvelopeAddress, Message, QueueNameParts, new_spool_id
from kumoq.scheduler.attempt import POLICY_WAIT_RERUNS
from kumoq.scheduler.manager import QueueConfigSource, QueueManager
from kumoq.testing.faults import NullSpool


class FlakySource:
    def __init__(self) -> None:
        self.fail = False
        self.calls: list[str] = []

    def get_queue_config(self, parts: QueueNameParts) -> QueueConfig:
        self.calls.append(parts.domain)
        if self.fail:
            raise PolicyError("init.lua:3: broken", location="init.lua:3")
        return QueueConfig(refresh_interval=5.0, retry_interval=len(self.calls))


class NoRecords:
    def log(self, *args, **kwargs):
        pass


@pytest.fixture
async def setup() -> AsyncIterator[tuple[FakeClock, FlakySource, QueueManager]]:
    clock = FakeClock()
    source = FlakySource()
    manager = QueueManager(
        configs=source, deliverers={}, spool=NullSpool(), records=NoRecords(), clock=clock
    )
    yield clock, source, manager
    await manager.close()


async def test_config_is_cached_until_refresh_interval(setup):
    clock, source, manager = setup
    first = manager.resolve("example.com")
    clock.advance(4)
    assert manager.resolve("example.com") is first
    assert source.calls == ["example.com"]
    clock.advance(2)
    assert manager.resolve("example.com").config.retry_interval == 2
    assert source.calls == ["example.com", "example.com"]


async def test_refresh_failure_keeps_the_last_good_config(setup):
    clock, source, manager = setup
    queue = manager.resolve("example.com")
    source.fail = True
    for _ in range(5):  # across refreshes, inside and after the 60 s failure cache
        clock.advance(6)
        assert manager.resolve("example.com") is queue
        assert queue.config.retry_interval == 1


async def test_new_queue_failure_is_cached_for_60_seconds(setup):
    clock, source, manager = setup
    source.fail = True
    with pytest.raises(PolicyError):
        manager.resolve("broken.example")
    clock.advance(30)
    with pytest.raises(PolicyError):
        manager.resolve("broken.example")
    assert source.calls == ["broken.example"]  # not called again within 60 s
    source.fail = False
    clock.advance(31)
    assert manager.resolve("broken.example").config.retry_interval == 2


async def test_a_queue_that_keeps_emptying_has_one_reap_timer(setup):
    clock, _source, manager = setup
    queue = manager.resolve("example.com")
    first = queue.reap_timer
    assert first is not None
    for _ in range(100):  # every delivery that leaves the queue empty
        clock.advance(0.01)
        manager._maybe_idle(queue)
    assert queue.reap_timer is first


class WaitingSource:
    """get_queue_config that needs a DNS answer (kumo.dns.lookup_mx) the first ``misses``
    times it is called, as the policy runtime does while the MX cache is cold."""

    def __init__(self, misses: int) -> None:
        self.misses = misses
        self.calls = 0
        self.fetches = 0

    def get_queue_config(self, parts: QueueNameParts) -> QueueConfig:
        self.calls += 1
        if self.misses:

            async def fetch() -> None:
                self.fetches += 1
                self.misses -= 1

            raise PolicyWouldBlock(f"the MX records of {parts.domain}", fetch)
        return QueueConfig(refresh_interval=5.0, retry_interval=10 * self.calls)


async def make(source: QueueConfigSource, clock: FakeClock | None = None) -> QueueManager:
    return QueueManager(
        configs=source,
        deliverers={},
        spool=NullSpool(),
        records=NoRecords(),
        clock=clock or FakeClock(),
    )


async def test_resolve_waiting_fetches_then_calls_again():
    source = WaitingSource(misses=2)
    manager = await make(source)
    with pytest.raises(PolicyWouldBlock):
        manager.resolve("example.com")
    queue = await manager.resolve_waiting("example.com")
    assert queue.config.retry_interval == 40  # the 4th call: 3 waits, then an answer
    assert source.fetches == 2
    await manager.close()


async def test_resolve_waiting_gives_up_after_a_bounded_number_of_answers():
    manager = await make(WaitingSource(misses=1000))
    with pytest.raises(PolicyError, match=f"still waiting for DNS after {POLICY_WAIT_RERUNS}"):
        await manager.resolve_waiting("example.com")
    await manager.close()


async def test_a_refresh_that_waits_keeps_the_config_and_refreshes_in_the_background():
    clock = FakeClock()
    source = WaitingSource(misses=0)
    manager = await make(source, clock)
    queue = manager.resolve("example.com")
    assert queue.config.retry_interval == 10
    source.misses = 1
    clock.advance(6)
    assert manager.resolve("example.com") is queue  # no exception: the old config stays
    assert queue.config.retry_interval == 10
    for _ in range(5):
        await asyncio.sleep(0)  # the background refresh: fetch, then call again
    assert source.fetches == 1
    assert queue.config.retry_interval == 30
    await manager.close()


async def test_a_refresh_that_keeps_waiting_gives_up_and_keeps_the_config():
    clock = FakeClock()
    source = WaitingSource(misses=0)
    manager = await make(source, clock)
    queue = manager.resolve("example.com")
    source.misses = 1000
    clock.advance(6)
    assert manager.resolve("example.com") is queue
    for _ in range(50):
        await asyncio.sleep(0)
    assert source.fetches == 1 + POLICY_WAIT_RERUNS  # bounded: no chain of refresh tasks
    assert queue.config.retry_interval == 10
    assert manager.resolve("example.com") is queue  # and no new refresh until refresh_interval
    assert source.calls == 1 + 1 + POLICY_WAIT_RERUNS
    await manager.close()


class CountingSource:
    """A config per domain, counting the calls; ``broken.example`` fails."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def get_queue_config(self, parts: QueueNameParts) -> QueueConfig:
        self.calls.append(parts.domain)
        if parts.domain == "broken.example":
            raise PolicyError("init.lua:3: broken", location="init.lua:3")
        return QueueConfig()


class RecordedTypes:
    def __init__(self) -> None:
        self.types: list[RecordType] = []

    def log(self, type: RecordType, msg: Message, **fields: object) -> None:
        self.types.append(type)


async def test_insert_enumerated_resolves_each_queue_once_and_logs_no_delayed():
    """A restart's batch: every message due later waits in its queue, its queue resolved once
    for the batch, no Delayed record (KumoMTA logs none for Enumerated); a message whose
    queue fails to resolve takes insert's path (parked, still spooled)."""
    clock, source, records = FakeClock(1_000_000.0), CountingSource(), RecordedTypes()
    manager = QueueManager(
        configs=source, deliverers={}, spool=NullSpool(), records=records, clock=clock
    )
    due = clock.now() + 3600
    batch = []
    for n, domain in enumerate(["a.example", "b.example", "a.example", "broken.example"] * 3):
        msg = Message(
            id=new_spool_id(clock.now()),
            sender=EnvelopeAddress.parse("s@x.example"),
            recipients=[EnvelopeAddress.parse(f"u{n}@{domain}")],
            due=due,
        )
        batch.append((msg, msg.queue_name()))
    try:
        manager.insert_enumerated(batch)
        assert sorted(source.calls) == ["a.example", "b.example", "broken.example"]
        assert dict(manager.scheduled_counts()) == {"a.example": 6, "b.example": 3}
        for msg, name in batch:
            if name == "broken.example":
                assert manager.find(msg.id) == (msg, None)  # parked, still spooled
            else:
                assert msg.state == ("scheduled", "Enumerated", due)
        assert records.types == []
    finally:
        await manager.close()
