"""The queue manager's delivery and remove paths when the spool or the deliverer fails.

Real QueueManager, real LocalDisk spool under tmp_path; the faults come through the seams:
``FaultySpool`` (kumoq.testing.faults) around the spool, a ``ScriptedDeliverer``, a FakeClock.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import kumoq.scheduler.manager as manager_module
from kumoq.clock import FakeClock
from kumoq.config.queue import QueueConfig, SmtpProtocol
from kumoq.config.spool import SpoolDefinition
from kumoq.logs.records import RecordType, Response
from kumoq.message import EnvelopeAddress, Message, QueueNameParts, new_spool_id
from kumoq.scheduler.manager import QueueManager
from kumoq.spool import LocalDiskSpool
from kumoq.testing.faults import FaultySpool, ScriptedDeliverer


class Configs:
    def get_queue_config(self, parts: QueueNameParts) -> QueueConfig:
        return QueueConfig(protocol=SmtpProtocol())


@dataclass
class Records:
    logged: list[tuple[RecordType, str]]

    def log(self, type: RecordType, msg: Message, *, response: Response, **fields: Any) -> None:
        self.logged.append((type, msg.id))


@dataclass
class Rig:
    clock: FakeClock
    spool: FaultySpool
    deliverer: ScriptedDeliverer
    records: Records
    manager: QueueManager


@pytest.fixture
async def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rig]:
    monkeypatch.setattr(manager_module, "FAILED_RESOLVE_TTL", 0.05)  # a park comes back soon
    data, meta = (
        SpoolDefinition.from_mapping({"name": n, "path": str(tmp_path / n)})
        for n in ("data", "meta")
    )
    spool = FaultySpool(LocalDiskSpool(data, meta))
    await spool.start()
    clock = FakeClock()
    deliverer = ScriptedDeliverer()
    records = Records([])
    manager = QueueManager(
        configs=Configs(),
        deliverers={SmtpProtocol: deliverer},
        spool=spool,
        records=records,
        clock=clock,
    )
    yield Rig(clock, spool, deliverer, records, manager)
    await manager.close(drain_seconds=1)
    await spool.close()


async def stored_message(rig: Rig, *, with_data: bool = True) -> Message:
    msg = Message(
        id=new_spool_id(rig.clock.now()),
        sender=EnvelopeAddress.parse("sender@example.com"),
        recipients=[EnvelopeAddress.parse("user@example.com")],
        data=b"Subject: hi\r\n\r\nhello\r\n",
    )
    meta = json.dumps(msg.to_spool_meta()).encode()
    await rig.spool.store(msg.id, msg.data if with_data else None, meta)
    msg.data = None  # as after a restart: the body is loaded from the spool when due
    return msg


async def settle(until: Callable[[], bool], seconds: float = 2.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if until():
            return
        await asyncio.sleep(0.01)


async def test_a_delivered_message_is_not_delivered_again_when_its_remove_fails(rig: Rig) -> None:
    rig.spool.fail("remove")  # every remove raises, as a spool used to on a full disk
    msg = await stored_message(rig)
    rig.manager.insert(msg)
    await settle(lambda: rig.spool.calls["remove"] > 0)
    await asyncio.sleep(0.3)  # six times the (shortened) park delay
    assert rig.deliverer.calls == [msg.id]
    assert rig.records.logged == [(RecordType.Delivery, msg.id)]


async def test_a_meta_without_data_is_removed_once_not_retried_forever(rig: Rig) -> None:
    msg = await stored_message(rig, with_data=False)
    rig.manager.insert(msg)
    await settle(lambda: rig.spool.calls["remove"] > 0)
    await asyncio.sleep(0.3)
    assert rig.spool.calls["load_data"] == 1
    assert rig.deliverer.calls == []
    assert [m async for m in rig.spool.enumerate()] == []


class FailingRecords(Records):
    """A record sink that cannot write (a log writer closing, an odd field value)."""

    def log(self, type: RecordType, msg: Message, *, response: Response, **fields: Any) -> None:
        super().log(type, msg, response=response, **fields)
        raise RuntimeError("the log writer is closing")


async def test_a_record_that_cannot_be_written_does_not_send_the_message_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manager_module, "FAILED_RESOLVE_TTL", 0.05)
    data, meta = (
        SpoolDefinition.from_mapping({"name": n, "path": str(tmp_path / n)})
        for n in ("data", "meta")
    )
    spool = FaultySpool(LocalDiskSpool(data, meta))
    await spool.start()
    clock = FakeClock()
    deliverer = ScriptedDeliverer()
    records = FailingRecords([])
    manager = QueueManager(
        configs=Configs(), deliverers={SmtpProtocol: deliverer}, spool=spool, records=records,
        clock=clock,
    )  # fmt: skip
    rig = Rig(clock, spool, deliverer, records, manager)
    msg = await stored_message(rig)
    manager.insert(msg)
    await settle(lambda: spool.calls["remove"] > 0)
    await asyncio.sleep(0.3)  # six times the (shortened) park delay
    assert deliverer.calls == [msg.id]
    assert [m async for m in spool.enumerate()] == []
    await manager.close(drain_seconds=1)
    await spool.close()
