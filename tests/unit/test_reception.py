"""Reception.data is all or nothing, whatever cancels it and whenever (issue 9, defect 2).

For every DATA, either the reply is 250 and every message is spooled and queued, or the reply
is 4xx/5xx (or the call was cancelled: the server answers 451 4.4.5, or drops the connection at
shutdown) and nothing of the transaction stays in the spool, is queued or got a Reception record.

Real Reception and QueueManager; behind their seams: an in-memory spool whose stores land like
the group-commit writer's (a cancelled await does not stop a write in flight), a policy whose
``smtp_server_message_received`` can be held, a ScriptedDeliverer that holds every delivery
(so a queued message stays visible), a FakeClock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from kumoq.clock import FakeClock
from kumoq.config.listener_domain import ListenerDomain
from kumoq.config.queue import QueueConfig, SmtpProtocol
from kumoq.errors import SpoolError
from kumoq.logs.records import RecordType, Response
from kumoq.message import EnvelopeAddress, Message, QueueNameParts
from kumoq.reception import Reception
from kumoq.scheduler.manager import QueueManager
from kumoq.smtp.replies import Reply
from kumoq.spool.base import Payload
from kumoq.testing.faults import FaultySpool, ScriptedDeliverer

CONN = {"received_from": "192.0.2.1", "received_via": "127.0.0.1:25", "ehlo_domain": "c.test"}
SENDER = EnvelopeAddress.parse("sender@example.com")
BODY = b"Subject: hi\r\n\r\nhello\r\n"


class MemorySpool:
    """An in-memory ``Spool`` whose stores behave like those of the group-commit writer.

    A store is submitted at once and lands ``latency`` loop turns later or, while ``hold`` is
    set, at ``release()``, whether or not its caller still waits for it. Store calls numbered
    (from 1) in ``fail_at_call`` raise at once; those in ``fail_on_landing`` fail as they land.
    A remove applies at once, so it overtakes a store still in flight."""

    def __init__(self, *, latency: int = 1, hold: bool = False) -> None:
        self.stored: dict[str, bytes] = {}
        self.latency = latency
        self.hold = hold
        self.fail_at_call: set[int] = set()
        self.fail_on_landing: set[int] = set()
        self.store_calls = 0
        self.in_flight = 0
        self.removes: list[str] = []
        self._held: list[Callable[[], None]] = []

    async def start(self) -> None:
        pass

    async def store(self, msg_id: str, data: Payload | None, meta: bytes) -> None:
        self.store_calls += 1
        number = self.store_calls
        if number in self.fail_at_call:
            raise SpoolError(f"injected failure of store {number}")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self.in_flight += 1

        def land() -> None:
            self.in_flight -= 1
            if number in self.fail_on_landing:
                if not done.done():
                    done.set_exception(SpoolError(f"injected failure of store {number}"))
                return
            self.stored[msg_id] = meta
            if not done.done():
                done.set_result(None)

        if self.hold:
            self._held.append(land)
        else:
            _after_turns(loop, self.latency, land)
        await done

    def release(self) -> None:
        """Land every held store, and stop holding."""
        self.hold = False
        held, self._held = self._held, []
        for land in held:
            land()

    async def store_many(self, items: Sequence[tuple[str, Payload | None, bytes]]) -> None:
        await asyncio.gather(*(self.store(*item) for item in items))

    async def load_data(self, msg_id: str) -> bytes:
        raise SpoolError("not kept")

    async def remove(self, msg_id: str) -> None:
        self.removes.append(msg_id)
        self.stored.pop(msg_id, None)

    async def enumerate(self) -> AsyncIterator[tuple[str, bytes]]:
        for item in list(self.stored.items()):
            yield item

    async def quarantine(self, msg_id: str, reason: str) -> None:
        self.stored.pop(msg_id, None)

    async def close(self) -> None:
        pass


def _after_turns(loop: asyncio.AbstractEventLoop, turns: int, fn: Callable[[], None]) -> None:
    if turns <= 1:
        loop.call_soon(fn)
    else:
        loop.call_soon(_after_turns, loop, turns - 1, fn)


@dataclass
class Events:
    """The policy: ``smtp_server_message_received`` takes ``turns`` loop turns, then waits
    for ``gate`` when one is set."""

    turns: int = 0
    gate: asyncio.Event | None = None
    seen: list[str] = field(default_factory=list)

    async def smtp_server_ehlo(
        self, domain: str, conn_meta: dict[str, Any], extensions: list[str]
    ) -> list[str] | None:
        return None

    async def smtp_server_mail_from(
        self, sender: EnvelopeAddress, conn_meta: dict[str, Any]
    ) -> None:
        return None

    async def smtp_server_rcpt_to(
        self, recipient: EnvelopeAddress, conn_meta: dict[str, Any]
    ) -> None:
        return None

    async def get_listener_domain(
        self, domain: str, listener: str, conn_meta: dict[str, Any]
    ) -> ListenerDomain | None:
        return None

    async def smtp_server_data(self, msg: Message, conn_meta: dict[str, Any]) -> None:
        return None

    async def smtp_server_message_received(self, msg: Message, conn_meta: dict[str, Any]) -> None:
        self.seen.append(msg.id)
        for _ in range(self.turns):
            await asyncio.sleep(0)
        if self.gate is not None:
            await self.gate.wait()


@dataclass
class Records:
    logged: list[tuple[RecordType, str]] = field(default_factory=list)

    def log(self, type: RecordType, msg: Message, *, response: Response, **fields: Any) -> None:
        self.logged.append((type, msg.id))

    def log_rejection(self, conn_meta: dict[str, Any], command: str, response: Response) -> None:
        pass

    def ids(self, type: RecordType) -> set[str]:
        return {msg_id for t, msg_id in self.logged if t is type}


class Configs:
    def get_queue_config(self, parts: QueueNameParts) -> QueueConfig:
        return QueueConfig(protocol=SmtpProtocol())


@dataclass
class Rig:
    spool: MemorySpool
    events: Events
    records: Records
    deliverer: ScriptedDeliverer
    manager: QueueManager
    reception: Reception

    def start(self, recipients: int = 3) -> asyncio.Task[Reply]:
        rcpts = [EnvelopeAddress.parse(f"r{i}@example.com") for i in range(recipients)]
        return asyncio.ensure_future(self.reception.data(dict(CONN), SENDER, rcpts, BODY))


def _rig(spool: Any, memory: MemorySpool) -> tuple[Rig, QueueManager]:
    clock = FakeClock()
    events, records = Events(), Records()
    deliverer = ScriptedDeliverer(hold=True)  # a queued message stays in flight, visible
    manager = QueueManager(
        configs=Configs(),
        deliverers={SmtpProtocol: deliverer},
        spool=spool,
        records=records,
        clock=clock,
    )
    reception = Reception(
        events=events,
        spool=spool,
        queues=manager,
        records=records,
        clock=clock,
        hostname="mx.test",
    )
    return Rig(memory, events, records, deliverer, manager, reception), manager


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    memory = MemorySpool()
    made, manager = _rig(memory, memory)
    yield made
    await manager.close(drain_seconds=0)


async def turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def outcome(task: asyncio.Task[Reply]) -> Reply | BaseException:
    try:
        return await task
    except BaseException as exc:  # CancelledError too: that is an outcome here
        return exc


async def assert_all_or_nothing(
    rig: Rig, result: Reply | BaseException, recipients: int = 3
) -> None:
    """The invariant, once every write that was in flight has landed."""
    rig.spool.release()
    await turns(10)
    assert rig.spool.in_flight == 0
    stored = set(rig.spool.stored)
    queued = set(rig.deliverer.calls)
    received = rig.records.ids(RecordType.Reception)
    if isinstance(result, Reply) and result.code == 250:
        ids = set(result.text.partition("=")[2].split())
        assert len(ids) == recipients
        assert stored == ids, "a message answered 250 is not spooled"
        assert queued == ids, "a message answered 250 is not queued"
        assert received == ids
    else:
        if not isinstance(result, asyncio.CancelledError):
            assert isinstance(result, Reply)
            assert 400 <= result.code < 600, result
        assert stored == set(), f"a transaction answered {result!r} left messages spooled"
        assert queued == set()
        assert received == set()


async def test_a_transaction_is_spooled_queued_and_answered_250(rig: Rig) -> None:
    result = await outcome(rig.start())
    assert isinstance(result, Reply)
    assert result.code == 250
    assert result.text.startswith("OK ids=")
    await assert_all_or_nothing(rig, result)


async def test_cancelled_while_the_policy_runs_stores_nothing(rig: Rig) -> None:
    rig.events.gate = asyncio.Event()  # the policy is still running
    task = rig.start()
    await until(lambda: len(rig.events.seen) == 1)
    task.cancel()
    result = await outcome(task)
    assert isinstance(result, asyncio.CancelledError)
    assert rig.spool.store_calls == 0
    await assert_all_or_nothing(rig, result)


@pytest.mark.parametrize("recipients", [1, 3])
async def test_cancelled_while_the_stores_are_in_flight_takes_them_back_out(
    rig: Rig, recipients: int
) -> None:
    rig.spool.hold = True
    task = rig.start(recipients)
    await until(lambda: rig.spool.in_flight == recipients)
    task.cancel()  # data_processing_timeout
    await turns(5)
    assert not task.done(), "answered while its writes could still land"
    rig.spool.release()
    result = await outcome(task)
    assert isinstance(result, asyncio.CancelledError)
    assert len(rig.spool.removes) == recipients
    await assert_all_or_nothing(rig, result, recipients)


async def test_cancelled_after_the_stores_landed_but_before_the_insert(rig: Rig) -> None:
    rig.spool.hold = True
    task = rig.start()
    await until(lambda: rig.spool.in_flight == 3)
    rig.spool.release()  # every store is durable; the task has not resumed yet
    task.cancel()
    result = await outcome(task)
    assert isinstance(result, asyncio.CancelledError)
    await assert_all_or_nothing(rig, result)


async def test_a_second_cancellation_during_the_unwind_does_not_cut_it_short(rig: Rig) -> None:
    rig.spool.hold = True
    task = rig.start()
    await until(lambda: rig.spool.in_flight == 3)
    task.cancel()  # data_processing_timeout
    await turns(3)
    task.cancel()  # then the shutdown drain gives up on the connection
    await turns(3)
    assert not task.done()
    rig.spool.release()
    result = await outcome(task)
    assert isinstance(result, asyncio.CancelledError)
    await assert_all_or_nothing(rig, result)


async def test_a_store_failing_for_the_second_of_three_recipients(rig: Rig) -> None:
    rig.spool.hold = True
    rig.spool.fail_at_call = {2}  # fails at once, while the first and third are in flight
    task = rig.start()
    await until(lambda: rig.spool.in_flight == 2)
    await turns(5)
    rig.spool.release()
    result = await outcome(task)
    assert isinstance(result, Reply)
    assert (result.code, result.enhanced) == (451, "4.3.0")
    await assert_all_or_nothing(rig, result)


async def test_a_store_failing_as_it_lands_for_the_second_of_three(rig: Rig) -> None:
    rig.spool.fail_on_landing = {2}
    result = await outcome(rig.start())
    assert isinstance(result, Reply)
    assert result.code == 451
    await assert_all_or_nothing(rig, result)


async def test_a_store_failure_then_a_cancellation_during_the_unwind(rig: Rig) -> None:
    rig.spool.hold = True
    rig.spool.fail_at_call = {1}
    task = rig.start()
    await until(lambda: rig.spool.in_flight == 2)
    await turns(3)
    task.cancel()
    await turns(3)
    assert not task.done()
    rig.spool.release()
    await assert_all_or_nothing(rig, await outcome(task))


@pytest.mark.parametrize("recipients", [1, 3])
@pytest.mark.parametrize("second_cancel", [False, True])
@pytest.mark.parametrize("cancel_after", range(20))
async def test_a_cancellation_at_any_loop_turn_leaves_all_or_nothing(
    rig: Rig, cancel_after: int, second_cancel: bool, recipients: int
) -> None:
    """The policy takes 2 turns per message, each store 3 turns: the sweep cancels inside
    the policy, during the stores, as they land, and after the 250 (from turn 17)."""
    rig.events.turns = 2
    rig.spool.latency = 3
    task = rig.start(recipients)
    await turns(cancel_after)
    task.cancel()
    if second_cancel:
        await turns(2)
        task.cancel()
    await assert_all_or_nothing(rig, await outcome(task), recipients)


async def test_every_store_failing_answers_451_and_logs_nothing(caplog: Any) -> None:
    memory = MemorySpool()
    faulty = FaultySpool(memory)
    faulty.fail("store")  # a full disk
    made, manager = _rig(faulty, memory)
    try:
        result = await outcome(made.start())
        assert isinstance(result, Reply)
        assert result.code == 451
        assert "spool write failed" in caplog.text
        await assert_all_or_nothing(made, result)
        assert made.records.logged == []
    finally:
        await manager.close(drain_seconds=0)


async def test_a_remove_that_fails_during_the_unwind_is_logged(caplog: Any) -> None:
    memory = MemorySpool()
    faulty = FaultySpool(memory)
    faulty.fail("remove")
    memory.fail_on_landing = {3}
    made, manager = _rig(faulty, memory)
    try:
        result = await outcome(made.start())
        assert isinstance(result, Reply)
        assert result.code == 451
        assert "it will be delivered after the next start" in caplog.text
    finally:
        await manager.close(drain_seconds=0)


async def test_an_insert_that_raises_is_unwound_with_a_bounce(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert = rig.manager.insert
    calls: list[str] = []

    def failing_insert(msg: Message, context: Any = None) -> None:
        calls.append(msg.id)
        if len(calls) == 2:
            raise RuntimeError("a bug in the queue manager")
        insert(msg, context)

    monkeypatch.setattr(rig.manager, "insert", failing_insert)
    result = await outcome(rig.start())
    assert isinstance(result, Reply)
    assert result.code == 250
    assert result.text.startswith("PARTIAL ids=")
    await turns(5)
    assert rig.records.ids(RecordType.Bounce) == {calls[1]}
    assert set(rig.spool.stored) == set(rig.deliverer.calls) == {calls[0], calls[2]}


async def test_a_reception_record_that_cannot_be_written_still_queues_every_message() -> None:
    """Past the commit point a failing record writer stops nothing: every message is queued
    and the client gets 250 (a 421 there made the client send the queued ones again)."""

    class FailingRecords(Records):
        def log(self, type: RecordType, msg: Message, *, response: Response, **fields: Any) -> None:
            super().log(type, msg, response=response, **fields)
            raise RuntimeError("the log writer is closing")

    memory = MemorySpool()
    made, manager = _rig(memory, memory)
    made.records = FailingRecords()
    made.reception = Reception(
        events=made.events, spool=memory, queues=manager, records=made.records,
        clock=FakeClock(), hostname="mx.test",
    )  # fmt: skip
    result = await outcome(made.start())
    await turns(10)
    assert isinstance(result, Reply)
    assert result.code == 250
    assert len(set(made.deliverer.calls)) == 3
    await manager.close(drain_seconds=0)
