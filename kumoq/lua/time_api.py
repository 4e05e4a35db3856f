"""The arithmetic and text of ``kumo.time`` (KumoMTA's ``Time`` and ``TimeDelta`` objects).

The Lua objects (``kumo_time.lua``) hold one integer each: a ``Time`` the nanoseconds since the
Unix epoch (UTC), a ``TimeDelta`` a signed number of nanoseconds. So a time is representable
from 1677-09-21 to 2262-04-11 (KumoMTA's chrono reaches further) and a delta up to about 292
years either way. Adding and subtracting happen in Lua; this module does what needs a calendar
or text:

- ``time_fields(ns)``: the ``Time`` fields (``year`` ... ``rfc3339``), as chrono gives them;
- ``time_text(ns)``: ``tostring`` (``2000-01-02 03:04:05 UTC``, fractions as ``.500``);
- ``format_time(ns, fmt)``: ``Time:format``, chrono's strftime, leniently (an unknown or
  trailing ``%`` stays as written);
- ``parse_rfc2822``, ``parse_rfc3339``, ``from_ymd_hms``, ``from_unix_timestamp``;
- ``parse_delta(value)``: ``kumo.time.parse_duration`` (seconds, or a humantime string such as
  ``'5 minutes'`` or ``'1h 30m'``);
- ``human(ns)``: humantime's ``format_duration`` (``5m``, ``1h 30m``, ``500ms``).

Pure (no IO, no clock: the current time comes in as an argument); imports only the standard
library and kumoq.lua.message (LuaApiError).
"""

from __future__ import annotations

import datetime
import email.utils
import re
from typing import Any, Final

from kumoq.lua.message import LuaApiError

__all__ = [
    "NS",
    "format_time",
    "from_unix_timestamp",
    "from_ymd_hms",
    "human",
    "parse_delta",
    "parse_rfc2822",
    "parse_rfc3339",
    "time_fields",
    "time_text",
]

NS: Final = 1_000_000_000
_MIN: Final = -(2**63)
_MAX: Final = 2**63 - 1
_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)

_UNITS: Final[dict[str, int]] = {}
for _names, _ns in (
    (("nanos", "nsec", "ns"), 1),
    (("usec", "us", "µs"), 1_000),
    (("millis", "msec", "ms"), 1_000_000),
    (("seconds", "second", "secs", "sec", "s"), NS),
    (("minutes", "minute", "mins", "min", "m"), 60 * NS),
    (("hours", "hour", "hrs", "hr", "h"), 3600 * NS),
    (("days", "day", "d"), 86400 * NS),
    (("weeks", "week", "w"), 604800 * NS),
    (("months", "month", "M"), 2_630_016 * NS),
    (("years", "year", "y"), 31_557_600 * NS),
):
    for _n in _names:
        _UNITS[_n] = _ns
_SPAN: Final = re.compile(r"\s*(\d+)\s*([A-Za-zµ]+)\s*")


def _checked(ns: int, what: str = "time") -> int:
    if not _MIN <= ns <= _MAX:
        raise LuaApiError(f"{what} out of range (kumoq keeps times from 1677 to 2262)")
    return ns


