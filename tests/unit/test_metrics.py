"""The metrics of issue 11 beyond KumoMTA's message counters: the ``delayed_due_to_*``
counters behind ``note_delayed``, ``LoopHistogram``, the scrape-time gauges, and each place that
counts (record logger, reception, spool writer, Lua runtime, listener admission).

``REGISTRY`` is process-wide, so every test reads a difference: the value after minus before.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from kumoq.clock import FakeClock
from kumoq.config.listener import EsmtpListenerConfig
from kumoq.config.spool import SpoolDefinition
from kumoq.errors import PolicyError
from kumoq.gauges import LiveGauges
from kumoq.http.metrics import metrics_json, prometheus_text
from kumoq.logs.logger import RecordLogger
from kumoq.logs.records import RecordType, Response
from kumoq.lua import PolicyEvents, PolicyRuntime
from kumoq.message import EnvelopeAddress, Message, new_spool_id
from kumoq.metrics import (
    DELAYED_DUE_TO_MESSAGE_RATE_THROTTLE,
    DELAYED_DUE_TO_READY_QUEUE_FULL,
    DELAYED_DUE_TO_THROTTLE_INSERT_READY,
    DISPOSITION_LATENCY,
    LUA_EVENT_LATENCY,
    LUA_EVENT_STARTED,
    MESSAGE_SAVE_LATENCY,
    REGISTRY,
    SMTP_SERVER_REJECTIONS,
    TOTAL_CONNECTIONS_DENIED,
    LoopHistogram,
    ProcessGauges,
    note_delayed,
)
from kumoq.reception import Reception
from kumoq.smtp.admission import Admission
from kumoq.spool import SqliteSpool

NOW = 1_700_000_000.0
OK = Response(code=250, enhanced_code=None, content="ok", command=None)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- delayed_due_to_* ------------------------------------------------------------------------


def test_note_delayed_counts_each_reason_in_kumomtas_counter_and_ignores_the_others():
    counters = {
        "MessageRateThrottle": DELAYED_DUE_TO_MESSAGE_RATE_THROTTLE,
        "ReadyQueueWasFull": DELAYED_DUE_TO_READY_QUEUE_FULL,
        "ThrottledByThrottleInsertReadyQueue": DELAYED_DUE_TO_THROTTLE_INSERT_READY,
    }
    queue = "camp:tenant@delayed.example"
    before = {reason: c.value(queue) for reason, c in counters.items()}
    for reason in counters:
        note_delayed(reason, queue)
    note_delayed("MessageRateThrottle", queue)
    for other in ("ConnectionRateThrottle", "DueTimeWasReached", "Received", "nonsense"):
        note_delayed(other, queue)
    after = {reason: c.value(queue) - before[reason] for reason, c in counters.items()}
    assert after == {
        "MessageRateThrottle": 2.0,
        "ReadyQueueWasFull": 1.0,
        "ThrottledByThrottleInsertReadyQueue": 1.0,
    }


def test_the_delayed_counters_are_exposed_under_kumomtas_exact_names():
    note_delayed("ReadyQueueWasFull", "exposed.example")
    text = prometheus_text(REGISTRY).decode()
    for name in (
        "delayed_due_to_message_rate_throttle",
        "delayed_due_to_ready_queue_full",
        "delayed_due_to_throttle_insert_ready",
    ):
        assert f"# TYPE {name} counter\n" in text
        assert f"{name}_total" not in text
    assert 'delayed_due_to_ready_queue_full{queue="exposed.example"} ' in text
    family = metrics_json(REGISTRY, "delayed_due_to_ready_queue_full")
    assert family["delayed_due_to_ready_queue_full"]["type"] == "counter"
    assert family["delayed_due_to_ready_queue_full"]["value"]["queue"]["exposed.example"] >= 1


# -- LoopHistogram ---------------------------------------------------------------------------


def test_a_loop_histogram_is_a_standard_histogram_in_text_and_json():
    registry = CollectorRegistry()
    h = LoopHistogram("thing_latency", "how long", "event", (0.1, 1.0), registry=registry)
    fast = h.child("fast")
    assert h.child("fast") is fast  # bound once, the same series after
    fast.observe(0.1)  # le is inclusive
    fast.observe(0.05)
    h.child("slow").observe_many(5.0, 3)
    text = prometheus_text(registry).decode()
    assert "# TYPE thing_latency histogram\n" in text
    assert 'thing_latency_bucket{event="fast",le="0.1"} 2.0\n' in text
    assert 'thing_latency_bucket{event="fast",le="+Inf"} 2.0\n' in text
    assert 'thing_latency_count{event="fast"} 2.0\n' in text
    assert 'thing_latency_sum{event="fast"} 0.15' in text
    assert 'thing_latency_bucket{event="slow",le="1.0"} 0.0\n' in text
    assert 'thing_latency_bucket{event="slow",le="+Inf"} 3.0\n' in text
    value = metrics_json(registry)["thing_latency"]["value"]["event"]
    assert value["slow"] == {
        "count": 3.0,
        "sum": 15.0,
        "avg": 5.0,
        "bucket": [[0.1, 0.0], [1.0, 0.0]],
    }


def test_a_loop_histogram_without_a_label_shows_zeros_from_the_start():
    registry = CollectorRegistry()
    LoopHistogram("save_latency", "save", None, (0.5,), registry=registry)
    text = prometheus_text(registry).decode()
    assert 'save_latency_bucket{le="0.5"} 0.0\n' in text
    assert "save_latency_count 0.0\n" in text


# -- scrape-time gauges ----------------------------------------------------------------------


def test_scheduled_totals_come_from_the_scheduled_source_and_dead_letters_are_optional():
    scheduled = {"a.example": 2, "b.example": 3, "c.example": 0}
    registry = CollectorRegistry()
    registry.register(LiveGauges(scheduled=scheduled.items, ready=list, connections=list))
    text = prometheus_text(registry).decode()
    assert "# TYPE scheduled_count_total gauge\nscheduled_count_total 5.0\n" in text
    assert "# TYPE scheduled_queue_count gauge\nscheduled_queue_count 3.0\n" in text
    assert "kumoq_dead_letter_count" not in text

    dead = [4]
    with_dead = CollectorRegistry()
    with_dead.register(
        LiveGauges(scheduled=list, ready=list, connections=list, dead_letters=lambda: dead[0])
    )
    assert "kumoq_dead_letter_count 4.0\n" in prometheus_text(with_dead).decode()
    dead[0] = 1
    assert metrics_json(with_dead)["kumoq_dead_letter_count"] == {
        "help": LiveGauges.DEAD_LETTERS[1],
        "type": "gauge",
        "value": 1.0,
    }
    assert metrics_json(with_dead)["scheduled_count_total"]["value"] == 0.0


def test_memory_usage_is_the_resident_set_size():
    registry = CollectorRegistry()
    registry.register(ProcessGauges())
    rss = registry.get_sample_value("memory_usage")
    assert rss is not None
    assert rss > 1_000_000
    assert REGISTRY.get_sample_value("memory_usage") is not None


# -- where the counting happens --------------------------------------------------------------


def message(created: float, rcpt: str = "r@example.com") -> Message:
    return Message(
        id=new_spool_id(created),
        sender=EnvelopeAddress.parse("s@example.com"),
        recipients=[EnvelopeAddress.parse(rcpt)],
        meta={},
        data=b"Subject: x\r\n\r\nx\r\n",
        created=created,
    )


def test_final_records_observe_the_time_since_reception_by_disposition():
    clock = FakeClock(NOW)
    logger = RecordLogger([], "node", clock)  # no logs configured: still observed
    series = {t: DISPOSITION_LATENCY.child(t) for t in ("Delivery", "Bounce", "Expiration")}
    counts = {t: child.count for t, child in series.items()}
    sums = {t: child.sum for t, child in series.items()}
    logger.log(RecordType.Delivery, message(NOW - 2.5), response=OK)
    logger.log(RecordType.Expiration, message(NOW - 7 * 86400), response=OK)
    logger.log(RecordType.Bounce, message(NOW + 30), response=OK)  # a clock step: 0, not < 0
    for not_final in (RecordType.Reception, RecordType.TransientFailure, RecordType.Delayed):
        logger.log(not_final, message(NOW - 1), response=OK)
    assert {t: c.count - counts[t] for t, c in series.items()} == {
        "Delivery": 1,
        "Bounce": 1,
        "Expiration": 1,
    }
    assert series["Delivery"].sum - sums["Delivery"] == 2.5
    assert series["Expiration"].sum - sums["Expiration"] == 7 * 86400
    assert series["Bounce"].sum - sums["Bounce"] == 0.0
    assert "kumoq_disposition_latency_seconds_bucket" in prometheus_text(REGISTRY).decode()


def test_rejections_count_as_total_and_by_listener_address():
    logger = RecordLogger([], "node", FakeClock(NOW))
    before = SMTP_SERVER_REJECTIONS.value("total"), SMTP_SERVER_REJECTIONS.value("127.0.0.9:25")
    refused = Response(code=550, enhanced_code=(5, 7, 1), content="no", command="RCPT TO")
    logger.log_rejection({"received_via": "127.0.0.9:25"}, "RCPT TO", refused)
    logger.log_rejection({}, "MAIL FROM", refused)
    after = SMTP_SERVER_REJECTIONS.value("total"), SMTP_SERVER_REJECTIONS.value("127.0.0.9:25")
    assert (after[0] - before[0], after[1] - before[1]) == (2.0, 1.0)


class _Queues:
    """The two QueueManager calls reception makes."""

    def __init__(self) -> None:
        self.inserted: list[str] = []

    async def resolve_waiting(self, name: str) -> None:
        return None

    def insert(self, msg: Message) -> None:
        self.inserted.append(msg.id)


class _Spool:
    async def store(self, msg_id: str, data: Any, meta: bytes) -> None:
        return None

    async def remove(self, msg_id: str) -> None:
        return None


class _Records:
    def log(self, type: RecordType, msg: Message, *, response: Response, **fields: Any) -> None:
        pass

    def log_rejection(self, conn_meta: dict[str, Any], command: str, response: Response) -> None:
        pass


class _PriorityFromRecipient:
    """The policy sets the ``priority`` meta from the recipient's local part, if a digit."""

    async def smtp_server_data(self, msg: Message, conn_meta: dict[str, Any]) -> None:
        pass

    async def smtp_server_message_received(self, msg: Message, conn_meta: dict[str, Any]) -> None:
        user = msg.recipients[0].local_part
        if user.isdigit():
            msg.meta["priority"] = int(user)


