"""kumo.make_throttle: the throttle object, its result table and sleep_if_throttled.

Real Lua through lupa; the throttle state is the runtime's ``waits.throttle``, checked against
the runtime clock (a FakeClock where a test needs exact values)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from kumoq.clock import FakeClock
from kumoq.config.values import ThrottleSpec
from kumoq.errors import PolicyError
from kumoq.lua import PolicyEvents, PolicyRuntime
from kumoq.throttle import Throttle, ThrottleResult

from .lua_kumo_support import call, load

POLICY = """
local kumo = require 'kumo'
kumo.on('check', function(name, spec)
  return kumo.make_throttle(name, spec):throttle()
end)
kumo.on('sleep', function(name, spec)
  local t = kumo.make_throttle(name, spec)
  return t:sleep_if_throttled()
end)
"""


async def fire(rt: PolicyRuntime, name: str, *args: str) -> Any:
    return await rt.invoke_async(name, "v" * len(args), *(rt.to_lua(a) for a in args))


def test_throttle_returns_kumomta_result_table(tmp_path: Path) -> None:
    clock = FakeClock(1_000_000.0)
    events = PolicyEvents(load(tmp_path, POLICY, clock=clock))
    first = events.call("check", "tenant-a", "2/min")
    assert first == {
        "throttled": False,
        "limit": 2,
        "remaining": 1,
        "reset_after": {"secs": 30, "nanos": 0},
    }
    assert events.call("check", "tenant-a", "2/min")["remaining"] == 0
    third = events.call("check", "tenant-a", "2/min")
    assert third["throttled"] is True
    assert third["retry_after"] == {"secs": 30, "nanos": 0}
    # another name is another throttle
    assert events.call("check", "tenant-b", "2/min")["throttled"] is False
    clock.advance(30)
    assert events.call("check", "tenant-a", "2/min")["throttled"] is False


def test_the_key_is_kumomtas_and_shared_with_the_attached_throttle(tmp_path: Path) -> None:
    clock = FakeClock(1_000_000.0)
    rt = load(tmp_path, POLICY, clock=clock)
    shared = Throttle()
    rt.waits.throttle = shared
    spec = ThrottleSpec.parse("t", "1/h")
    assert not shared.check("lua-user-throttle-x", spec, clock.now()).throttled
    assert PolicyEvents(rt).call("check", "x", "1/h")["throttled"] is True


def test_bad_spec_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"kumo.make_throttle: invalid rate"):
        call(tmp_path, "return kumo.make_throttle('x', '10/fortnight')")
    with pytest.raises(PolicyError, match="name must be a string"):
        call(tmp_path, "return kumo.make_throttle(nil, '10/s')")


def test_sleep_if_throttled_cannot_wait_in_a_synchronous_event(tmp_path: Path) -> None:
    events = PolicyEvents(load(tmp_path, POLICY))
    assert events.call("sleep", "s", "1/h") is False  # allowed: no wait needed
    with pytest.raises(
        PolicyError, match=r"throttle:sleep_if_throttled: cannot wait in this event"
    ):
        events.call("sleep", "s", "1/h")


async def test_sleep_if_throttled_waits_without_blocking_the_loop(tmp_path: Path) -> None:
    rt = load(tmp_path, POLICY)
    assert await fire(rt, "sleep", "z", "local:5/s,max_burst=1") is False
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.ensure_future(ticker())
    started = time.monotonic()
    try:
        assert await fire(rt, "sleep", "z", "local:5/s,max_burst=1") is True
    finally:
        task.cancel()
    # the GCRA admits the second one T = 0.2 s after the first: it slept at least most of it
    assert time.monotonic() - started >= 0.1
    assert ticks >= 2  # the loop ran other work while the handler slept


def test_methods_kumoq_lacks_are_named(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="throttle:explain is not available in kumoq"):
        call(tmp_path, "return kumo.make_throttle('x', '1/s'):explain()")


def test_delay_message_if_throttled_sets_the_due_time_when_throttled(tmp_path: Path) -> None:
    result = call(
        tmp_path,
        """
        local t = kumo.make_throttle('delays', '1/h')
        local msg = kumo.make_message(
          'a@example.com', 'b@example.com', 'Subject: x\\r\\n\\r\\nhi\\r\\n'
        )
        return { t:delay_message_if_throttled(msg), t:delay_message_if_throttled(msg) }
        """,
    )
    assert result == [False, True]


SHARED_POLICY = """
local kumo = require 'kumo'
kumo.on('check', function(name, spec)
  return kumo.make_throttle(name, spec):throttle()
end)
kumo.on('sleep', function(name, spec)
  return kumo.make_throttle(name, spec):sleep_if_throttled()
end)
kumo.on('delay', function(name, spec)
  local msg = kumo.make_message('a@example.com', 'b@example.com', 'Subject: x\\r\\n\\r\\nx\\r\\n')
  return kumo.make_throttle(name, spec):delay_message_if_throttled(msg)
end)
"""


class OtherNodes:
    """A shared backend (the seam redis plugs into) whose state other nodes have already
    used up: every check of a key it holds is throttled."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def check_async(
        self, key: str, spec: ThrottleSpec, now: float, quantity: int = 1
    ) -> ThrottleResult:
        self.asked.append(key)
        return ThrottleResult(True, 1, 0, 60.0, 60.0, 60.0)


@pytest.mark.parametrize("event", ["check", "sleep_once", "delay"])
async def test_a_shared_throttle_is_asked_in_events_that_can_wait(
    tmp_path: Path, event: str
) -> None:
    rt = load(tmp_path, SHARED_POLICY)
    other = OtherNodes()
    rt.waits.throttle = Throttle(shared=other)
    if event == "check":
        result = await fire(rt, "check", "tenant", "10/s")
        assert result["throttled"] is True  # the local state alone would admit it
    elif event == "delay":
        assert await fire(rt, "delay", "tenant", "10/s") is True
    else:
        task = asyncio.ensure_future(fire(rt, "sleep", "tenant", "10/s"))
        await asyncio.sleep(0.05)  # it sleeps on the shared answer (60 s)
        assert not task.done()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert other.asked == ["lua-user-throttle-tenant"]
    # local: specs never go to the shared backend
    assert (await fire(rt, "check", "tenant", "local:10/s"))["throttled"] is False
    assert other.asked == ["lua-user-throttle-tenant"]


def test_a_shared_throttle_is_checked_locally_where_the_policy_cannot_wait(
    tmp_path: Path,
) -> None:
    rt = load(tmp_path, SHARED_POLICY)
    other = OtherNodes()
    rt.waits.throttle = Throttle(shared=other)
    assert PolicyEvents(rt).call("check", "tenant", "10/s")["throttled"] is False
    assert other.asked == []


def test_sleep_if_throttled_on_a_shared_throttle_in_a_synchronous_event(tmp_path: Path) -> None:
    rt = load(tmp_path, SHARED_POLICY)
    rt.waits.throttle = Throttle(shared=OtherNodes())
    events = PolicyEvents(rt)
    assert events.call("sleep", "t", "1/h") is False  # admitted by the process's own state
    with pytest.raises(PolicyError, match="cannot wait in this event"):
        events.call("sleep", "t", "1/h")
