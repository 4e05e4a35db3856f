"""The queue manager asks ``requeue_message`` (the ``RequeuePolicy`` seam) before a requeue.

Real QueueManager, real LocalDisk spool under tmp_path, a ``ScriptedDeliverer`` and a FakeClock;
the policy is a Python ``RequeuePolicy`` that records what it was asked and acts as told. The
same through Lua: tests/unit/test_lua_policy_events.py; end to end:
tests/e2e/test_policy_events.py.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kumoq.clock import FakeClock
from kumoq.config.queue import QueueConfig, SmtpProtocol
from kumoq.config.spool import SpoolDefinition
from kumoq.config.values import ThrottleSpec
from kumoq.errors import PolicyError, RejectError
from kumoq.logs.records import RecordType, Response
from kumoq.message import EnvelopeAddress, Message, QueueNameParts, new_spool_id
from kumoq.scheduler.attempt import Attempt
from kumoq.scheduler.context import InsertReason
from kumoq.scheduler.manager import QueueManager
from kumoq.spool import LocalDiskSpool
from kumoq.testing.faults import ScriptedDeliverer, delivered, transient_failure


class Configs:
    """Every queue delivers by SMTP; routing through ``moved.test`` has a one-hour
    ``max_age``, and ``throttled.test`` a ``max_message_rate`` of one a minute."""

    def get_queue_config(self, parts: QueueNameParts) -> QueueConfig:
        if parts.routing_domain == "moved.test":
            return QueueConfig(protocol=SmtpProtocol(), max_age=3600.0)
        if parts.domain == "throttled.test":
            return QueueConfig(
                protocol=SmtpProtocol(), max_message_rate=ThrottleSpec.parse("r", "1/min")
            )
        return QueueConfig(protocol=SmtpProtocol(), retry_interval=60.0)


@dataclass
class Records:
    logged: list[tuple[RecordType, str, Response, dict[str, Any]]] = field(default_factory=list)

    def log(self, type: RecordType, msg: Message, *, response: Response, **fields: Any) -> None:
        self.logged.append((type, msg.id, response, fields))

    def types(self) -> list[RecordType]:
        return [t for t, *_ in self.logged]


@dataclass
class Policy:
    """A ``RequeuePolicy``: records each call, then runs ``act`` on the message."""

    act: Callable[[Message], None] = lambda msg: None
    asked: list[tuple[str, list[str], bool, float | None, int]] = field(default_factory=list)

    def has_handler(self) -> bool:
        return True

    def requeue_message(
        self,
        msg: Message,
        response: str,
        context: Sequence[str],
        increment_attempts: bool,
        delay: float | None,
    ) -> None:
        self.asked.append((response, list(context), increment_attempts, delay, msg.num_attempts))
        self.act(msg)


@dataclass
class Rig:
    clock: FakeClock
    spool: LocalDiskSpool
    deliverer: ScriptedDeliverer
    records: Records
    policy: Policy
    manager: QueueManager


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    data, meta = (
        SpoolDefinition.from_mapping({"name": n, "path": str(tmp_path / n)})
        for n in ("data", "meta")
    )
    spool = LocalDiskSpool(data, meta)
    await spool.start()
    clock = FakeClock(1_700_000_000.0)
    deliverer = ScriptedDeliverer()
    records = Records()
    policy = Policy()
    manager = QueueManager(
        configs=Configs(),
        deliverers={SmtpProtocol: deliverer},
        spool=spool,
        records=records,
        clock=clock,
        requeue=policy,
    )
    yield Rig(clock, spool, deliverer, records, policy, manager)
    await manager.close(drain_seconds=1)
    await spool.close()


async def stored(rig: Rig, rcpt: str = "user@example.com") -> Message:
    msg = Message(
        id=new_spool_id(rig.clock.now()),
        sender=EnvelopeAddress.parse("sender@example.com"),
        recipients=[EnvelopeAddress.parse(rcpt)],
        data=b"Subject: hi\r\n\r\nhello\r\n",
        # not from the id: new_spool_id never goes back in time, so after a test on the real
        # clock the id's time would be now, not the fake clock's
        created=rig.clock.now(),
    )
    await rig.spool.store(msg.id, msg.data, json.dumps(msg.to_spool_meta()).encode())
    return msg


async def settle(until: Callable[[], bool], seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if until():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def spooled_meta(rig: Rig) -> dict[str, dict[str, Any]]:
    return {i: json.loads(meta) async for i, meta in rig.spool.enumerate()}


async def test_a_transient_failure_asks_first_then_backs_off(rig: Rig) -> None:
    rig.deliverer.script = [transient_failure("greylisted")]
    msg = await stored(rig)
    rig.manager.insert(msg)
    await settle(lambda: msg.due is not None)
    assert rig.policy.asked == [("451 4.0.0 greylisted", ["LoggedTransientFailure"], True, None, 0)]
    assert rig.records.types() == [RecordType.TransientFailure]
    assert msg.num_attempts == 1
    assert msg.due == pytest.approx(rig.clock.now() + 60, abs=3.5)  # retry_interval, jitter


async def test_a_new_queue_name_moves_the_message_due_now_with_one_more_attempt(rig: Rig) -> None:
    rig.deliverer.script = [transient_failure("greylisted"), delivered()]
    rig.policy.act = lambda msg: msg.meta.update(routing_domain="moved.test")
    msg = await stored(rig)
    rig.manager.insert(msg)
    await settle(lambda: RecordType.Delivery in rig.records.types())
    assert rig.deliverer.calls == [msg.id, msg.id]  # attempted again at once, no backoff
    assert msg.num_attempts == 1
    assert msg.queue_name() == "example.com!moved.test"
    assert rig.manager.get("example.com!moved.test") is not None


async def test_the_move_is_stored_in_the_spool(rig: Rig) -> None:
    rig.deliverer.script = [transient_failure(), transient_failure()]
    rig.policy.act = lambda msg: msg.meta.update(routing_domain="moved.test")
    msg = await stored(rig)
    rig.manager.insert(msg)
    await settle(lambda: len(rig.deliverer.calls) == 2)
    meta: dict[str, Any] = {}
    for _ in range(200):  # the backoff after the second failure is stored last
        (meta,) = (await spooled_meta(rig)).values()
        if meta["num_attempts"] == 2:  # the move, then that backoff
            break
        await asyncio.sleep(0.01)
    assert meta["meta"]["routing_domain"] == "moved.test"
    assert meta["num_attempts"] == 2


async def test_a_move_past_the_new_queues_max_age_expires(rig: Rig) -> None:
    rig.deliverer.script = [transient_failure()]
    rig.policy.act = lambda msg: msg.meta.update(routing_domain="moved.test")
    msg = await stored(rig)
    rig.clock.advance(7200)  # older than moved.test's max_age of one hour
    rig.manager.insert(msg)
    await settle(lambda: RecordType.Expiration in rig.records.types())
    _, _, response, fields = rig.records.logged[-1]
    assert (response.code, fields["site"]) == (551, "localhost")
    assert re.fullmatch(r"Next delivery time PT7\d\d\d(\.\d+)?S > PT3600S", response.content)
    await asyncio.sleep(0.05)
    assert await spooled_meta(rig) == {}


def reject(code: int, text: str) -> Callable[[Message], None]:
    def act(msg: Message) -> None:
        raise RejectError(code, text)

    return act


async def test_kumo_reject_bounces_with_its_code_and_text(rig: Rig) -> None:
    rig.deliverer.script = [transient_failure()]
    rig.policy.act = reject(451, "4.4.7 gave up")  # a 4xx bounces too, as in KumoMTA
    msg = await stored(rig)
    rig.manager.insert(msg)
    await settle(lambda: RecordType.Bounce in rig.records.types())
    assert rig.records.types() == [RecordType.TransientFailure, RecordType.Bounce]
    assert rig.records.logged[-1][2] == Response(451, None, "4.4.7 gave up", None)
    await asyncio.sleep(0.05)
    assert await spooled_meta(rig) == {}


async def test_a_policy_error_keeps_the_message_in_its_queue(rig: Rig) -> None:
    rig.deliverer.script = [transient_failure()]

    def broken(msg: Message) -> None:
        msg.meta["queue"] = "elsewhere"
        raise PolicyError("init.lua:3: oops", location="init.lua:3")

    rig.policy.act = broken
    msg = await stored(rig)
    rig.manager.insert(msg)
    await settle(lambda: msg.due is not None)
    assert "queue" not in msg.meta
    assert msg.num_attempts == 1
    assert rig.manager.get("elsewhere") is None


async def test_a_throttle_asks_without_an_increment_and_with_the_delay(rig: Rig) -> None:
    first, second = await stored(rig, "a@throttled.test"), await stored(rig, "b@throttled.test")
    rig.manager.insert(first)
    rig.manager.insert(second)  # one a minute: the second is held
    await settle(lambda: len(rig.policy.asked) == 1)
    response, context, increment, delay, attempts = rig.policy.asked[0]
    assert response.startswith("451 4.4.4 KumoMTA internal: throttled.test throttled message rate")
    assert context == ["Received", "MessageRateThrottle"]
    assert (increment, attempts) == (False, 0)
    assert delay == pytest.approx(60, abs=1)


@pytest.mark.parametrize(
    ("reason", "asked"),
    [(InsertReason.ReadyQueueWasFull, False), (InsertReason.ConnectionRateThrottle, True)],
)
async def test_a_ready_queue_throttle_asks_but_a_full_one_does_not(rig: Rig, reason, asked) -> None:
    held = Attempt(
        RecordType.Delayed,
        Response(400, None, "throttled", None),
        requeue_delay=30.0,
        reason=reason,
    )
    rig.deliverer.script = [held]
    msg = await stored(rig)
    rig.manager.insert(msg)
    await settle(lambda: msg.due is not None)
    assert rig.policy.asked == (
        [("400 throttled", [reason.value], False, 30.0, 0)] if asked else []
    )
