"""Parsers for the value grammars shared by every config table, and the ``build`` helper.

- durations (KumoMTA's humantime grammar, reference §3.6): ``"20 minutes"``, ``"1h 30m"``, ``90``
- sizes: ``20971520``, ``"20 MiB"``, ``"1,000,000"``
- throttle specs (§3.5): ``"local:1,000/hr,max_burst=5"``
- limit specs: ``32``, ``"1,000"``, ``"local:20"``
- strict CIDR lists: ``{"127.0.0.1", "10.0.0.0/8"}``

Each parser raises ConfigError quoting the offending value. Imports only kumoq.errors.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from kumoq.errors import ConfigError

__all__ = [
    "Cidr",
    "LimitSpec",
    "ThrottleSpec",
    "build",
    "ip_in",
    "parse_bool",
    "parse_cidr_list",
    "parse_duration",
    "parse_enum",
    "parse_int",
    "parse_optional",
    "parse_size",
    "parse_str",
    "parse_str_list",
]

T = TypeVar("T")
Parser = Callable[[str, Any], Any]

_DURATION_UNITS: dict[str, float] = {}
for _names, _secs in (
    (("nanos", "nsec", "ns"), 1e-9),
    (("usec", "us", "µs"), 1e-6),
    (("millis", "msec", "ms"), 1e-3),
    (("seconds", "second", "secs", "sec", "s"), 1.0),
    (("minutes", "minute", "mins", "min", "m"), 60.0),
    (("hours", "hour", "hrs", "hr", "h"), 3600.0),
    (("days", "day", "d"), 86400.0),
    (("weeks", "week", "w"), 604800.0),
    (("months", "month", "M"), 2_630_016.0),
    (("years", "year", "y"), 31_557_600.0),
):
    for _n in _names:
        _DURATION_UNITS[_n] = _secs

_SPAN = re.compile(r"\s*(\d+)\s*([A-Za-zµ]+)\s*")


def parse_duration(key: str, value: Any) -> float:
    """Seconds from a number or a humantime string (``"1h 30m"``); rejects decimals in strings."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ConfigError(f"{key}: duration must not be negative, got {value!r}")
        return float(value)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}: expected a duration such as '20 minutes', got {value!r}")
    total = 0.0
    pos = 0
    text = value.strip()
    while pos < len(text):
        m = _SPAN.match(text, pos)
        if m is None or m.group(2) not in _DURATION_UNITS:
            raise ConfigError(
                f"{key}: invalid duration {value!r}: expected spans like '20 minutes' or '1h 30m'"
            )
        total += int(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return total


_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4,
}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d[\d,_]*)\s*([A-Za-z]*)\s*$")


def parse_size(key: str, value: Any) -> int:
    """Bytes from an integer or a string such as ``"20 MiB"`` or ``"1,000,000"``."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size in bytes, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{key}: size must not be negative, got {value!r}")
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            number = int(m.group(1).replace(",", "").replace("_", ""))
            return number * _SIZE_UNITS[m.group(2).lower()]
    raise ConfigError(f"{key}: invalid size {value!r}: expected bytes or e.g. '20 MiB'")


def parse_int(key: str, value: Any, *, minimum: int | None = None) -> int:
    """An integer (a Lua float with no fraction counts); ``minimum`` bounds it below."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}: must be at least {minimum}, got {value!r}")
    return value


def parse_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def parse_str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def parse_hostname(key: str, value: Any) -> str:
    """A host name as sent in EHLO or a banner: one word, no whitespace (no CR/LF)."""
    text = parse_str(key, value).strip()
    if not text or any(c.isspace() for c in text):
        raise ConfigError(f"{key}: invalid hostname {value!r}")
    return text


def parse_str_list(key: str, value: Any) -> tuple[str, ...]:
    """A Lua list of strings (already converted to a Python list); a lone string is a list."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
    return tuple(value)


E = TypeVar("E", bound=StrEnum)


def parse_enum(enum: type[E]) -> Callable[[str, Any], E]:
    """A parser for one of ``enum``'s values; the error names every allowed value."""

    def parse(key: str, value: Any) -> E:
        try:
            return enum(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in enum)
            raise ConfigError(
                f"{key}: invalid value {value!r}; expected one of {allowed}"
            ) from None

    return parse


def parse_optional(parser: Parser) -> Parser:
    """Wrap a parser so that ``None`` passes through."""

    def parse(key: str, value: Any) -> Any:
        return None if value is None else parser(key, value)

    return parse


