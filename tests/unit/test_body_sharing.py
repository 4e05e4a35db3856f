"""One body per transaction, not one per recipient (issue 10, defect 1).

A 1 MiB message to 200 recipients went through Reception as 200 copies of its body (each
recipient's ``Received:`` header was prepended to a copy), and the copies stayed while the
messages waited for delivery. The messages of a transaction now share the body: each holds
its own header, and the spool writes the two pieces without joining them.

Real Reception, QueueManager, spool (every kind, under tmp_path) and Lua policy; a
deliverer that holds every message, so the whole transaction stays in memory, in flight.
Memory is measured with tracemalloc (Python allocations in every thread), not RSS.
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
from kumoq.logs.records import RecordType, Response
from kumoq.lua import PolicyEvents, PolicyRuntime
from kumoq.message import EnvelopeAddress, Message, QueueNameParts, new_spool_id
from kumoq.reception import Reception
from kumoq.scheduler.attempt import Attempt
from kumoq.scheduler.manager import QueueManager
from kumoq.spool import open_spool
from kumoq.spool.base import Spool, joined
from kumoq.testing.faults import delivered

MiB = 1024 * 1024
RECIPIENTS = 200
CONN = {"received_from": "192.0.2.1", "received_via": "127.0.0.1:25", "ehlo_domain": "c.test"}
SENDER = EnvelopeAddress.parse("sender@example.com")


def make_body(size: int) -> bytes:
    head = b"From: <sender@example.com>\r\nSubject: big\r\nX-Tenant: acme\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    return head + line * ((size - len(head)) // len(line))


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
    received: list[str] = field(default_factory=list)

    def log(self, type: RecordType, msg: Message, *, response: Response, **fields: Any) -> None:
        if type is RecordType.Reception:
            self.received.append(msg.id)

    def log_rejection(self, conn_meta: dict[str, Any], command: str, response: Response) -> None:
        pass


class Configs:
    def get_queue_config(self, parts: QueueNameParts) -> QueueConfig:
        return QueueConfig(protocol=SmtpProtocol())


@dataclass
class Rig:
    spool: Spool
    deliverer: Holding
    reception: Reception


POLICY = """
kumo.on('smtp_server_message_received', function(msg)
  -- every message: read headers, as most policies do
  msg:import_x_headers { 'x-tenant' }
  msg:set_meta('subject', msg:get_first_named_header_value('Subject'))
  local user = msg:recipient().user
  if user == 'r7' then msg:prepend_header('X-Changed', 'yes') end
  if user == 'r9' then msg:set_data('Subject: replaced\\r\\n\\r\\nnew body\\r\\n') end
  if user == 'r11' then msg:remove_all_named_headers('X-Tenant') end
end)
"""


@pytest.fixture(
    params=[SpoolKind.LOCAL_DISK, SpoolKind.SQLITE, SpoolKind.ROCKSDB],
    ids=["LocalDisk", "SQLite", "RocksDB"],
)
async def rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Rig]:
    kind = request.param
    spool = open_spool(
        SpoolDefinition(name="data", path=str(tmp_path / "data"), kind=kind, flush=False),
        SpoolDefinition(name="meta", path=str(tmp_path / "meta"), kind=kind, flush=False),
    )
    await spool.start()
    policy = tmp_path / "init.lua"
    policy.write_text(textwrap.dedent(POLICY))
    events = PolicyEvents(PolicyRuntime(policy))
    clock = FakeClock(1_700_000_000.0)
    records = Records()
    deliverer = Holding()
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
    try:
        yield Rig(spool, deliverer, reception)
    finally:
        deliverer.released.set()
        await manager.close(drain_seconds=5)
        await spool.close()


def recipients(n: int) -> list[EnvelopeAddress]:
    return [EnvelopeAddress.parse(f"r{i}@example.com") for i in range(n)]


def ids_of(text: str) -> list[str]:
    return text.partition("=")[2].split()


async def held(rig: Rig, n: int) -> dict[str, Message]:
    """The ``n`` messages the deliverer holds, by recipient user, once they all reached it."""
    for _ in range(1000):
        if len(rig.deliverer.messages) >= n:
            return {m.recipient.user: m for m in rig.deliverer.messages}
        await asyncio.sleep(0)
    raise AssertionError(f"{len(rig.deliverer.messages)} of {n} messages reached the deliverer")


async def test_a_big_message_to_200_recipients_holds_one_body(rig: Rig) -> None:
    body = make_body(1 * MiB)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        reply = await rig.reception.data(dict(CONN), SENDER, recipients(RECIPIENTS), body)
        in_flight = await held(rig, RECIPIENTS)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reply.code == 250, reply
    assert len(ids_of(reply.text)) == RECIPIENTS
    # Before: about 200 MiB at the peak, and as much kept while the messages wait.
    assert peak - base < 10 * MiB, f"peak {(peak - base) / MiB:.1f} MiB during the transaction"
    assert current - base < 5 * MiB, f"{(current - base) / MiB:.1f} MiB kept in flight"
    shared = [m for m in in_flight.values() if m.shares_body]
    assert len(shared) == RECIPIENTS - 3  # r7, r9 and r11 changed their data
    assert all(m.data_parts()[-1] is body for m in shared)  # type: ignore[index]


async def test_each_message_is_stored_whole_with_its_own_received_header(rig: Rig) -> None:
    body = make_body(64 * 1024)
    reply = await rig.reception.data(dict(CONN), SENDER, recipients(20), body)
    assert reply.code == 250, reply
    ids = ids_of(reply.text)
    by_user = await held(rig, 20)
    for i, msg_id in enumerate(ids):
        stored = await rig.spool.load_data(msg_id)
        if i == 9:  # set_data replaced everything
            assert stored == b"Subject: replaced\r\n\r\nnew body\r\n"
            continue
        assert f"with ESMTP id {msg_id} for <r{i}@example.com>".encode() in stored
        if i != 7:
            assert stored.startswith(b"Received: from c.test (192.0.2.1)")
        if i == 7:
            assert stored.startswith(b"X-Changed: yes\r\nReceived: ")
            assert stored.endswith(body)
        elif i == 11:
            assert b"X-Tenant" not in stored
            assert stored.endswith(body.replace(b"X-Tenant: acme\r\n", b""))
        else:
            assert stored.endswith(body)
            assert len(stored) == by_user[f"r{i}"].size
            assert stored == by_user[f"r{i}"].data


async def test_a_policy_that_changes_one_message_changes_only_that_one(rig: Rig) -> None:
    body = make_body(4096)
    reply = await rig.reception.data(dict(CONN), SENDER, recipients(12), body)
    assert reply.code == 250, reply
    by_user = await held(rig, 12)
    for user, msg in by_user.items():
        assert msg.meta["x_tenant"] == "acme"
        assert msg.meta["subject"] == "big"
        data = msg.data
        assert data is not None
        if user == "r7":
            assert not msg.shares_body
            assert data.startswith(b"X-Changed: yes\r\nReceived: ")
        elif user == "r9":
            assert data == b"Subject: replaced\r\n\r\nnew body\r\n"
        elif user == "r11":
            assert b"X-Tenant" not in data
        else:
            assert msg.shares_body
            assert data.startswith(b"Received: ")
            assert data.endswith(body)
            assert b"X-Changed" not in data
    assert body == make_body(4096)  # the shared bytes themselves never change


# -- the Message API -----------------------------------------------------------------------


def shared_pair() -> tuple[bytes, Message, Message]:
    body = b"Subject: s\r\nX-A: 1\r\n\r\nbody line\r\n\r\nmore\r\n"
    made = [
        Message(
            id=new_spool_id(1_700_000_000.0),
            sender=SENDER,
            recipients=[EnvelopeAddress.parse(f"r{i}@example.com")],
            data=f"Received: by mx for r{i}\r\n".encode(),
            shared_body=body,
        )
        for i in range(2)
    ]
    return body, made[0], made[1]


def test_shared_message_reads_like_joined_bytes() -> None:
    body, a, b = shared_pair()
    assert a.data == b"Received: by mx for r0\r\n" + body
    assert a.size == len(a.data)
    assert a.has_data
    assert a.shares_body
    assert a.data_parts() == (b"Received: by mx for r0\r\n", body)
    assert a.data_parts()[1] is body  # type: ignore[index]
    assert joined(a.data_parts()) == a.data  # type: ignore[arg-type]
    assert a.header_data() == b"Received: by mx for r0\r\nSubject: s\r\nX-A: 1\r\n"
    assert b.data == b"Received: by mx for r1\r\n" + body


def test_assigning_data_unshares_only_that_message() -> None:
    body, a, b = shared_pair()
    a.data = b"Subject: new\r\n\r\nx\r\n"
    assert not a.shares_body
    assert a.data_parts() == (b"Subject: new\r\n\r\nx\r\n",)
    assert b.shares_body
    assert b.data == b"Received: by mx for r1\r\n" + body
    b.data = None  # dropped while the message waits
    assert not b.has_data
    assert b.size == 0
    assert b.data_parts() is None
    assert b.header_data() is None


@pytest.mark.parametrize(
    "body",
    [
        b"\r\nno headers\r\n",
        b"\nno headers, bare LF\n",
        b"A: 1\nB: 2\n\nbody\n",
        b"A: 1\r\n folded\r\n\r\nbody\r\n\r\n",
        b"A: 1\r\nnot a header line\r\nB: 2\r\n",
        b"A: 1\r\nB: 2",
        b"",
        b" continuation of the prefix's last field\r\n\r\nbody\r\n",
    ],
)
def test_header_data_gives_the_same_headers_as_the_whole_data(body: bytes) -> None:
    from kumoq import headers

    msg = Message(
        id=new_spool_id(1.0), sender=SENDER, recipients=[SENDER], data=b"R: x\r\n", shared_body=body
    )
    whole, head = msg.data, msg.header_data()
    assert whole is not None
    assert head is not None
    assert whole.startswith(head)
    assert headers.all_headers(head) == headers.all_headers(whole)
    assert headers.first_named(head, "B") == headers.first_named(whole, "B")


def test_without_a_received_header_the_body_itself_is_the_data() -> None:
    body = b"Subject: s\r\n\r\nb\r\n"
    msg = Message(id=new_spool_id(1.0), sender=SENDER, recipients=[SENDER], shared_body=body)
    assert msg.data is body
    assert msg.data_parts() == (body,)
