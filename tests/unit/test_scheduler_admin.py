"""The queue manager under admin rules, dead letters and listing: a real LocalDisk spool, a
scripted deliverer behind the Deliverer seam, a fake clock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kumoq.clock import FakeClock
from kumoq.config.queue import QueueConfig, QueueStrategy, SmtpProtocol
from kumoq.config.spool import SpoolDefinition
from kumoq.config.values import ThrottleSpec
from kumoq.logs.records import RecordType, Response
from kumoq.message import EnvelopeAddress, Message, QueueNameParts, new_spool_id
from kumoq.metrics import DELAYED_DUE_TO_MESSAGE_RATE_THROTTLE
from kumoq.scheduler.admin_rules import AdminCriteria
from kumoq.scheduler.attempt import Attempt
from kumoq.scheduler.dead_letters import dead_letter_block
from kumoq.scheduler.manager import QueueManager
from kumoq.spool.local_disk import LocalDiskSpool
from kumoq.spool_record import message_from_spool_bytes
from kumoq.testing.faults import ScriptedDeliverer, transient_failure


@dataclass
class Configs:
    config: QueueConfig = field(default_factory=lambda: QueueConfig(protocol=SmtpProtocol()))

    def get_queue_config(self, parts: QueueNameParts) -> QueueConfig:
        return self.config


@dataclass
class Records:
    logged: list[tuple[RecordType, str, Response, dict[str, Any]]] = field(default_factory=list)

    def log(self, type: RecordType, msg: Message, *, response: Response, **fields: Any) -> None:
        self.logged.append((type, msg.id, response, fields))

    def types(self, msg_id: str | None = None) -> list[RecordType]:
        return [t for t, i, _, _ in self.logged if msg_id is None or i == msg_id]


@dataclass
class Rig:
    clock: FakeClock
    spool: LocalDiskSpool
    deliverer: ScriptedDeliverer
    records: Records
    configs: Configs
    manager: QueueManager


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    data, meta = (
        SpoolDefinition.from_mapping({"name": n, "path": str(tmp_path / n)})
        for n in ("data", "meta")
    )
    spool = LocalDiskSpool(data, meta)
    await spool.start()
    clock = FakeClock()
    deliverer = ScriptedDeliverer()
    records = Records()
    configs = Configs()
    manager = QueueManager(
        configs=configs, deliverers={SmtpProtocol: deliverer}, spool=spool, records=records,
        clock=clock,
    )  # fmt: skip
    yield Rig(clock, spool, deliverer, records, configs, manager)
    await manager.close(drain_seconds=1)
    await spool.close()


async def stored(rig: Rig, rcpt: str = "user@example.com", **meta: Any) -> Message:
    msg = Message(
        id=new_spool_id(rig.clock.now()),
        sender=EnvelopeAddress.parse("sender@example.com"),
        recipients=[EnvelopeAddress.parse(rcpt)],
        meta=dict(meta),
        data=b"Subject: hi\r\n\r\nhello\r\n",
    )
    await rig.spool.store(msg.id, msg.data, json.dumps(msg.to_spool_meta()).encode())
    return msg


async def settle(until: Callable[[], bool], seconds: float = 3.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if until():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def spooled_ids(rig: Rig) -> set[str]:
    return {msg_id async for msg_id, _ in rig.spool.enumerate()}


async def settle_spool(rig: Rig, expected: set[str], seconds: float = 3.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if await spooled_ids(rig) == expected:
            return
        await asyncio.sleep(0.01)
    assert await spooled_ids(rig) == expected


async def test_a_bounce_rule_bounces_messages_that_arrive_later(rig: Rig) -> None:
    rule = rig.manager.rules.add_bounce(
        AdminCriteria(domain="example.com"), "list was bought", now=rig.clock.now()
    )
    bounced, kept = await stored(rig), await stored(rig, "user@other.com")
    rig.manager.insert(bounced)
    rig.manager.insert(kept)
    await settle(lambda: RecordType.Delivery in rig.records.types(kept.id))
    await settle(lambda: bounced.id not in rig.deliverer.calls and len(rig.records.logged) == 2)
    kind, _, response, fields = next(r for r in rig.records.logged if r[1] == bounced.id)
    assert kind is RecordType.AdminBounce
    assert (response.code, response.enhanced_code) == (551, (5, 7, 1))
    assert response.content == "Administrator bounced with reason: list was bought"
    assert fields == {"site": "localhost"}
    assert rig.deliverer.calls == [kept.id]
    await settle_spool(rig, set())  # the bounce's remove runs in a task of its own
    assert rule.bounced == {"example.com": 1}


async def test_a_bounce_rule_suppressing_logging_writes_no_record(rig: Rig) -> None:
    rig.manager.rules.add_bounce(
        AdminCriteria(), "quiet", now=rig.clock.now(), suppress_logging=True
    )
    msg = await stored(rig)
    rig.manager.insert(msg)
    await asyncio.sleep(0.1)
    assert rig.records.logged == []
    await settle_spool(rig, set())


async def test_a_suspended_queue_transfails_due_messages_on_the_normal_backoff(rig: Rig) -> None:
    rule = rig.manager.rules.add_suspend(
        AdminCriteria(tenant="t"), "maintenance", now=rig.clock.now()
    )
    msg = await stored(rig, tenant="t")
    rig.manager.insert(msg)
    await settle(lambda: rig.records.types(msg.id) == [RecordType.TransientFailure])
    _, _, response, fields = rig.records.logged[0]
    assert response.one_line() == (
        "451 4.4.4 KumoMTA internal: scheduled queue is suspended: maintenance"
    )
    assert fields == {"site": "t@example.com"}
    assert rig.deliverer.calls == []
    await settle(lambda: (found := rig.manager.find(msg.id)) is not None and found[1] is not None)
    assert msg.num_attempts == 1
    assert msg.state is not None
    assert msg.state[0] == "scheduled"
    assert msg.last_response is not None
    assert "suspended" in msg.last_response
    # persisted with the schedule: a restart keeps the attempt and the response
    assert rig.manager.rules.cancel_suspend(rule.id)


async def test_dead_letters_keep_requeue_and_purge(rig: Rig) -> None:
    rig.configs.config = QueueConfig(protocol=SmtpProtocol(), dead_letter_retention=3600.0)
    bounce = Response(550, (5, 1, 1), "no such user", None)
    rig.deliverer.script = [Attempt(RecordType.Bounce, bounce)]
    msg = await stored(rig)
    rig.manager.insert(msg)
    dead = rig.manager.dispositions.dead_letters
    await settle(lambda: len(dead) == 1)
    assert rig.records.types(msg.id) == [RecordType.Bounce, RecordType.DeadLetter]
    assert rig.records.logged[-1][2].content.startswith("kept as a dead letter until ")
    # still spooled, with the dead_letter block a restart reads back
    raw = dict([item async for item in rig.spool.enumerate()])[msg.id]
    block = dead_letter_block(json.loads(raw))
    assert block is not None
    assert block["record_type"] == "Bounce"
    assert block["code"] == 550
    entries, cursor = dead.page(None, None, 10)
    assert [e.msg.id for e in entries] == [msg.id]
    assert cursor is None

    rig.deliverer.script = []  # the next attempt delivers
    assert await dead.requeue([msg.id]) == 1
    await settle(lambda: RecordType.Delivery in rig.records.types(msg.id))
    assert msg.num_attempts == 0  # reset by the requeue (a Delivery does not count up)
    await settle(lambda: not rig.manager.find(msg.id))
    assert len(dead) == 0
    await settle_spool(rig, set())

    rig.deliverer.script = [Attempt(RecordType.Bounce, bounce)]
    other = await stored(rig)
    rig.manager.insert(other)
    await settle(lambda: len(dead) == 1)
    assert await dead.purge(dead.select(None, None)) == 1
    assert rig.records.logged[-1][0] is RecordType.DeadLetter
    assert rig.records.logged[-1][2].content == "purged by the operator"
    await settle_spool(rig, set())


async def test_a_dead_letter_is_purged_after_its_retention(rig: Rig) -> None:
    rig.configs.config = QueueConfig(protocol=SmtpProtocol(), dead_letter_retention=0.2)
    rig.deliverer.script = [Attempt(RecordType.Bounce, Response(550, None, "no", None))]
    msg = await stored(rig)
    rig.manager.insert(msg)
    dead = rig.manager.dispositions.dead_letters
    await settle(lambda: len(dead) == 1)
    rig.clock.advance(1.0)  # the store's timer reads the clock when it fires
    purged = "purged: its retention has passed"
    await settle(lambda: rig.records.logged[-1][2].content == purged)
    assert len(dead) == 0
    await settle_spool(rig, set())


async def test_without_retention_a_bounce_is_removed_as_before(rig: Rig) -> None:
    rig.deliverer.script = [Attempt(RecordType.Bounce, Response(550, None, "no", None))]
    msg = await stored(rig)
    rig.manager.insert(msg)
    await settle(lambda: rig.records.types(msg.id) == [RecordType.Bounce])
    await asyncio.sleep(0.05)
    assert len(rig.manager.dispositions.dead_letters) == 0
    await settle_spool(rig, set())


@pytest.mark.parametrize(
    "strategy",
    [QueueStrategy.TIMER_WHEEL, QueueStrategy.SKIP_LIST, QueueStrategy.SINGLETON_TIMER_WHEEL],
)
async def test_paging_lists_every_waiting_message_once(rig: Rig, strategy: QueueStrategy) -> None:
    rig.configs.config = QueueConfig(protocol=SmtpProtocol(), strategy=strategy)
    ids = []
    for i in range(25):
        msg = await stored(rig)
        msg.due = rig.clock.now() + 600 + i
        rig.manager.insert(msg)
        ids.append(msg.id)
    other = await stored(rig, "x@other.com")  # another queue in the same shared wheel
    other.due = rig.clock.now() + 601
    rig.manager.insert(other)
    queue = rig.manager.get("example.com")
    assert queue is not None
    assert len(queue) == 25
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page, cursor = queue.page(cursor, 7)
        seen += [m.id for m in page]
        if cursor is None:
            break
    assert seen == ids  # due order, each once, none of the other queue's
    with pytest.raises(ValueError, match="not a cursor"):
        queue.page("zz", 7)
    found = rig.manager.find(ids[3])
    assert found is not None
    assert found[1] is queue
    assert found[0].state is not None
    assert found[0].state[0] == "scheduled"
    taken = queue.take_all()
    assert sorted(m.id for m in taken) == sorted(ids)
    assert len(queue) == 0
    other_queue = rig.manager.get("other.com")
    assert other_queue is not None
    assert len(other_queue) == 1


async def test_paging_includes_the_pacing_line(rig: Rig) -> None:
    rate = ThrottleSpec.parse("max_message_rate", "1/h")
    rig.configs.config = QueueConfig(protocol=SmtpProtocol(), max_message_rate=rate)
    rig.deliverer.hold = True
    msgs = [await stored(rig, "user@paced.example") for _ in range(4)]
    before = DELAYED_DUE_TO_MESSAGE_RATE_THROTTLE.value("paced.example")
    for msg in msgs:
        rig.manager.insert(msg)
    queue = rig.manager.get("paced.example")
    assert queue is not None
    await settle(lambda: len(queue) == 3)  # one passed the throttle; three wait in line
    assert DELAYED_DUE_TO_MESSAGE_RATE_THROTTLE.value("paced.example") == before + 3
    page, cursor = queue.page(None, 2)
    page2, end = queue.page(cursor, 2)
    assert end is None
    assert {m.id for m in page + page2} == {m.id for m in msgs[1:]}
    assert all(m.state is not None and m.state[0] == "rate_throttled" for m in page + page2)
    assert queue.is_paced(msgs[1].id)
    rig.deliverer.release()


async def test_find_sees_a_message_in_flight(rig: Rig) -> None:
    rig.deliverer.hold = True
    msg = await stored(rig)
    rig.manager.insert(msg)
    await settle(lambda: rig.deliverer.calls == [msg.id])
    found = rig.manager.find(msg.id)
    assert found is not None
    assert found[0] is msg
    assert msg.state == ("in_flight", "", None)
    rig.deliverer.release()
    await settle(lambda: rig.manager.find(msg.id) is None)


async def test_a_transient_failure_is_remembered_as_the_last_response(rig: Rig) -> None:
    rig.deliverer.script = [transient_failure("mailbox busy")]
    msg = await stored(rig)
    rig.manager.insert(msg)
    await settle(lambda: msg.num_attempts == 1 and msg.last_response is not None)
    assert msg.last_response == "451 4.0.0 mailbox busy"
    raw = dict([item async for item in rig.spool.enumerate()])[msg.id]
    assert json.loads(raw)["last_response"] == "451 4.0.0 mailbox busy"
    restored = message_from_spool_bytes(msg.id, raw)
    assert restored.last_response == "451 4.0.0 mailbox busy"
