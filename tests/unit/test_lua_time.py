"""kumo.time: Time and TimeDelta objects, their constructors, and sleeping."""

from __future__ import annotations

import asyncio
import time

import pytest

from kumoq.clock import FakeClock
from kumoq.errors import PolicyError
from kumoq.lua import PolicyEvents
from kumoq.metrics import USER_LUA_LATENCY
from tests.unit.lua_kumo_support import call, load


def test_the_documented_time_example(tmp_path):
    load(
        tmp_path,
        """
        local utils = {}
        function utils.assert_eq(a, b)
          assert(a == b, tostring(a) .. ' ~= ' .. tostring(b))
        end
        local t = kumo.time.with_ymd_hms(2000, 01, 02, 03, 04, 05)
        utils.assert_eq(tostring(t), '2000-01-02 03:04:05 UTC')
        utils.assert_eq(t.year, 2000)
        utils.assert_eq(t.month, 1)
        utils.assert_eq(t.day, 2)
        utils.assert_eq(t.hour, 3)
        utils.assert_eq(t.minute, 4)
        utils.assert_eq(t.second, 5)
        utils.assert_eq(t.unix_timestamp, 946782245)
        utils.assert_eq(t.unix_timestamp_millis, 946782245000)
        utils.assert_eq(t.rfc2822, 'Sun, 2 Jan 2000 03:04:05 +0000')
        utils.assert_eq(t.rfc3339, '2000-01-02T03:04:05+00:00')

        utils.assert_eq(kumo.time.parse_rfc2822(t.rfc2822), t)
        utils.assert_eq(kumo.time.parse_rfc2822 'Sun, 2 Jan 2000 03:04:05 UTC', t)
        utils.assert_eq(kumo.time.parse_rfc3339(t.rfc3339), t)
        utils.assert_eq(kumo.time.parse_rfc3339 '2000-01-02T05:04:05+02:00', t)
        utils.assert_eq(kumo.time.from_unix_timestamp(t.unix_timestamp), t)
        utils.assert_eq(t:format '%H:%M:%S%', '03:04:05%')
        utils.assert_eq(
          t:format '%Y-%m-%d %a %e %-d %.3f %s %Z',
          '2000-01-02 Sun  2 2 .000 946782245 UTC'
        )

        local epoch = kumo.time.from_unix_timestamp(0)
        local half = kumo.time.from_unix_timestamp(0.5)
        utils.assert_eq(tostring(half), '1970-01-01 00:00:00.500 UTC')
        local delta = half - epoch
        utils.assert_eq(delta.seconds, 0.5)
        utils.assert_eq(delta.human, '500ms')
        utils.assert_eq(tostring(half + delta), '1970-01-01 00:00:01 UTC')
        utils.assert_eq(tostring(half - kumo.time.parse_duration(0.5)), '1970-01-01 00:00:00 UTC')

        local one_and_half = delta + delta + delta
        utils.assert_eq(one_and_half.seconds, 1.5)
        local one = one_and_half - delta
        utils.assert_eq(one.nanoseconds, 1000000000)
        utils.assert_eq(one.microseconds, 1000000)
        utils.assert_eq(one.milliseconds, 1000)
        utils.assert_eq(one.human, '1s')
        utils.assert_eq(kumo.time.parse_duration(2), kumo.time.parse_duration '2s')
        local d = kumo.time.parse_duration '5 mins'
        utils.assert_eq(d.seconds, 300)
        utils.assert_eq(tostring(d), '5m')
        utils.assert_eq(kumo.time.parse_duration('1h 30m').human, '1h 30m')
        utils.assert_eq(kumo.time.parse_duration('90061s').human, '1day 1h 1m 1s')
        local ten, twenty = kumo.time.parse_duration '10 seconds', kumo.time.parse_duration(20)
        utils.assert_eq((ten - twenty).seconds, -10)
        utils.assert_eq((epoch - half).milliseconds, -500)
        """,
    )


