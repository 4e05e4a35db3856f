"""Retry backoff with jitter and expiry decisions (reference §3.1, §3.2).

Owns the arithmetic of KumoMTA's ``QueueConfig::delay_for_attempt`` / ``infer_num_attempts`` /
``compute_delay_based_on_age`` and of ``Queue::increment_attempts_and_update_delay`` /
``requeue_message_internal``, plus humantime's duration formatting used in the log texts:

- ``delay_for_attempt(n, R, max)``: ``min(int(R) * 2**n, max)`` whole seconds, saturating;
- ``next_attempt``: the delay after a transient failure, with KumoMTA's jitter;
- ``delay_with_jitter``: the random 0..max seconds of a requeue without a delay or increment;
- ``expiry_after_increment`` / ``expiry_without_increment``: whether a requeue expires the
  message, returned as an ``Expired`` value carrying the ``Expiration`` record's response;
- ``infer_num_attempts`` / ``delay_based_on_age``: the retry position of a message reloaded from
  the spool after a restart;
- ``FailureCache``: failures remembered by name until a time (a failed ``get_queue_config`` is
  not called again for 60 s), the expired ones swept so that the table stays bounded.

The caller owns the message and the clock; randomness comes in as a ``random.Random``.

L0 (pure): imports only the standard library; no asyncio, IO or lupa; time comes in as ``now``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Generic, TypeVar

__all__ = [
    "MAX_DELAY",
    "Expired",
    "FailureCache",
    "delay_based_on_age",
    "delay_for_attempt",
    "delay_with_jitter",
    "expiry_after_increment",
    "expiry_without_increment",
    "format_duration",
    "infer_num_attempts",
    "next_attempt",
]

#: The largest delay, in seconds: KumoMTA saturates at ``i64::MAX / 1000`` (chrono's limit).
MAX_DELAY: Final = (2**63 - 1) // 1000
#: ``num_attempts`` is a u16 in KumoMTA.
_MAX_ATTEMPTS: Final = 2**16 - 1
#: The largest exponent for which ``2**n`` can still be below MAX_DELAY.
_MAX_SHIFT: Final = MAX_DELAY.bit_length()

E = TypeVar("E", bound=Exception)


class FailureCache(Generic[E]):
    """Failures by name, each remembered until its ``until`` time.

    An expired failure means nothing, so ``add`` drops every expired one when the table
    reaches ``sweep_at`` entries, and ``sweep_at`` becomes twice the survivors (at least
    ``min_sweep``): the table holds about twice the live failures, at amortised O(1) per call.
    """

    __slots__ = ("_entries", "_min_sweep", "_sweep_at")

    def __init__(self, *, min_sweep: int = 1024) -> None:
        self._entries: dict[str, tuple[E, float]] = {}
        self._min_sweep = self._sweep_at = max(1, min_sweep)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str, now: float) -> E | None:
        """The failure of ``name`` if it is still remembered at ``now``. O(1)."""
        entry = self._entries.get(name)
        return entry[0] if entry is not None and now < entry[1] else None

    def add(self, name: str, error: E, until: float, now: float) -> None:
        """Remember ``error`` for ``name`` until ``until``. Amortised O(1)."""
        if name not in self._entries and len(self._entries) >= self._sweep_at:
            self._entries = {k: v for k, v in self._entries.items() if now < v[1]}
            self._sweep_at = max(self._min_sweep, 2 * len(self._entries))
        self._entries[name] = (error, until)

    def forget(self, name: str) -> None:
        self._entries.pop(name, None)

    def clear(self) -> None:
        self._entries.clear()


@dataclass(frozen=True, slots=True)
class Expired:
    """A requeue expires the message: log ``Expiration`` with this response, then remove it.

    ``site`` is ``""`` after an attempt increment and ``"localhost"`` otherwise (§3.2).
    """

    content: str
    code: int = 551
    enhanced_code: tuple[int, int, int] = (5, 4, 7)
    site: str = ""


def delay_for_attempt(n: int, retry_interval: float, max_retry_interval: float | None) -> float:
    """``retry_interval * 2**n`` capped at ``max_retry_interval``, in whole seconds. O(1).

    ``n`` is the 0-based attempt count *before* the increment. Both intervals are truncated to
    whole seconds first (Rust's ``Duration::as_secs``); the result saturates at ``MAX_DELAY``.
    """
    base = int(retry_interval)
    delay = MAX_DELAY if n > _MAX_SHIFT else min(base << max(n, 0), MAX_DELAY)
    if base == 0:
        delay = 0
    if max_retry_interval is not None:
        delay = min(delay, int(max_retry_interval))
    return float(delay)


def next_attempt(
    num_attempts: int,
    config_retry_interval: float,
    max_retry_interval: float | None,
    now: float,
    rng: random.Random,
) -> tuple[float, int]:
    """The delay before the next attempt after a transient failure, and the new attempt count.

    ``delay_for_attempt(num_attempts)`` plus jitter of ``retry_interval / 20`` (at most 60 s)
    centred on zero and truncated toward zero to whole seconds; never below 0. ``now`` does not
    change the result (the caller adds the delay to it and applies the schedule). O(1).
    """
    delay = delay_for_attempt(num_attempts, config_retry_interval, max_retry_interval)
    magnitude = min(config_retry_interval / 20.0, 60.0)
    jitter = rng.random() * magnitude - magnitude / 2.0
    return max(0.0, delay + int(jitter)), min(num_attempts + 1, _MAX_ATTEMPTS)


def delay_with_jitter(max_seconds: float, rng: random.Random) -> float:
    """A random whole number of seconds in ``[0, max_seconds)`` (``delay_with_jitter(60)``)."""
    return float(int(rng.random() * max_seconds))


def expiry_after_increment(
    created: float,
    now: float,
    delay: float,
    max_age: float,
    schedule_expires: float | None,
    *,
    next_due: float | None = None,
) -> Expired | None:
    """Whether a requeue with an attempt increment expires the message (§3.2). O(1).

    With a per-message ``schedule_expires``, the message expires when the next due time
    (``next_due``: ``now + delay`` moved by the schedule; defaults to ``now + delay``) is at or
    after it, and ``max_age`` is ignored. Otherwise it expires when ``age + delay > max_age``.
    """
    if schedule_expires is not None:
        due = now + delay if next_due is None else next_due
        if due >= schedule_expires:
            return Expired(
                f"Next delivery time would be at {_chrono_utc(due)} which exceeds the expiry "
                f"time {_chrono_fixed(schedule_expires)} configured via set_scheduling"
            )
        return None
    delayed_age = now - created + delay
    if delayed_age > max_age:
        return Expired(
            f"Next delivery time would be {format_duration(delayed_age)} after creation, "
            f"which exceeds max_age={format_duration(max_age)}"
        )
    return None


def expiry_without_increment(created: float, due: float, max_age: float) -> Expired | None:
    """Whether a requeue without an increment expires the message: its age at ``due`` is at
    least ``max_age`` (§3.2). The durations are written as chrono prints them (``PT600S``)."""
    due_age = due - created
    if due_age >= max_age:
        return Expired(
            f"Next delivery time {_iso_duration(due_age)} > {_iso_duration(max_age)}",
            site="localhost",
        )
    return None


def infer_num_attempts(age: float, retry_interval: float, max_retry_interval: float | None) -> int:
    """The attempt count of a message of ``age`` seconds reloaded after a restart: the largest
    ``n`` with ``sum(delay_for_attempt(0..n)) <= age`` (at most 65535). O(log age)."""
    elapsed = 0.0
    n = 0
    while n < _MAX_ATTEMPTS:
        delay = delay_for_attempt(n, retry_interval, max_retry_interval)
        if elapsed + delay > age:
            return n
        if delay == 0.0:
            return _MAX_ATTEMPTS
        if delay == delay_for_attempt(n + 1, retry_interval, max_retry_interval):
            # The delay is capped from here on: count the remaining attempts at once.
            return min(n + int((age - elapsed) // delay), _MAX_ATTEMPTS)
        elapsed += delay
        n += 1
    return n


def delay_based_on_age(
    num_attempts: int,
    age: float,
    retry_interval: float,
    max_retry_interval: float | None,
    max_age: float,
) -> float | None:
    """The delay from now of a reloaded message's next attempt, or None when it has expired.

    KumoMTA's ``compute_delay_based_on_age``: the schedule offset
    ``sum(delay_for_attempt(1..num_attempts))`` minus ``age``, never negative; None when ``age``
    or that offset reaches ``max_age``. O(num_attempts).
    """
    if age >= max_age:
        return None
    overall = 0.0
    for i in range(1, num_attempts):
        overall += delay_for_attempt(i, retry_interval, max_retry_interval)
        if overall >= max_age:
            return None
    return max(overall - age, 0.0)


def format_duration(seconds: float) -> str:
    """A duration as Rust's ``humantime::format_duration`` writes it: ``"20m"``, ``"7days"``,
    ``"1h 30m"``, ``"1year 2months"``, ``"1s 500ms"``; ``"0s"`` for zero or less.

    A year is 365.25 days and a month 30.44 days, as in humantime.
    """
    if not seconds > 0:
        return "0s"
    total_ns = round(seconds * 1_000_000_000)
    secs, nanos = divmod(total_ns, 1_000_000_000)
    years, rest = divmod(secs, 31_557_600)
    months, rest = divmod(rest, 2_630_016)
    days, rest = divmod(rest, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    parts: list[str] = []
    for value, name in ((years, "year"), (months, "month"), (days, "day")):
        if value:
            parts.append(f"{value}{name}s" if value > 1 else f"{value}{name}")
    for value, name in (
        (hours, "h"),
        (minutes, "m"),
        (secs, "s"),
        (nanos // 1_000_000, "ms"),
        (nanos // 1_000 % 1_000, "us"),
        (nanos % 1_000, "ns"),
    ):
        if value:
            parts.append(f"{value}{name}")
    return " ".join(parts) if parts else "0s"


def _iso_duration(seconds: float) -> str:
    """chrono's ``TimeDelta`` Display: ``PT3600S``, ``PT1.5S``, ``-PT2S``, ``P0D``."""
    sign = "-" if seconds < 0 else ""
    total_ns = round(abs(seconds) * 1_000_000_000)
    if total_ns == 0:
        return "P0D"
    secs, nanos = divmod(total_ns, 1_000_000_000)
    fraction = f".{nanos:09d}".rstrip("0") if nanos else ""
    return f"{sign}PT{secs}{fraction}S"


def _chrono_naive(t: float) -> str:
    """chrono's ``NaiveDateTime`` Display (``2024-01-02 03:04:05.250``), to microseconds."""
    dt = datetime.fromtimestamp(t, UTC)
    text = dt.strftime("%Y-%m-%d %H:%M:%S")
    micros = dt.microsecond
    if micros == 0:
        return text
    if micros % 1000 == 0:
        return f"{text}.{micros // 1000:03d}"
    return f"{text}.{micros:06d}"


def _chrono_utc(t: float) -> str:
    """chrono's ``DateTime<Utc>`` Display: ``2024-01-02 03:04:05 UTC``."""
    return f"{_chrono_naive(t)} UTC"


def _chrono_fixed(t: float) -> str:
    """chrono's ``DateTime<FixedOffset>`` Display at offset zero: ``2024-01-02 03:04:05 +00:00``."""
    return f"{_chrono_naive(t)} +00:00"
