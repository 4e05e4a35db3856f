"""The pure ready-queue core: priority FIFO, connection curve, failure tracker, classification,
throttle decisions."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from kumoq.egress.ready import (
    BULK_DELAY_RESPONSE,
    ConnectionFailureTracker,
    Proceed,
    ReadyFifo,
    RequeueQueue,
    SleepInline,
    classify_response,
    ideal_connection_count,
    priority_of,
    throttle_decision,
)
from kumoq.message import EnvelopeAddress, Message, new_spool_id
from kumoq.throttle import ThrottleResult

# --- ReadyFifo ---------------------------------------------------------------------------


def test_pop_serves_highest_priority_first_and_fifo_within_a_priority():
    fifo: ReadyFifo[str] = ReadyFifo(10)
    for item, prio in [("a1", 1), ("b0", 0), ("c3", 3), ("d1", 1), ("e2", 2), ("f3", 3)]:
        assert fifo.try_push(item, prio)
    fifo._check()
    assert [fifo.pop() for _ in range(6)] == ["c3", "f3", "e2", "a1", "d1", "b0"]
    assert fifo.pop() is None
    assert len(fifo) == 0
    fifo._check()


def test_default_priority_is_normal():
    fifo: ReadyFifo[str] = ReadyFifo(3)
    fifo.try_push("default")
    fifo.try_push("low", 0)
    fifo.try_push("high", 2)
    assert fifo.count(1) == 1
    assert fifo.drain() == ["high", "default", "low"]


def test_full_fifo_refuses_and_stores_nothing():
    fifo: ReadyFifo[int] = ReadyFifo(2)
    assert fifo.try_push(1, 0)
    assert not fifo.is_full()
    assert fifo.try_push(2, 1)
    assert fifo.is_full()
    assert not fifo.try_push(3, 3)  # even the highest priority waits for room
    assert len(fifo) == 2
    assert fifo.pop() == 2
    assert fifo.try_push(3, 3)
    fifo._check()


def test_zero_capacity_refuses_everything():
    fifo: ReadyFifo[int] = ReadyFifo(0)
    assert not fifo.try_push(1)
    assert fifo.pop() is None


@pytest.mark.parametrize("bad", [-1, 4, 99])
def test_bad_priority_is_an_error(bad):
    fifo: ReadyFifo[int] = ReadyFifo(2)
    with pytest.raises(ValueError, match=r"priority must be 0\.\.3"):
        fifo.try_push(1, bad)
    assert len(fifo) == 0


def test_negative_capacity_is_an_error():
    with pytest.raises(ValueError, match="capacity"):
        ReadyFifo(-1)
    with pytest.raises(ValueError, match="capacity"):
        ReadyFifo(1).set_capacity(-1)


def test_drain_is_priority_order_and_empties():
    fifo: ReadyFifo[str] = ReadyFifo(10)
    for item, prio in [("x0", 0), ("y2", 2), ("z0", 0), ("w2", 2)]:
        fifo.try_push(item, prio)
    assert fifo.drain() == ["y2", "w2", "x0", "z0"]
    assert len(fifo) == 0
    assert fifo.drain() == []
    fifo._check()


def test_set_capacity_reduction_returns_lowest_priority_newest_first():
    fifo: ReadyFifo[str] = ReadyFifo(10)
    for item, prio in [("a0", 0), ("b0", 0), ("c1", 1), ("d1", 1), ("e3", 3), ("f1", 1)]:
        fifo.try_push(item, prio)
    overflow = fifo.set_capacity(2)
    assert overflow == ["b0", "a0", "f1", "d1"]
    assert fifo.capacity == 2
    fifo._check()
    assert fifo.drain() == ["e3", "c1"]


def test_set_capacity_without_overflow_returns_nothing():
    fifo: ReadyFifo[int] = ReadyFifo(4)
    fifo.try_push(1)
    fifo.try_push(2)
    assert fifo.set_capacity(2) == []
    assert fifo.is_full()
    assert fifo.set_capacity(100) == []
    assert fifo.try_push(3)
    assert fifo.set_capacity(0) == [3, 2, 1]
    assert len(fifo) == 0
    fifo._check()


def test_priority_of_is_the_scheduled_queue_helper():
    msg = Message(
        id=new_spool_id(1_700_000_000.0),
        sender=EnvelopeAddress.parse("a@sender.example"),
        recipients=[EnvelopeAddress.parse("b@rcpt.example")],
        data=b"x",
    )
    assert priority_of(msg) == 1
    msg.meta["priority"] = 3
    assert priority_of(msg) == 3
    msg.meta["priority"] = 7
    assert priority_of(msg) == 1


class FifoModel(RuleBasedStateMachine):
    """ReadyFifo against a list of (priority, seq, item) sorted on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.capacity = 8
        self.fifo: ReadyFifo[int] = ReadyFifo(self.capacity)
        self.model: list[tuple[int, int, int]] = []
        self.seq = 0

    def _ordered(self) -> list[tuple[int, int, int]]:
        return sorted(self.model, key=lambda e: (-e[0], e[1]))

    @rule(priority=st.integers(0, 3))
    def push(self, priority: int) -> None:
        self.seq += 1
        accepted = self.fifo.try_push(self.seq, priority)
        assert accepted == (len(self.model) < self.capacity)
        if accepted:
            self.model.append((priority, self.seq, self.seq))

    @rule()
    def pop(self) -> None:
        got = self.fifo.pop()
        if not self.model:
            assert got is None
            return
        head = self._ordered()[0]
        self.model.remove(head)
        assert got == head[2]

    @rule()
    def drain(self) -> None:
        assert self.fifo.drain() == [e[2] for e in self._ordered()]
        self.model = []

    @rule(capacity=st.integers(0, 10))
    def set_capacity(self, capacity: int) -> None:
        self.capacity = capacity
        overflow = self.fifo.set_capacity(capacity)
        excess = max(0, len(self.model) - capacity)
        # served last = lowest priority, newest first
        expected = sorted(self.model, key=lambda e: (e[0], -e[1]))[:excess]
        assert overflow == [e[2] for e in expected]
        for e in expected:
            self.model.remove(e)

    @invariant()
    def consistent(self) -> None:
        self.fifo._check()
        assert len(self.fifo) == len(self.model)
        for p in range(4):
            assert self.fifo.count(p) == sum(1 for e in self.model if e[0] == p)


