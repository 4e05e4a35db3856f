"""Injection from the request to the spool: bulk requests in bounded memory, one shared body,
and ``Reception.admit``'s per-message outcomes.

The generation side (Injector) runs with reception behind its seam for the memory bound; the
bulk and admission tests use the real Reception, QueueManager, LocalDisk spool and Lua policy
(tmp_path), with a deliverer that holds every message so that they stay visible in memory.
Memory is measured with tracemalloc (Python allocations in every thread).
"""

from __future__ import annotations

import asyncio
import textwrap
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kumoq.clock import FakeClock
from kumoq.config.queue import QueueConfig, SmtpProtocol
from kumoq.config.spool import SpoolDefinition, SpoolKind
from kumoq.errors import PolicyError
from kumoq.http.auth import AuthInfo
from kumoq.http.availability import Availability
from kumoq.http.inject import BATCH_MESSAGES, Injector, Origin
from kumoq.http.inject_build import CompiledContent
from kumoq.http.inject_schema import parse_inject_request
from kumoq.logs.records import RecordType, Response
from kumoq.lua import PolicyEvents, PolicyRuntime
from kumoq.message import EnvelopeAddress, Message, QueueNameParts, new_spool_id
from kumoq.reception import POLICY_FAILED, Reception
from kumoq.scheduler.attempt import Attempt
from kumoq.scheduler.manager import QueueManager
from kumoq.spool import open_spool
from kumoq.spool.base import Spool
from kumoq.testing.faults import delivered
from tests.unit.test_reception import MemorySpool

MiB = 1024 * 1024
BULK = 10_000
ORIGIN = Origin(
    AuthInfo("127.0.0.1", (), ("kumomta:http-listener-trusted-ip",)), "127.0.0.1", "::1"
)


class Ready:
    def ready(self) -> bool:
        return True

    @property
    def storage_problem(self) -> str | None:
        return None


class NoPolicy:
    def has_handler(self, name: str) -> bool:
        return False

    def call(self, name: str, *args: object) -> Any:
        raise AssertionError(name)


@dataclass
class Dropping:
    """An Admission that checks and counts messages, then forgets them (as if delivered)."""

    count: int = 0
    batches: list[int] = field(default_factory=list)

    async def admit(
        self, messages: list[Message], *, peer: dict[str, str], reception_protocol: str
    ) -> list[str | None]:
        self.batches.append(len(messages))
        self.count += len(messages)
        await asyncio.sleep(0)
        return [None] * len(messages)


def injector(admission: Any, policy: Any = None) -> Injector:
    return Injector(
        admission=admission,
        policy=policy or NoPolicy(),
        clock=FakeClock(),
        availability=Availability(Ready()),
        hostname="h.test",
        body_limit=64 * MiB,
    )


def bulk_request(content: Any, n: int = BULK, per_recipient: bool = False) -> dict[str, Any]:
    recipients = [
        {"email": f"r{i}@example.com", **({"substitutions": {"n": i}} if per_recipient else {})}
        for i in range(n)
    ]
    return {"envelope_sender": "s@example.com", "content": content, "recipients": recipients}


@pytest.mark.slow
async def test_10000_personalised_recipients_are_generated_in_bounded_memory() -> None:
    text = "x" * 76 + "\n"
    template = "Subject: for {{ n }}\n\nDear number {{ n }},\n" + text * 50  # ~4 KiB each
    parsed = parse_inject_request(bulk_request(template, per_recipient=True))
    compiled = CompiledContent(parsed)
    admission = Dropping()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = await injector(admission).inject(parsed, compiled, ORIGIN)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.success_count == BULK
    assert result.fail_count == 0
    assert admission.count == BULK
    assert max(admission.batches) <= BATCH_MESSAGES
    # Holding every generated message would take about 40 MiB.
    assert peak - base < 8 * MiB, f"peak {(peak - base) / MiB:.1f} MiB while generating"


@dataclass
class Holding:
    """A deliverer that keeps every message it is given until ``release``."""

    messages: list[Message] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def deliver(self, msg: Message, config: QueueConfig) -> Attempt:
        self.messages.append(msg)
        await self.released.wait()
        return delivered()


@dataclass
class Records:
    logged: list[tuple[RecordType, str, dict[str, Any]]] = field(default_factory=list)

    def log(self, type: RecordType, msg: Message, *, response: Response, **fields: Any) -> None:
        self.logged.append((type, msg.id, fields))

    def log_rejection(self, conn_meta: dict[str, Any], command: str, response: Response) -> None:
        pass

    def of(self, type: RecordType) -> list[tuple[str, dict[str, Any]]]:
        return [(msg_id, fields) for t, msg_id, fields in self.logged if t is type]


class Configs:
    def get_queue_config(self, parts: QueueNameParts) -> QueueConfig:
        if parts.domain == "broken.example":
            raise PolicyError("get_queue_config: no config for broken.example")
        return QueueConfig(protocol=SmtpProtocol())


POLICY = """
kumo.on('http_message_generated', function(msg, auth)
  if msg:recipient().user == 'r13' then kumo.reject(550, 'not r13') end
  msg:set_meta('tenant', 'bulk')
  msg:set_meta('auth_peer', auth.peer_address)
end)
"""


@dataclass
class Rig:
    spool: Spool
    deliverer: Holding
    records: Records
    reception: Reception
    events: PolicyEvents