def test_now_and_elapsed_follow_the_runtime_clock(tmp_path):
    clock = FakeClock(start=946782245.25)
    got = call(
        tmp_path,
        """
        local t = kumo.time.now()
        return { t.rfc3339, t.elapsed.seconds, t.unix_timestamp_millis }
        """,
        clock=clock,
    )
    assert got == ["2000-01-02T03:04:05.250+00:00", 0.0, 946782245250]


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("kumo.time.with_ymd_hms(2000, 2, 30, 0, 0, 0)", "time cannot be represented"),
        ("kumo.time.with_ymd_hms(2000, 2)", "expected six integers"),
        ("kumo.time.parse_rfc3339 'yesterday'", "invalid RFC 3339 timestamp 'yesterday'"),
        ("kumo.time.parse_rfc2822 'nope'", "invalid RFC 2822 date 'nope'"),
        ("kumo.time.parse_duration 'soon'", "invalid duration 'soon'"),
        ("kumo.time.parse_duration(-1.5)", "cannot convert float seconds"),
        ("kumo.time.from_unix_timestamp('x')", "timestamp must be either an integer or floating"),
        ("kumo.time.now().weekday", "Time has no field weekday"),
        ("kumo.time.now() + kumo.time.now()", "a Time can only be added a TimeDelta"),
        ("kumo.time.parse_duration(-1).human", "a negative duration has no human form"),
        ("kumo.time.from_unix_timestamp(10^12)", "out of range"),
    ],
)
def test_time_errors_are_at_the_policy_line(tmp_path, expr, message):
    with pytest.raises(PolicyError, match=message) as info:
        call(tmp_path, f"local x = 1\nlocal r = {expr}")
    assert info.value.location == "init.lua:3"


def test_time_objects_are_immutable_and_protected(tmp_path):
    got = call(
        tmp_path,
        """
        local t = kumo.time.now()
        local ok = pcall(function() t.year = 1 end)
        return { ok, getmetatable(t), getmetatable(kumo.time.parse_duration(1)) }
        """,
    )
    assert got == [False, "Time", "TimeDelta"]


async def test_sleep_waits_without_blocking_the_loop(tmp_path):
    rt = load(
        tmp_path,
        """
        kumo.on('nap', function(seconds)
          kumo.time.sleep(seconds)
          kumo.sleep(0)
          return 'rested'
        end)
        """,
    )
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    assert await rt.invoke_async("nap", "v", 0.2) == "rested"
    task.cancel()
    assert time.monotonic() - started >= 0.2
    assert ticks >= 5  # the loop ran while the handler slept


def test_sleep_in_a_synchronous_event_is_an_error(tmp_path):
    with pytest.raises(PolicyError, match=r"kumo.time.sleep: cannot sleep in this event"):
        call(tmp_path, "kumo.time.sleep(0.01)")
    with pytest.raises(PolicyError, match=r"kumo.time.sleep: expected a number of seconds >= 0"):
        call(tmp_path, "kumo.sleep(-1)")


def test_start_timer_records_the_elapsed_seconds_once_in_user_lua_latency(tmp_path):
    clock = FakeClock()
    rt = load(
        tmp_path,
        """
        local timer
        kumo.on('start', function() timer = kumo.time.start_timer 'tq-op' end)
        kumo.on('stop', function() return { timer:done(), timer:done() } end)
        kumo.on('scoped', function()
          do
            local t <close> = kumo.time.start_timer 'tq-scoped'
          end
          return true
        end)
        kumo.on('bad', function() return kumo.time.start_timer(42) end)
        """,
        clock=clock,
    )
    events = PolicyEvents(rt)
    op, scoped = USER_LUA_LATENCY.child("tq-op"), USER_LUA_LATENCY.child("tq-scoped")
    before, before_scoped = sum(op.counts), sum(scoped.counts)
    events.call("start")
    clock.advance(1.5)
    assert events.call("stop") == [1.5, 1.5]  # the second done() only returns the seconds
    assert sum(op.counts) == before + 1
    assert op.sum >= 1.5
    assert events.call("scoped") is True  # <close> called done()
    assert sum(scoped.counts) == before_scoped + 1
    with pytest.raises(PolicyError, match="start_timer: expected a label string, got number"):
        events.call("bad")