def _datetime(ns: int) -> datetime.datetime:
    """The UTC datetime of ``ns`` to the microsecond (the nanoseconds are formatted apart)."""
    return _EPOCH + datetime.timedelta(microseconds=ns // 1000)


def _fraction(ns: int) -> str:
    """chrono's ``%.f``: nothing, or 3, 6 or 9 digits, as few as show the value."""
    frac = ns % NS
    if frac == 0:
        return ""
    if frac % 1_000_000 == 0:
        return f".{frac // 1_000_000:03d}"
    if frac % 1000 == 0:
        return f".{frac // 1000:06d}"
    return f".{frac:09d}"


def time_text(ns: int) -> str:
    return _datetime(ns).strftime("%Y-%m-%d %H:%M:%S") + _fraction(ns) + " UTC"


def _rfc2822(dt: datetime.datetime) -> str:
    return f"{dt:%a}, {dt.day} {dt:%b %Y %H:%M:%S} +0000"


def time_fields(ns: int) -> dict[str, Any]:
    dt = _datetime(ns)
    return {
        "year": dt.year,
        "month": dt.month,
        "day": dt.day,
        "hour": dt.hour,
        "minute": dt.minute,
        "second": dt.second,
        "unix_timestamp": ns // NS,
        "unix_timestamp_millis": ns // 1_000_000,
        "rfc2822": _rfc2822(dt),
        "rfc3339": dt.strftime("%Y-%m-%dT%H:%M:%S") + _fraction(ns) + "+00:00",
    }


# -- strftime as chrono spells it ----------------------------------------------------------------

_PLAIN: Final = {
    "Y": "%Y", "m": "%m", "d": "%d", "H": "%H", "M": "%M", "S": "%S", "y": "%y", "b": "%b",
    "h": "%b", "B": "%B", "a": "%a", "A": "%A", "j": "%j", "U": "%U", "W": "%W", "G": "%G",
    "V": "%V", "I": "%I", "p": "%p", "w": "%w", "u": "%u", "D": "%m/%d/%y", "x": "%m/%d/%y",
    "F": "%Y-%m-%d", "R": "%H:%M", "T": "%H:%M:%S", "X": "%H:%M:%S", "r": "%I:%M:%S %p",
    "c": "%a %b %e %H:%M:%S %Y", "v": "%e-%b-%Y",
}  # fmt: skip
_ITEM: Final = re.compile(r"%([-_0]?)(\.?[369]?f|[369]f|:{1,3}z|#z|[A-Za-z%+])")


def _spec(dt: datetime.datetime, ns: int, pad: str, spec: str) -> str | None:
    frac = ns % NS
    if spec == "%":
        return "%"
    if spec in ("t", "n"):
        return "\t" if spec == "t" else "\n"
    if spec in ("Z", "z", ":z", "::z", ":::z", "#z"):
        return {"Z": "UTC", "z": "+0000", ":z": "+00:00", "::z": "+00:00:00"}.get(spec, "+00")
    if spec == "s":
        return str(ns // NS)
    if spec == "+":
        return dt.strftime("%Y-%m-%dT%H:%M:%S") + _fraction(ns) + "+00:00"
    if spec == "f":
        return f"{frac:09d}"
    if spec == ".f":
        return _fraction(ns)
    if spec.endswith("f"):
        digits = int(spec.strip(".")[0])
        text = f"{frac:09d}"[:digits]
        return "." + text if spec.startswith(".") else text
    if spec in ("e", "k", "l", "C", "P", "g"):
        value = {
            "e": (dt.day, 2, " "),
            "k": (dt.hour, 2, " "),
            "l": ((dt.hour % 12) or 12, 2, " "),
            "C": (dt.year // 100, 2, "0"),
            "g": (dt.isocalendar().year % 100, 2, "0"),
        }.get(spec)
        if value is None:
            return "am" if dt.hour < 12 else "pm"
        number, width, fill = value
        return str(number).rjust(width, fill)
    code = _PLAIN.get(spec)
    if code is None:
        return None
    text = dt.strftime(code.replace("%e", f"{dt.day:>2}"))
    if pad and code in ("%m", "%d", "%H", "%M", "%S", "%I", "%j", "%y", "%U", "%W", "%V"):
        text = text.lstrip("0") or "0" if pad == "-" else text.lstrip("0").rjust(len(text), " ")
    return text


def format_time(ns: int, fmt: str) -> str:
    """``Time:format(fmt)``: chrono's strftime items; an unknown item stays as written."""
    dt = _datetime(ns)
    out: list[str] = []
    pos = 0
    for m in _ITEM.finditer(fmt):
        text = _spec(dt, ns, m.group(1), m.group(2))
        out.append(fmt[pos : m.start()])
        out.append(m.group(0) if text is None else text)
        pos = m.end()
    out.append(fmt[pos:])
    return "".join(out)


# -- constructors --------------------------------------------------------------------------------


def _to_ns(dt: datetime.datetime) -> int:
    delta = dt - _EPOCH
    return _checked((delta.days * 86400 + delta.seconds) * NS + delta.microseconds * 1000)


def from_unix_timestamp(seconds: object) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise LuaApiError("timestamp must be either an integer or floating point number of seconds")
    if isinstance(seconds, int):
        return _checked(seconds * NS, "invalid timestamp: time")
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise LuaApiError("invalid timestamp")
    whole = int(seconds)
    return _checked(whole * NS + int((seconds - whole) * NS), "invalid timestamp: time")


def from_ymd_hms(*parts: object) -> int:
    numbers = [int(p) for p in parts if type(p) is int or (type(p) is float and p.is_integer())]
    if len(parts) != 6 or len(numbers) != 6:
        raise LuaApiError("expected six integers: year, month, day, hour, minute, second")
    year, month, day, hour, minute, second = numbers
    try:
        dt = datetime.datetime(year, month, day, hour, minute, second, tzinfo=datetime.UTC)
    except ValueError as e:
        raise LuaApiError(f"time cannot be represented: {e}") from None
    return _to_ns(dt)


_RFC3339: Final = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(\.\d+)?([Zz]|[+-]\d\d:\d\d)$"
)


def parse_rfc3339(text: object) -> int:
    m = _RFC3339.match(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise LuaApiError(f"invalid RFC 3339 timestamp {text!r}")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    zone = m.group(8).upper()
    offset = 0 if zone == "Z" else int(zone[1:3]) * 3600 + int(zone[4:6]) * 60
    offset = -offset if zone.startswith("-") else offset
    try:
        dt = datetime.datetime(year, month, day, hour, minute, min(second, 59), tzinfo=datetime.UTC)
    except ValueError as e:
        raise LuaApiError(f"invalid RFC 3339 timestamp {text!r}: {e}") from None
    frac = (m.group(7) or ".")[1:10].ljust(9, "0")
    return _checked(_to_ns(dt) - offset * NS + int(frac))


def parse_rfc2822(text: object) -> int:
    try:
        dt = email.utils.parsedate_to_datetime(str(text))
    except (TypeError, ValueError, IndexError):
        raise LuaApiError(f"invalid RFC 2822 date {text!r}") from None
    if dt.tzinfo is None:  # "-0000": UTC with no claim about the local zone
        dt = dt.replace(tzinfo=datetime.UTC)
    return _to_ns(dt.astimezone(datetime.UTC))


# -- durations -----------------------------------------------------------------------------------


def parse_delta(value: object) -> int:
    """``kumo.time.parse_duration``: nanoseconds from seconds or a humantime string."""
    if isinstance(value, bool):
        raise LuaApiError("invalid duration value")
    if isinstance(value, int):
        return _checked(value * NS, "seconds")
    if isinstance(value, float):
        if value != value or value < 0 or value == float("inf"):
            raise LuaApiError(f"cannot convert float seconds to a duration: {value!r}")
        return _checked(round(value * NS), "seconds")
    if not isinstance(value, str):
        raise LuaApiError("invalid duration value")
    text = value.strip()
    if not text:
        raise LuaApiError("invalid duration: value is empty")
    total = pos = 0
    while pos < len(text):
        m = _SPAN.match(text, pos)
        if m is None or m.group(2) not in _UNITS:
            raise LuaApiError(
                f"invalid duration {value!r}: expected spans like '5 minutes' or '1h 30m'"
            )
        total += int(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return _checked(total, "duration")


def human(ns: int) -> str:
    """humantime's ``format_duration``: ``1year 2months 3days 4h 5m 6s 7ms 8us 9ns``."""
    if ns < 0:
        raise LuaApiError("a negative duration has no human form (value out of range)")
    secs, nanos = divmod(ns, NS)
    parts: list[str] = []
    for unit, size, plural in (
        ("year", 31_557_600, True),
        ("month", 2_630_016, True),
        ("day", 86400, True),
        ("h", 3600, False),
        ("m", 60, False),
        ("s", 1, False),
    ):
        n, secs = divmod(secs, size)
        if n:
            parts.append(f"{n}{unit}{'s' if plural and n > 1 else ''}")
    for unit, size in (("ms", 1_000_000), ("us", 1000), ("ns", 1)):
        n, nanos = divmod(nanos, size)
        if n:
            parts.append(f"{n}{unit}")
    return " ".join(parts) or "0s"