async def make_rig(tmp_path: Path, spool: Spool) -> tuple[Rig, QueueManager]:
    await spool.start()
    policy = tmp_path / "init.lua"
    policy.write_text(textwrap.dedent(POLICY))
    clock = FakeClock()
    records, deliverer = Records(), Holding()
    manager = QueueManager(
        configs=Configs(),
        deliverers={SmtpProtocol: deliverer},
        spool=spool,
        records=records,
        clock=clock,
    )
    events = PolicyEvents(PolicyRuntime(policy))
    reception = Reception(
        events=events,
        spool=spool,
        queues=manager,
        records=records,
        clock=clock,
        hostname="h.test",
        received_header=False,
    )
    reception.set_ready()
    return Rig(spool, deliverer, records, reception, events), manager


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    spool = open_spool(
        SpoolDefinition(name="data", path=str(tmp_path / "data"), kind=SpoolKind.LOCAL_DISK),
        SpoolDefinition(name="meta", path=str(tmp_path / "meta"), kind=SpoolKind.LOCAL_DISK),
    )
    made, manager = await make_rig(tmp_path, spool)
    try:
        yield made
    finally:
        made.deliverer.released.set()
        await manager.close(drain_seconds=5)
        await spool.close()


@pytest.mark.slow
async def test_10000_recipients_are_spooled_and_share_one_body(rig: Rig) -> None:
    parsed = parse_inject_request(bulk_request({"subject": "Hi", "text_body": "Same for all."}))
    result = await injector(rig.reception, rig.events).inject(
        parsed, CompiledContent(parsed), ORIGIN
    )
    assert result.success_count == BULK - 1
    assert result.errors == ["r13@example.com: 550 not r13"]
    received = rig.records.of(RecordType.Reception)
    assert len(received) == BULK - 1
    assert {f["reception_protocol"] for _, f in received} == {"HTTP"}
    assert {f["peer_address"]["addr"] for _, f in received} == {"127.0.0.1"}
    stored = [msg_id async for msg_id, _ in rig.spool.enumerate()]
    assert len(stored) == BULK - 1
    for _ in range(10_000):
        if len(rig.deliverer.messages) >= BULK - 1:
            break
        await asyncio.sleep(0)
    held = rig.deliverer.messages
    assert len(held) == BULK - 1
    assert len({id(m.data_parts()[-1]) for m in held}) == 1  # type: ignore[index]
    first = held[0]
    assert first.meta["tenant"] == "bulk"
    assert first.meta["auth_peer"] == "127.0.0.1"
    assert first.queue_name() == "bulk@example.com"
    data = await rig.spool.load_data(first.id)
    assert data.startswith(f"To: {first.recipient.email}\r\nSubject: Hi\r\n".encode())


# -- Reception.admit ------------------------------------------------------------------------


def message(rcpt: str, **meta: Any) -> Message:
    return Message(
        id=new_spool_id(1_700_000_000.0),
        sender=EnvelopeAddress.parse("s@example.com"),
        recipients=[EnvelopeAddress.parse(rcpt)],
        meta=dict(meta),
        data=b"",
        shared_body=b"Subject: x\r\n\r\nbody\r\n",
    )


PEER = {"name": "", "addr": "192.0.2.9"}


async def test_admit_gives_each_message_its_own_outcome(rig: Rig) -> None:
    ok = message("a@example.com")
    bad_queue = message("b@example.com", queue=5)
    no_config = message("c@broken.example")
    nowhere = message("d@example.com", queue="null")
    outcomes = await rig.reception.admit(
        [ok, bad_queue, no_config, nowhere], peer=PEER, reception_protocol="HTTP"
    )
    assert outcomes[0] is None
    # The reason goes to the log, not to the HTTP client.
    assert outcomes[1] == outcomes[2] == POLICY_FAILED
    assert "must be a string" not in POLICY_FAILED
    assert outcomes[3] is None  # the null queue takes it: logged, not stored
    assert [msg_id async for msg_id, _ in rig.spool.enumerate()] == [ok.id]
    received = rig.records.of(RecordType.Reception)
    assert [msg_id for msg_id, _ in received] == [ok.id, nowhere.id]
    assert received[0][1] == {
        "peer_address": PEER,
        "reception_protocol": "HTTP",
        "session_id": None,
    }


async def test_a_failed_store_fails_the_stored_messages_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    spool = MemorySpool()
    spool.fail_at_call = {2}
    made, manager = await make_rig(tmp_path, spool)
    try:
        batch = [message("a@example.com"), message("b@example.com"), message("c@x", queue="null")]
        outcomes = await made.reception.admit(batch, peer=PEER, reception_protocol="HTTP")
        await asyncio.sleep(0.01)
        assert outcomes == ["spool error, try again later", "spool error, try again later", None]
        assert spool.stored == {}
        assert [msg_id for msg_id, _ in made.records.of(RecordType.Reception)] == [batch[2].id]
    finally:
        made.deliverer.released.set()
        await manager.close(drain_seconds=5)


async def test_a_cancelled_admission_takes_its_stores_back_out(tmp_path: Path) -> None:
    spool = MemorySpool(hold=True)
    made, manager = await make_rig(tmp_path, spool)
    try:
        batch = [message("a@example.com"), message("b@example.com")]
        task = asyncio.ensure_future(
            made.reception.admit(batch, peer=PEER, reception_protocol="HTTP")
        )
        for _ in range(5):
            await asyncio.sleep(0)
        assert spool.in_flight == 2
        task.cancel()
        await asyncio.sleep(0)
        spool.release()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert spool.stored == {}
        assert made.records.of(RecordType.Reception) == []
    finally:
        made.deliverer.released.set()
        await manager.close(drain_seconds=5)