FifoModel.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestFifoModel = FifoModel.TestCase


# --- ideal_connection_count ------------------------------------------------------------------

SIZES = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 32, 64, 128, 256, 400, 512, 1024]
# KumoMTA's ready_queue.rs tests connection_limit_32 / connection_limit_1024.
LIMIT_32 = [0, 1, 2, 3, 3, 4, 5, 5, 6, 6, 7, 12, 17, 25, 31, 32, 32, 32, 32]


@pytest.mark.parametrize(("queue_len", "ideal"), list(zip(SIZES, LIMIT_32, strict=True)))
def test_ideal_connection_count_limit_32(queue_len, ideal):
    assert ideal_connection_count(queue_len, 32) == ideal


@pytest.mark.parametrize("queue_len", SIZES)
def test_ideal_connection_count_limit_1024_tracks_queue_len(queue_len):
    assert ideal_connection_count(queue_len, 1024) == queue_len


@pytest.mark.parametrize(("queue_len", "limit"), [(0, 32), (10, 0), (-1, 32), (5, -3)])
def test_ideal_connection_count_degenerate(queue_len, limit):
    assert ideal_connection_count(queue_len, limit) == 0


@settings(max_examples=300)
@given(q=st.integers(1, 100_000), limit=st.sampled_from([1, 2, 32, 1000]))
def test_ideal_connection_count_bounds_and_monotone(q, limit):
    ideal = ideal_connection_count(q, limit)
    assert 1 <= ideal <= min(q, limit)
    assert ideal_connection_count(q + 1, limit) >= ideal


# --- ConnectionFailureTracker ----------------------------------------------------------------


def test_bulk_delay_response_text():
    assert BULK_DELAY_RESPONSE == (
        "451 4.4.1 bulk delay of ready queue: too many successive connection failures "
        "where there was no answer from any hosts listed in MX"
    )


def test_failure_tracker_triggers_when_previous_count_exceeds_limit():
    # KumoMTA: `fetch_add(1) > limit`, i.e. the count before this failure must exceed it.
    tracker = ConnectionFailureTracker(3)
    results = [tracker.record_failure() for _ in range(6)]
    assert results == [False, False, False, False, True, True]
    assert tracker.count == 6


def test_failure_tracker_default_limit_is_100():
    tracker = ConnectionFailureTracker()
    assert tracker.limit == 100
    assert not any(tracker.record_failure() for _ in range(101))
    assert tracker.record_failure()  # the 102nd


def test_failure_tracker_success_resets():
    tracker = ConnectionFailureTracker(0)
    assert not tracker.record_failure()
    assert tracker.record_failure()
    tracker.record_success()
    assert tracker.count == 0
    assert not tracker.record_failure()


# --- classify_response ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "text", "kind"),
    [
        (250, "2.0.0 OK", "Delivery"),
        (200, "ok", "Delivery"),
        (299, "", "Delivery"),
        (250, "too many recipients but accepted", "Delivery"),
        (354, "go ahead", "TransientFailure"),
        (300, "", "TransientFailure"),
        (421, "4.7.0 try later", "TransientFailure"),
        (451, "4.4.1", "TransientFailure"),
        (452, "4.5.3 Too many recipients", "TransientFailure"),
        (499, "", "TransientFailure"),
        (503, "5.5.1 bad sequence of commands", "TransientFailure"),
        (550, "5.5.3 too many recipients", "TransientFailure"),
        (550, "5.5.3 Too many recipients", "Bounce"),
        (550, "5.1.1 user unknown", "Bounce"),
        (500, "", "Bounce"),
        (502, "", "Bounce"),
        (504, "", "Bounce"),
        (554, "5.7.1 rejected", "Bounce"),
        (199, "", "Bounce"),
        (600, "", "Bounce"),
    ],
)
def test_classify_response(code, text, kind):
    assert classify_response(code, text) == kind


# --- throttle_decision ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Result:
    throttled: bool
    retry_after: float | None


def _throttled(retry_after: float | None) -> ThrottleResult:
    return ThrottleResult(
        throttled=True, limit=1, remaining=0, reset_after=1.0, retry_after=retry_after
    )


def test_not_throttled_proceeds():
    allowed = ThrottleResult(
        throttled=False, limit=5, remaining=4, reset_after=1.0, retry_after=None
    )
    assert throttle_decision(allowed, 60.0) == Proceed()


@pytest.mark.parametrize(
    ("retry_after", "idle_timeout", "decision"),
    [
        (1.0, 60.0, SleepInline(1.0)),
        (59.0, 60.0, SleepInline(59.0)),
        (60.0, 60.0, RequeueQueue(60.0)),  # not strictly less: requeue
        (61.0, 60.0, RequeueQueue(61.0)),
        (1.0, 0.0, RequeueQueue(1.0)),
        (3600.0, 60.0, RequeueQueue(3600.0)),
    ],
)
def test_throttle_decision_boundaries(retry_after, idle_timeout, decision):
    assert throttle_decision(_throttled(retry_after), idle_timeout) == decision


def test_throttled_without_retry_after_sleeps_zero():
    assert throttle_decision(_Result(True, None), 5.0) == SleepInline(0.0)
