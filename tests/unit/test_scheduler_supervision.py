"""A failing promotion or maintainer never stalls delayed mail (issue 9, defect 3).

Scheduled queues of every strategy run on a virtual-time loop (``tests.unit.virtual_time``,
driven by a FakeClock), with a promote callback that raises on command. Checked: the error is
logged with the queue's name, ``supervised_task_restarts`` counts it, the failing batch is
promoted later (not lost), later delayed messages are still promoted, and a promotion that
always fails is retried with a backoff instead of spinning.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import kumoq.scheduler.manager as manager_module
from kumoq.clock import FakeClock
from kumoq.config.queue import QueueConfig, QueueStrategy, SmtpProtocol
from kumoq.config.spool import SpoolDefinition
from kumoq.config.values import ThrottleSpec
from kumoq.logs.records import RecordType, Response
from kumoq.message import EnvelopeAddress, Message, QueueNameParts, new_spool_id
from kumoq.metrics import REGISTRY
from kumoq.scheduler.manager import QueueManager
from kumoq.scheduler.scheduled import ScheduledQueue, SingletonWheel
from kumoq.scheduler.timerwheel import TimerWheel
from kumoq.spool import LocalDiskSpool
from kumoq.testing.faults import ScriptedDeliverer
from kumoq.throttle import LocalThrottleBackend, Throttle, ThrottleResult
from tests.unit.virtual_time import run_virtual

STRATEGIES = [s.value for s in QueueStrategy]


def restarts(task: str) -> float:
    value = REGISTRY.get_sample_value("supervised_task_restarts_total", {"task": task})
    return value or 0.0


def task_of(strategy: str) -> str:
    singleton = strategy.startswith("Singleton")
    return "singleton_wheel" if singleton else "queue_maintainer"


def message() -> Message:
    return Message(
        id=new_spool_id(1_700_000_000.0),
        sender=EnvelopeAddress.parse("sender@example.com"),
        recipients=[EnvelopeAddress.parse("user@example.com")],
    )


@dataclass
class Promoter:
    """A promote callback: raises while ``failing`` (``failing`` > 0 counts down)."""

    clock: FakeClock
    failing: int = 0  # -1: always
    poison: set[str] = field(default_factory=set)  # a batch with one of these always fails
    promoted: list[tuple[str, str, float]] = field(default_factory=list)
    calls: int = 0

    def __call__(self, queue: ScheduledQueue, batch: list[Message]) -> None:
        self.calls += 1
        if self.poison.intersection(m.id for m in batch):
            raise ValueError("poison message")
        if self.failing:
            self.failing = max(-1, self.failing - 1) if self.failing > 0 else -1
            raise RuntimeError(f"promote failed for {len(batch)} message(s)")
        for msg in batch:
            self.promoted.append((queue.name, msg.id, self.clock.now()))


def make_queue(
    name: str, strategy: str, clock: FakeClock, promote: Promoter, singleton: SingletonWheel
) -> ScheduledQueue:
    config = QueueConfig(strategy=QueueStrategy(strategy), retry_interval=20.0)  # 1 s tick
    return ScheduledQueue(
        name,
        QueueNameParts(name),
        config,
        resolved_at=0.0,
        clock=clock,
        promote=promote,
        singleton=singleton,
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_promotion_that_raises_once_loses_nothing_and_stalls_nothing(
    strategy: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    promoter = Promoter(clock, failing=1)
    before = restarts(task_of(strategy))
    first, later = message(), message()

    async def main() -> None:
        singleton = SingletonWheel(clock)
        queue = make_queue("flaky.example", strategy, clock, promoter, singleton)
        start = clock.now()
        queue.insert_delayed(first, start + 5)
        queue.insert_delayed(later, start + 20)
        await asyncio.sleep(40)
        assert len(queue) == 0
        queue.close()
        singleton.close()

    with caplog.at_level(logging.ERROR, logger="kumoq.queue"):
        run_virtual(clock, main)
    assert [m for _, m, _ in promoter.promoted] == [first.id, later.id]
    # The failed batch came back after the backoff (1 s, to the structure's tick).
    assert promoter.promoted[0][2] - 1_700_000_005.0 <= 1 + 3
    assert promoter.promoted[1][2] - 1_700_000_020.0 <= 3
    assert restarts(task_of(strategy)) == before + 1
    (record,) = [r for r in caplog.records if "promoting" in r.getMessage()]
    assert "queue flaky.example" in record.getMessage()
    assert record.exc_info is not None
    assert "promote failed" in str(record.exc_info[1])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_promotion_that_always_fails_backs_off_and_blocks_no_other_queue(
    strategy: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    broken = Promoter(clock, failing=-1)
    healthy = Promoter(clock)
    before = restarts(task_of(strategy))
    stuck = message()
    others = [message() for _ in range(5)]

    async def main() -> None:
        singleton = SingletonWheel(clock)
        bad = make_queue("broken.example", strategy, clock, broken, singleton)
        good = make_queue("healthy.example", strategy, clock, healthy, singleton)
        start = clock.now()
        bad.insert_delayed(stuck, start + 2)
        for i, msg in enumerate(others):
            good.insert_delayed(msg, start + 10 + 20 * i)
        await asyncio.sleep(120)
        # Two minutes of a promotion that always fails: a few tries, not a spin.
        assert 4 <= broken.calls <= 10, broken.calls
        assert len(bad) == 1  # still held, not lost
        broken.failing = 0  # the bug is fixed (a config refresh, say)
        await asyncio.sleep(40)
        assert len(bad) == 0
        for queue in (bad, good):
            queue.close()
        singleton.close()

    with caplog.at_level(logging.ERROR, logger="kumoq.queue"):
        run_virtual(clock, main)
    assert [m for _, m, _ in broken.promoted] == [stuck.id]
    assert [m for _, m, _ in healthy.promoted] == [m.id for m in others]
    for (_, _, at), i in zip(healthy.promoted, range(5), strict=True):
        assert at - (1_700_000_010.0 + 20 * i) <= 3  # on time, whatever the broken queue does
    failures = broken.calls - 1
    assert restarts(task_of(strategy)) == before + failures
    logged = [r for r in caplog.records if "queue broken.example" in r.getMessage()]
    assert len(logged) == failures


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_poison_message_holds_up_neither_its_batch_nor_its_busy_queue(strategy: str) -> None:
    clock = FakeClock()
    promoter = Promoter(clock)
    before = restarts(task_of(strategy))
    poison = message()
    promoter.poison.add(poison.id)
    due_with_it = [message() for _ in range(3)]
    later = [message() for _ in range(24)]

    async def main() -> None:
        singleton = SingletonWheel(clock)
        queue = make_queue("poisoned.example", strategy, clock, promoter, singleton)
        start = clock.now()
        for msg in [*due_with_it[:2], poison, due_with_it[2]]:
            queue.insert_delayed(msg, start + 2)  # one batch
        for i, msg in enumerate(later):  # a busy queue: a success every 5 s
            queue.insert_delayed(msg, start + 5 + 5 * i)
        await asyncio.sleep(125)
        assert len(queue) == 1  # the poison message, held, not lost
        queue.close()
        singleton.close()

    run_virtual(clock, main)
    promoted = {m: at for _, m, at in promoter.promoted}
    assert set(promoted) == {m.id for m in [*due_with_it, *later]}
    for msg in due_with_it:
        assert promoted[msg.id] - 1_700_000_002.0 <= 3  # not held up by the poison message
    # Its backoff grew although other promotions of its queue succeeded: 1, 2, 4, 8, 16, 30,
    # 30, ... s: 9 tries in two minutes (at 2, 3, 5, 9, 17, 33, 63, 93, 123 s), not one a second.
    failures = restarts(task_of(strategy)) - before
    assert 8 <= failures <= 10, failures


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_maintainer_that_raises_is_restarted(
    strategy: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug in the timer structure itself (the singleton wheel is a TimerWheel too).
    real_pop = TimerWheel.pop
    failures = [1]

    def pop_once_broken(self: TimerWheel[Message], now: float) -> Any:
        if failures[0]:
            failures[0] -= 1
            raise KeyError("corrupt slot")
        return real_pop(self, now)

    clock = FakeClock()
    promoter = Promoter(clock)
    task = "singleton_wheel" if strategy.startswith("Singleton") else "queue_maintainer"
    before = restarts(task)
    msgs = [message() for _ in range(3)]

    async def main() -> None:
        singleton = SingletonWheel(clock)
        config = QueueConfig(strategy=QueueStrategy(strategy), retry_interval=20.0)
        queue = ScheduledQueue(
            "restart.example",
            QueueNameParts("restart.example"),
            config,
            resolved_at=0.0,
            clock=clock,
            promote=promoter,
            singleton=singleton,
        )
        start = clock.now()
        for i, msg in enumerate(msgs):
            queue.insert_delayed(msg, start + 5 + 10 * i)
        await asyncio.sleep(60)
        queue.close()
        singleton.close()

    if strategy != QueueStrategy.SKIP_LIST.value:
        monkeypatch.setattr(TimerWheel, "pop", pop_once_broken)
    else:
        from kumoq.scheduler.skiplist import SkipList

        real_skip_pop = SkipList.pop

        def skip_pop_once_broken(self: SkipList[Message], now: float) -> Any:
            if failures[0]:
                failures[0] -= 1
                raise KeyError("corrupt bucket")
            return real_skip_pop(self, now)

        monkeypatch.setattr(SkipList, "pop", skip_pop_once_broken)
    with caplog.at_level(logging.ERROR, logger="kumoq.queue"):
        run_virtual(clock, main)
    assert [m for _, m, _ in promoter.promoted] == [m.id for m in msgs]
    assert restarts(task) == before + 1
    (record,) = [r for r in caplog.records if "restarting it" in r.getMessage()]
    assert record.exc_info is not None
    if task == "queue_maintainer":
        assert "queue restart.example" in record.getMessage()


# -- the manager's side of the contract: never raise once a message was handed over ----------


class RaisesOnSecondCheck:
    """A throttle backend that fails (a bug, or a shared backend gone) on its second check."""

    def __init__(self) -> None:
        self.local = LocalThrottleBackend()
        self.checks = 0

    def check(self, key: str, spec: ThrottleSpec, now: float, quantity: int = 1) -> ThrottleResult:
        self.checks += 1
        if self.checks == 2:
            raise ConnectionError("throttle backend went away")
        return self.local.check(key, spec, now, quantity)


@dataclass
class Records:
    logged: list[tuple[RecordType, str]] = field(default_factory=list)

    def log(self, type: RecordType, msg: Message, *, response: Response, **fields: Any) -> None:
        self.logged.append((type, msg.id))


class Configs:
    def get_queue_config(self, parts: QueueNameParts) -> QueueConfig:
        return QueueConfig(
            protocol=SmtpProtocol(),
            strategy=QueueStrategy.SKIP_LIST,
            max_message_rate=ThrottleSpec.parse("max_message_rate", "100/s"),
        )


async def settle(until: Callable[[], bool], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if until():
            return
        await asyncio.sleep(0.01)


async def test_a_message_that_fails_mid_batch_is_parked_and_none_is_delivered_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(manager_module, "FAILED_RESOLVE_TTL", 0.05)
    data, meta = (
        SpoolDefinition.from_mapping({"name": n, "path": str(tmp_path / n)})
        for n in ("data", "meta")
    )
    spool = LocalDiskSpool(data, meta)
    await spool.start()
    clock = FakeClock()
    deliverer = ScriptedDeliverer()
    records = Records()
    manager = QueueManager(
        configs=Configs(),
        deliverers={SmtpProtocol: deliverer},
        spool=spool,
        records=records,
        clock=clock,
        throttle=Throttle(RaisesOnSecondCheck()),
    )
    msgs = []
    for _ in range(3):
        msg = message()
        msg.id = new_spool_id(clock.now())
        msg.data = b"Subject: hi\r\n\r\nhello\r\n"
        await spool.store(msg.id, msg.data, json.dumps(msg.to_spool_meta()).encode())
        msg.due = clock.now() + 0.05  # one batch, promoted by the SkipList maintainer
        msgs.append(msg)
    with caplog.at_level(logging.ERROR, logger="kumoq.queue"):
        for msg in msgs:
            manager.insert(msg)
        await settle(lambda: len(deliverer.calls) >= 3)
        await asyncio.sleep(0.3)
    await manager.close(drain_seconds=1)
    await spool.close()
    assert sorted(deliverer.calls) == sorted(m.id for m in msgs)  # each exactly once
    (record,) = [r for r in caplog.records if "promoting it failed" in r.getMessage()]
    assert msgs[1].id in record.getMessage()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_paced_release_that_raises_is_held_again(
    strategy: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Messages held back by max_message_rate wait in the pacing line, released by a timer.
    clock = FakeClock()
    promoter = Promoter(clock, failing=1)
    before = restarts("queue_maintainer")
    msgs = [message() for _ in range(3)]

    async def main() -> None:
        singleton = SingletonWheel(clock)
        queue = make_queue("paced.example", strategy, clock, promoter, singleton)
        for msg in msgs:
            queue.insert_delayed(msg, queue.pace(clock.now() + 0.1, 0.1), pace=0.1)
        await asyncio.sleep(30)
        assert len(queue) == 0
        queue.close()
        singleton.close()

    with caplog.at_level(logging.ERROR, logger="kumoq.queue"):
        run_virtual(clock, main)
    # The first release failed: that message came back after the backoff, the others on time.
    assert [m for _, m, _ in promoter.promoted] == [msgs[1].id, msgs[2].id, msgs[0].id]
    assert restarts("queue_maintainer") == before + 1
    assert any("queue paced.example" in r.getMessage() for r in caplog.records)