Cidr = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_cidr_list(key: str, value: Any) -> tuple[Cidr, ...]:
    """Strict CIDR entries: ``10.0.0.0/8`` is fine, ``10.0.0.1/8`` (host bits set) is an error."""
    out: list[Cidr] = []
    for entry in parse_str_list(key, value):
        try:
            out.append(ipaddress.ip_network(entry.strip(), strict=True))
        except ValueError as exc:
            raise ConfigError(f"{key}: invalid CIDR {entry!r}: {exc}") from None
    return tuple(out)


def ip_in(peer_ip: str, networks: tuple[Cidr, ...]) -> bool:
    """True when ``peer_ip`` is in one of ``networks`` (an IPv4-mapped IPv6 peer counts as
    IPv4, a zone suffix is ignored); False for anything that is not an IP address.
    O(len(networks))."""
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
            peer_ip.partition("%")[0]
        )
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


_RATE_UNITS = {
    "h": 3600, "hr": 3600, "hour": 3600,
    "m": 60, "min": 60, "minute": 60,
    "s": 1, "sec": 1, "second": 1,
    "d": 86400, "day": 86400,
}  # fmt: skip
_RATE = re.compile(
    r"^(?P<local>local:)?(?P<limit>\d[\d,_]*)/(?P<mult>\d+)?(?P<unit>[a-z]+)"
    r"(?:,max_burst=(?P<burst>\d[\d,_]*))?$"
)


def _digits(text: str) -> int:
    return int(text.replace(",", "").replace("_", ""))


@dataclass(frozen=True, slots=True)
class ThrottleSpec:
    """A GCRA rate (reference §3.5): ``limit`` per ``period`` seconds, optional ``max_burst``."""

    limit: int
    period: int
    max_burst: int | None = None
    force_local: bool = False

    @classmethod
    def parse(cls, key: str, value: Any) -> ThrottleSpec:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a rate such as '10/s', got {value!r}")
        m = _RATE.match(value.strip())
        if m is None or m.group("unit") not in _RATE_UNITS:
            raise ConfigError(
                f"{key}: invalid rate {value!r}: expected [local:]LIMIT/[N]UNIT[,max_burst=B] "
                f"with UNIT one of h, hr, hour, m, min, minute, s, sec, second, d, day"
            )
        limit = _digits(m.group("limit"))
        mult = int(m.group("mult") or 1)
        if limit <= 0 or mult <= 0:
            raise ConfigError(f"{key}: invalid rate {value!r}: limit and period must be > 0")
        burst = m.group("burst")
        return cls(
            limit=limit,
            period=mult * _RATE_UNITS[m.group("unit")],
            max_burst=_digits(burst) if burst else None,
            force_local=bool(m.group("local")),
        )

    def __str__(self) -> str:
        period = f"{self.period}s"
        for secs, unit in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
            if self.period % secs == 0:
                n = self.period // secs
                period = unit if n == 1 else f"{n}{unit}"
                break
        local = "local:" if self.force_local else ""
        burst = f",max_burst={self.max_burst}" if self.max_burst is not None else ""
        return f"{local}{self.limit}/{period}{burst}"


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """A connection limit: an integer >= 1, or ``"1,000"`` / ``"local:20"``."""

    limit: int
    force_local: bool = False

    @classmethod
    def parse(cls, key: str, value: Any) -> LimitSpec:
        if isinstance(value, str):
            text = value.strip()
            local = text.startswith("local:")
            digits = text.removeprefix("local:").replace(",", "").replace("_", "")
            if digits.isdigit() and int(digits) >= 1:
                return cls(int(digits), local)
            raise ConfigError(f"{key}: invalid limit {value!r}: expected e.g. 32 or '1,000'")
        return cls(parse_int(key, value, minimum=1))


def build(
    cls: type[T],
    table: str,
    mapping: Mapping[str, Any],
    parsers: Mapping[str, Parser],
    *,
    required: Iterable[str] = (),
) -> T:
    """Construct ``cls`` from ``mapping``, rejecting unknown keys and naming the allowed ones.

    ``parsers`` maps each allowed key to the function that validates and converts its value;
    absent keys keep the dataclass default.
    """
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{table}: expected a table, got {mapping!r}")
    unknown = sorted(str(k) for k in mapping if k not in parsers)
    if unknown:
        raise ConfigError(
            f"{table}: unknown key {unknown[0]!r}; allowed keys are: {', '.join(sorted(parsers))}"
        )
    missing = [k for k in required if mapping.get(k) is None]
    if missing:
        raise ConfigError(f"{table}: missing required key {missing[0]!r}")
    kwargs = {k: parsers[k](k, v) for k, v in mapping.items() if v is not None}
    return cls(**kwargs)