async def test_accepted_messages_count_by_their_priority():
    queues = _Queues()
    reception = Reception(
        events=cast(Any, _PriorityFromRecipient()),
        spool=cast(Any, _Spool()),
        queues=cast(Any, queues),
        records=_Records(),
        clock=FakeClock(NOW),
        hostname="mx.test",
    )
    before = {p: sample("kumoq_messages_received_by_priority_total", priority=p) for p in "0123"}
    rcpts = ["0", "2", "2", "3", "plain", "9"]  # no meta, or an out-of-range one: normal (1)
    conn = {"received_from": "192.0.2.1", "received_via": "127.0.0.1:25"}
    reply = await reception.data(
        cast(Any, conn),
        EnvelopeAddress.parse("s@example.com"),
        [EnvelopeAddress.parse(f"{r}@example.com") for r in rcpts],
        b"Subject: x\r\n\r\nx\r\n",
    )
    assert reply.code == 250
    assert len(queues.inserted) == len(rcpts)
    after = {p: sample("kumoq_messages_received_by_priority_total", priority=p) for p in "0123"}
    assert {p: after[p] - before[p] for p in "0123"} == {"0": 1, "1": 2, "2": 2, "3": 1}


async def test_spool_stores_observe_save_and_commit_latency(tmp_path: Path):
    data, meta = (
        SpoolDefinition.from_mapping({"name": n, "path": str(tmp_path / n), "kind": "SQLite"})
        for n in ("data", "meta")
    )
    spool = SqliteSpool(data, meta)
    save = MESSAGE_SAVE_LATENCY.child()
    saves = save.count
    commits = sample("kumoq_spool_commit_latency_seconds_count", spool="SQLite")
    await spool.start()
    try:
        ids = [new_spool_id(NOW) for _ in range(3)]
        await spool.store(ids[0], b"data", b"{}")
        await spool.store_many([(i, b"data", b"{}") for i in ids[1:]])
        await spool.remove(ids[0])
    finally:
        await spool.close()
    assert save.count - saves == 3
    # a store, a store_many, a remove: three commits (more if the thread split none)
    assert sample("kumoq_spool_commit_latency_seconds_count", spool="SQLite") - commits >= 3
    assert sample("kumoq_spool_commit_latency_seconds_sum", spool="SQLite") > 0


