"""QueueManager.resolve: config caching, refresh, and failures (fakes behind our seams)."""

from __future__ import annotations

import pytest

from kumoq.clock import FakeClock
from kumoq.config.queue import QueueConfig
from kumoq.errors import PolicyError
from kumoq.message import QueueNameParts
from kumoq.queue.manager import QueueManager


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


class NoSpool:
    async def remove(self, msg_id):
        pass


@pytest.fixture
async def setup():
    clock = FakeClock()
    source = FlakySource()
    manager = QueueManager(
        configs=source, deliverers={}, spool=NoSpool(), records=NoRecords(), clock=clock
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
