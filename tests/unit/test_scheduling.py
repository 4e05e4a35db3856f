"""kumoq.scheduler.scheduling: set_scheduling parsing, windows across days, zones and DST edges."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kumoq.lua.message
from kumoq.errors import ConfigError
from kumoq.scheduler.scheduling import (
    adjust_for_schedule,
    expires_of,
    format_due,
    next_allowed,
    parse_rfc3339,
    parse_scheduling,
)

ALL_DAYS = "Mon,Tue,Wed,Thu,Fri,Sat,Sun"


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def window(dow: str, tz: str, start: str, end: str, **more: str) -> dict[str, str]:
    return parse_scheduling({"dow": dow, "tz": tz, "start": start, "end": end, **more})


def test_the_lua_bridge_uses_these_helpers():
    assert kumoq.lua.message.parse_scheduling is parse_scheduling
    assert kumoq.lua.message.adjust_for_schedule is adjust_for_schedule
    assert kumoq.lua.message.format_due is format_due


def test_parse_normalizes():
    assert window("wednesday,MON", "America/Phoenix", "09:00", "17:00:00.5") == {
        "dow": "Mon,Wed",
        "tz": "America/Phoenix",
        "start": "09:00:00",
        "end": "17:00:00",
    }
    assert parse_scheduling({"first_attempt": "2024-01-02T09:00:00Z"}) == {
        "first_attempt": "2024-01-02T09:00:00+00:00"
    }
    assert parse_scheduling({}) == {}


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"dow": "Mon", "tz": "UTC", "start": "17:00", "end": "09:00"}, "'start' must be before"),
        ({"dow": "Mon"}, "missing tz, start, end"),
        ({"dow": "", "tz": "UTC", "start": "09:00", "end": "10:00"}, "dow: invalid day ''"),
        ({"dow": 1, "tz": "UTC", "start": "09:00", "end": "10:00"}, "dow: expected a string"),
        ({"dow": "Mon", "tz": "", "start": "09:00", "end": "10:00"}, "tz: expected a time zone"),
        ({"expires": "2024-01-02"}, "expires: expected an RFC 3339 time"),
        ({"expires": "2024-01-02T25:00:00Z"}, "expires: invalid RFC 3339 time"),
        ({"tz": "UTC", "other": 1}, "unknown key 'other'"),
    ],
)
def test_parse_rejects(mapping, message):
    with pytest.raises(ConfigError, match=message):
        parse_scheduling(mapping)


def test_parse_rfc3339():
    assert parse_rfc3339("k", "2024-01-02T09:00:00-07:00").timestamp() == ts(
        "2024-01-02T16:00:00+00:00"
    )
    with pytest.raises(ConfigError, match=r"k: RFC 3339 time .* needs a UTC offset"):
        parse_rfc3339("k", "2024-01-02T09:00:00")


# -- windows across days ---------------------------------------------------------------------

WEEKDAYS_PHOENIX = window("Mon,Tue,Wed,Thu,Fri", "America/Phoenix", "09:00", "17:00")


@pytest.mark.parametrize(
    ("due", "expected"),
    [
        ("2023-03-27T10:00:00-07:00", "2023-03-27T10:00:00-07:00"),  # Monday, inside
        ("2023-03-27T09:00:00-07:00", "2023-03-27T09:00:00-07:00"),  # exactly at start
        ("2023-03-27T08:59:59-07:00", "2023-03-27T09:00:00-07:00"),  # just before
        ("2023-03-27T16:59:59-07:00", "2023-03-27T16:59:59-07:00"),  # just before end
        ("2023-03-27T17:00:00-07:00", "2023-03-28T09:00:00-07:00"),  # end is exclusive
        ("2023-03-31T18:00:00-07:00", "2023-04-03T09:00:00-07:00"),  # Friday evening
        ("2023-04-01T12:00:00-07:00", "2023-04-03T09:00:00-07:00"),  # Saturday
        ("2023-04-02T23:59:59-07:00", "2023-04-03T09:00:00-07:00"),  # Sunday night
    ],
)
def test_weekday_window(due, expected):
    assert next_allowed(ts(due), WEEKDAYS_PHOENIX) == ts(expected)


def test_single_day_waits_a_week():
    sched = window("Wed", "UTC", "09:00", "10:00")
    # Wednesday 2024-01-03 10:00 is past the window: the next one is a week later
    assert next_allowed(ts("2024-01-03T10:00:00Z"), sched) == ts("2024-01-10T09:00:00Z")


def test_kumomta_examples():
    tuesday = ts("2023-03-28T08:00:00-08:00")
    assert next_allowed(tuesday, window("Mon,Wed", "America/Phoenix", "09:00", "17:00")) == ts(
        "2023-03-29T09:00:00-07:00"
    )
    monday_evening = ts("2023-03-27T18:00:00-08:00")
    assert next_allowed(
        monday_evening, window("Mon,Fri", "America/Phoenix", "09:00", "17:00")
    ) == ts("2023-03-31T09:00:00-07:00")


def test_first_attempt_comes_first():
    sched = window("Mon", "UTC", "09:00", "17:00", first_attempt="2024-01-08T18:00:00Z")
    # Monday 2024-01-08 at noon is inside a window, but first_attempt is that evening
    assert next_allowed(ts("2024-01-08T12:00:00Z"), sched) == ts("2024-01-15T09:00:00Z")
    only_first = parse_scheduling({"first_attempt": "2024-01-08T18:00:00+01:00"})
    assert next_allowed(ts("2024-01-01T00:00:00Z"), only_first) == ts("2024-01-08T17:00:00Z")
    assert next_allowed(ts("2024-02-01T00:00:00Z"), only_first) == ts("2024-02-01T00:00:00Z")


def test_no_schedule_or_no_restriction_leaves_due_alone():
    due = ts("2024-01-08T12:00:00Z")
    assert next_allowed(due, None) == due
    assert next_allowed(due, {}) == due
    assert next_allowed(due, parse_scheduling({"expires": "2024-01-01T00:00:00Z"})) == due


def test_empty_window_returns_its_start_like_kumomta():
    sched = window(ALL_DAYS, "UTC", "09:00", "09:00")
    assert next_allowed(ts("2024-01-08T08:00:00Z"), sched) == ts("2024-01-08T09:00:00Z")
    assert next_allowed(ts("2024-01-08T09:00:00Z"), sched) == ts("2024-01-09T09:00:00Z")


def test_beyond_the_calendar_is_left_alone():
    assert next_allowed(1e19, WEEKDAYS_PHOENIX) == 1e19
    friday_9999 = ts("9999-12-31T18:00:00-07:00")  # the next Monday is past year 9999
    assert next_allowed(friday_9999, WEEKDAYS_PHOENIX) == friday_9999


# -- time zones ------------------------------------------------------------------------------


def test_phoenix_has_no_dst():
    sched = window("Mon", "America/Phoenix", "09:00", "17:00")
    assert next_allowed(ts("2024-01-08T00:00:00Z"), sched) == ts("2024-01-08T16:00:00Z")
    assert next_allowed(ts("2024-07-08T00:00:00Z"), sched) == ts("2024-07-08T16:00:00Z")
    denver = window("Mon", "America/Denver", "09:00", "17:00")
    assert next_allowed(ts("2024-01-08T00:00:00Z"), denver) == ts("2024-01-08T16:00:00Z")
    assert next_allowed(ts("2024-07-08T00:00:00Z"), denver) == ts("2024-07-08T15:00:00Z")


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        ("UTC", "2024-01-08T09:00:00Z"),
        ("Asia/Kolkata", "2024-01-08T03:30:00Z"),  # +05:30
        ("America/St_Johns", "2024-01-08T12:30:00Z"),  # -03:30
        ("Pacific/Chatham", "2024-01-07T19:15:00Z"),  # +13:45 in its summer
        ("Pacific/Kiritimati", "2024-01-07T19:00:00Z"),  # +14
    ],
)
def test_windows_follow_the_zone(tz, expected):
    # 2024-01-07T18:00Z is still Sunday in the west, already Monday morning in the far east
    sched = window("Mon", tz, "09:00", "17:00")
    assert format_due(next_allowed(ts("2024-01-07T18:00:00Z"), sched)) == expected


# -- DST edges -------------------------------------------------------------------------------
# America/New_York: 2024-03-10 02:00 EST -> 03:00 EDT; 2024-11-03 02:00 EDT -> 01:00 EST.


def test_spring_forward_lands_on_the_window_start():
    sched = window(ALL_DAYS, "America/New_York", "09:00", "17:00")
    # KumoMTA's "start + 24h" would give 10:00 EDT here
    assert next_allowed(ts("2024-03-09T18:00:00-05:00"), sched) == ts("2024-03-10T09:00:00-04:00")
    assert next_allowed(ts("2024-11-02T18:00:00-04:00"), sched) == ts("2024-11-03T09:00:00-05:00")


def test_start_near_midnight_does_not_skip_a_day_across_dst():
    sched = window(ALL_DAYS, "America/New_York", "23:30", "23:45")
    assert next_allowed(ts("2024-03-09T23:50:00-05:00"), sched) == ts("2024-03-10T23:30:00-04:00")


def test_a_start_in_the_spring_gap_skips_that_day():
    sched = window(ALL_DAYS, "America/New_York", "02:30", "04:00")
    assert next_allowed(ts("2024-03-09T05:00:00-05:00"), sched) == ts("2024-03-11T02:30:00-04:00")
    assert next_allowed(ts("2024-03-10T03:30:00-04:00"), sched) == ts("2024-03-11T02:30:00-04:00")


def test_an_end_in_the_spring_gap_skips_that_day():
    sched = window(ALL_DAYS, "America/New_York", "01:00", "02:30")
    assert next_allowed(ts("2024-03-10T00:30:00-05:00"), sched) == ts("2024-03-11T01:00:00-04:00")


def test_an_ambiguous_start_in_the_fall_skips_that_day():
    sched = window(ALL_DAYS, "America/New_York", "01:30", "03:00")
    assert next_allowed(ts("2024-11-02T04:00:00-04:00"), sched) == ts("2024-11-04T01:30:00-05:00")


def test_the_repeated_hour_is_inside_a_wide_window():
    sched = window(ALL_DAYS, "America/New_York", "00:00", "23:00")
    first = ts("2024-11-03T01:30:00-04:00")
    second = ts("2024-11-03T01:30:00-05:00")
    assert next_allowed(first, sched) == first
    assert next_allowed(second, sched) == second
    assert next_allowed(ts("2024-11-03T23:30:00-05:00"), sched) == ts("2024-11-04T00:00:00-05:00")


def test_london_spring_forward():
    sched = window("Sun", "Europe/London", "09:00", "17:00")
    assert next_allowed(ts("2024-03-30T12:00:00Z"), sched) == ts("2024-03-31T08:00:00Z")
    skipped = window("Sun", "Europe/London", "01:15", "05:00")
    # 01:15 does not exist on 2024-03-31: the next Sunday, nine days on
    assert next_allowed(ts("2024-03-30T12:00:00Z"), skipped) == ts("2024-04-07T00:15:00Z")


# -- expires and formatting ------------------------------------------------------------------


def test_expires_of():
    assert expires_of(None) is None
    assert expires_of({}) is None
    sched = parse_scheduling({"expires": "2024-01-02T09:00:00-07:00"})
    assert expires_of(sched) == ts("2024-01-02T16:00:00Z")


def test_format_due():
    assert format_due(ts("2023-03-31T09:00:00-07:00")) == "2023-03-31T16:00:00Z"
    assert format_due(0.5) == "1970-01-01T00:00:00.500000Z"


# -- property: the result is the earliest permitted instant ----------------------------------

ZONES = ["UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe", "America/Phoenix"]
DAY_NAMES = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


@st.composite
def schedules(draw: st.DrawFn) -> dict[str, str]:
    days = draw(st.lists(st.sampled_from(DAY_NAMES), min_size=1, max_size=7, unique=True))
    a = draw(st.integers(0, 24 * 4 - 1))
    b = draw(st.integers(a + 1, 24 * 4))
    start = time(a // 4, a % 4 * 15)
    end = time(23, 59, 59) if b == 24 * 4 else time(b // 4, b % 4 * 15)
    return window(",".join(days), draw(st.sampled_from(ZONES)), str(start), str(end))


def permitted(sched: dict[str, str], t: float) -> bool:
    tz = ZoneInfo(sched["tz"])
    local = datetime.fromtimestamp(t, tz)
    if local.strftime("%a") not in sched["dow"].split(","):
        return False
    start, end = time.fromisoformat(sched["start"]), time.fromisoformat(sched["end"])
    return start <= local.time().replace(microsecond=0) < end


@settings(max_examples=300, deadline=None)
@given(
    sched=schedules(),
    t=st.integers(
        int(datetime(2020, 1, 1, tzinfo=UTC).timestamp()),
        int(datetime(2030, 1, 1, tzinfo=UTC).timestamp()),
    ),
)
def test_result_is_permitted_and_no_earlier_start_was_missed(sched, t):
    got = next_allowed(float(t), sched)
    assert got >= t
    assert permitted(sched, got)
    if got > t:
        tz = ZoneInfo(sched["tz"])
        assert datetime.fromtimestamp(got, tz).time() == time.fromisoformat(sched["start"])
        # no window opened in between (checked every quarter hour, on window boundaries)
        probe = t - t % 900 + 900
        while probe < got:
            assert not permitted(sched, probe) or _skipped_day(sched, probe), probe
            probe += 900


def _skipped_day(sched: dict[str, str], t: float) -> bool:
    """The day of ``t`` has a start or end that is not one instant (a DST day KumoMTA skips)."""
    tz = ZoneInfo(sched["tz"])
    day = datetime.fromtimestamp(t, tz).date()
    for key in ("start", "end"):
        wall = datetime.combine(day, time.fromisoformat(sched[key]), tzinfo=tz)
        if wall.utcoffset() != wall.replace(fold=1).utcoffset():
            return True
    return False
