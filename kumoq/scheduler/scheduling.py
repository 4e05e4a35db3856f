"""Per-message scheduling (``msg:set_scheduling``, reference §2.10 and §3.1 "Scheduling windows").

Owns the schedule dict kept in ``Message.schedule`` and in the spool meta, as KumoMTA's
``crates/message/src/scheduling.rs`` serializes it::

    {"dow": "Mon,Wed", "tz": "America/Phoenix", "start": "09:00:00", "end": "17:00:00",
     "first_attempt": "2023-11-20T08:00:00-07:00", "expires": "2023-12-01T00:00:00+00:00"}

- ``parse_scheduling`` validates the Lua table (or the ``X-Schedule`` JSON) into that dict;
- ``next_allowed`` / ``adjust_for_schedule`` move a computed due time forward to ``first_attempt``
  and to the next allowed ``dow``/``tz``/``start``/``end`` window;
- ``expires_of`` gives the per-message expiry, ``format_due`` an RFC 3339 UTC string.

Window semantics follow KumoMTA, with one deliberate difference. A window is the half-open
interval ``[start, end)`` of local wall time on an allowed weekday. A day whose ``start`` or
``end`` does not name exactly one instant (it falls in a DST gap or in a repeated hour) is
skipped, as KumoMTA skips it. KumoMTA steps to "the same start time the next day" by adding 24
hours; across a DST change that lands an hour into the next window (or, for a start near
midnight, skips a day), so kumoq steps by calendar day and always lands on the window's start.

L0 (pure): imports only kumoq.errors and the standard library; no asyncio, IO or lupa. Bad values
raise ConfigError (a ValueError) naming the key, which the Lua bridge turns into a Lua error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from kumoq.errors import ConfigError

__all__ = [
    "adjust_for_schedule",
    "expires_of",
    "format_due",
    "next_allowed",
    "parse_rfc3339",
    "parse_scheduling",
]

_DAYS: Final = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_RESTRICTION: Final = ("dow", "tz", "start", "end")
_SCHEDULE_KEYS: Final = ("dow", "end", "expires", "first_attempt", "start", "tz")
_TIME: Final = re.compile(r"\d\d:\d\d(:\d\d(\.\d{1,9})?)?")
# Two weeks and a day: an allowed weekday skipped for DST comes round again a week later.
_SEARCH_DAYS: Final = 15


def _bad(key: str, msg: str) -> ConfigError:
    return ConfigError(f"{key}: {msg}")


def _parse_dow(value: object) -> str:
    if not isinstance(value, str):
        raise _bad("dow", f"expected a string such as 'Mon,Wed', got {value!r}")
    days: set[int] = set()
    for part in value.split(","):
        for index, label in enumerate(_DAYS):
            if part.lower() in (label.lower(), label[:3].lower()):
                days.add(index)
                break
        else:
            raise _bad("dow", f"invalid day '{part}'")
    return ",".join(_DAYS[i][:3] for i in sorted(days))


def _parse_tz(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _bad("tz", f"expected a time zone name such as 'America/Phoenix', got {value!r}")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise _bad("tz", f"unknown time zone {value!r}") from None
    return value


def _parse_time(key: str, value: object) -> str:
    if not isinstance(value, str) or not _TIME.fullmatch(value):
        raise _bad(key, f"expected a time of day such as '09:00:00', got {value!r}")
    try:
        parsed = time.fromisoformat(value[:15])
    except ValueError:
        raise _bad(key, f"invalid time of day {value!r}") from None
    return parsed.strftime("%H:%M:%S")


def parse_rfc3339(key: str, value: object) -> datetime:
    """An aware datetime from an RFC 3339 string with a UTC offset; ConfigError names ``key``."""
    if not isinstance(value, str) or len(value) < 11 or value[10] not in "Tt ":
        raise _bad(key, f"expected an RFC 3339 time such as '2024-01-02T09:00:00Z', got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _bad(key, f"invalid RFC 3339 time {value!r}") from None
    if parsed.tzinfo is None:
        raise _bad(key, f"RFC 3339 time {value!r} needs a UTC offset such as 'Z' or '-07:00'")
    return parsed


def parse_scheduling(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``set_scheduling{...}`` and return the normalized schedule dict.

    ``dow``, ``tz``, ``start`` and ``end`` must be given together or not at all, with
    ``start <= end`` (as KumoMTA requires); times are RFC 3339 with an offset; ``dow`` becomes
    ``"Mon,Wed"``, times of day ``"HH:MM:SS"``. Raises ConfigError.
    """
    unknown = sorted(str(k) for k in mapping if k not in _SCHEDULE_KEYS)
    if unknown:
        allowed = ", ".join(_SCHEDULE_KEYS)
        raise _bad("set_scheduling", f"unknown key {unknown[0]!r}; allowed keys are: {allowed}")
    given = [k for k in _RESTRICTION if mapping.get(k) is not None]
    out: dict[str, Any] = {}
    if given:
        if len(given) != len(_RESTRICTION):
            missing = ", ".join(k for k in _RESTRICTION if k not in given)
            raise _bad(
                "set_scheduling",
                f"dow, tz, start and end must be given together; missing {missing}",
            )
        out["dow"] = _parse_dow(mapping["dow"])
        out["tz"] = _parse_tz(mapping["tz"])
        out["start"] = _parse_time("start", mapping["start"])
        out["end"] = _parse_time("end", mapping["end"])
        if out["start"] > out["end"]:
            raise _bad(
                "set_scheduling",
                "'start' must be before 'end' and define a time window within a given day. "
                f"start={out['start']}, end={out['end']}",
            )
    for key in ("first_attempt", "expires"):
        value = mapping.get(key)
        if value is not None:
            out[key] = parse_rfc3339(key, value).isoformat()
    return out