def test_lua_events_count_when_started_and_observe_their_latency(tmp_path: Path):
    policy = tmp_path / "init.lua"
    policy.write_text(
        textwrap.dedent(
            """
            kumo.on('metrics_ping', function() return 1 end)
            kumo.on('metrics_boom', function() error('boom') end)
            kumo.on('get_queue_config', function() return kumo.make_queue_config {} end)
            """
        )
    )
    events = PolicyEvents(PolicyRuntime(policy))
    names = ("metrics_ping", "metrics_boom", "get_queue_config")
    started = {n: LUA_EVENT_STARTED.value(n) for n in names}
    observed = {n: LUA_EVENT_LATENCY.child(n).count for n in names}
    assert events.call("metrics_ping") == 1
    assert events.call("metrics_ping") == 1
    with pytest.raises(PolicyError, match="boom"):
        events.call("metrics_boom")
    assert events.get_queue_config("example.com", None, None, None) is not None
    events.call("metrics_no_handler")  # not fired: no handler
    assert {n: LUA_EVENT_STARTED.value(n) - started[n] for n in names} == {
        "metrics_ping": 2.0,
        "metrics_boom": 1.0,
        "get_queue_config": 1.0,
    }
    assert {n: LUA_EVENT_LATENCY.child(n).count - observed[n] for n in names} == {
        "metrics_ping": 2,
        "metrics_boom": 1,
        "get_queue_config": 1,
    }
    assert LUA_EVENT_STARTED.value("metrics_no_handler") == 0.0
    text = prometheus_text(REGISTRY).decode()
    assert "# TYPE lua_event_started counter\n" in text
    assert 'lua_event_latency_bucket{event="metrics_ping",le="0.005"} ' in text


def test_connections_refused_at_a_limit_count_as_denied_but_not_while_draining():
    admission = Admission(
        EsmtpListenerConfig.from_mapping({"max_connections": 2, "max_connections_per_ip": 1})
    )
    admission.admit("192.0.2.1")
    before = TOTAL_CONNECTIONS_DENIED.value("esmtp_listener")

    def refused(key: str | None, connections: int, *, draining: bool = False) -> bool:
        reply = admission.refusal(
            key, draining=draining, connections=connections, ready=lambda: True
        )
        return reply is not None

    assert refused("192.0.2.1", 1)  # max_connections_per_ip
    assert refused("192.0.2.2", 2)  # max_connections
    assert refused("192.0.2.2", 0, draining=True)  # shutting down: not a limit
    assert not refused("192.0.2.2", 1)
    assert TOTAL_CONNECTIONS_DENIED.value("esmtp_listener") - before == 2.0