@lru_cache(maxsize=256)
def _restriction(
    dow: str, tz: str, start: str, end: str
) -> tuple[frozenset[int], ZoneInfo, time, time]:
    days = frozenset(i for i, label in enumerate(_DAYS) if label[:3] in dow.split(","))
    return days, ZoneInfo(tz), time.fromisoformat(start), time.fromisoformat(end)


def _instant(day: date, tod: time, tz: ZoneInfo) -> float | None:
    """The unix time of wall time ``tod`` on ``day`` in ``tz``; None in a DST gap or overlap."""
    first = datetime.combine(day, tod, tzinfo=tz)
    if first.utcoffset() != first.replace(fold=1).utcoffset():
        return None
    return first.timestamp()


def _in_window(schedule: Mapping[str, Any], t: float) -> float:
    days, tz, start, end = _restriction(
        schedule["dow"], schedule["tz"], schedule["start"], schedule["end"]
    )
    try:
        day = datetime.fromtimestamp(t, tz).date()
    except (OverflowError, OSError, ValueError):
        return t  # beyond the calendar (a saturated retry delay): nothing to adjust
    for _ in range(_SEARCH_DAYS):
        if day.weekday() in days:
            opens = _instant(day, start, tz)
            closes = _instant(day, end, tz)
            if opens is not None and closes is not None:
                if t < opens:
                    return opens
                if t < closes:
                    return t
        try:
            day += timedelta(days=1)
        except OverflowError:
            return t
    return t


def adjust_for_schedule(schedule: Mapping[str, Any], t: float) -> float:
    """The earliest time at or after ``t`` that ``schedule`` permits (unix seconds).

    ``first_attempt`` moves ``t`` forward to it; a ``dow``/``tz``/``start``/``end`` restriction
    then moves it to the start of the next window unless ``t`` is inside one. If no window opens
    within 15 days (past the end of the calendar), ``t`` is returned as is.
    O(1): at most 15 days are examined; the parsed restriction is cached.
    """
    first = schedule.get("first_attempt")
    if first is not None:
        t = max(t, datetime.fromisoformat(first).timestamp())
    if "dow" not in schedule:
        return t
    return _in_window(schedule, t)


def next_allowed(due: float, schedule: Mapping[str, Any] | None) -> float:
    """``due`` moved forward to what ``schedule`` permits (unchanged when there is none)."""
    if schedule is None:
        return due
    return adjust_for_schedule(schedule, due)


def expires_of(schedule: Mapping[str, Any] | None) -> float | None:
    """The per-message expiry (``set_scheduling{expires=...}``) as unix seconds, or None."""
    if schedule is None:
        return None
    expires = schedule.get("expires")
    if expires is None:
        return None
    return datetime.fromisoformat(expires).timestamp()


def format_due(t: float) -> str:
    """A unix time as an RFC 3339 UTC string (``...Z``)."""
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
