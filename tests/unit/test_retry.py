"""kumoq.scheduler.retry: backoff, jitter, expiry texts, humantime formatting (§3.1, §3.2)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kumoq.scheduler.retry import (
    MAX_DELAY,
    Expired,
    delay_based_on_age,
    delay_for_attempt,
    delay_with_jitter,
    expiry_after_increment,
    expiry_without_increment,
    format_duration,
    infer_num_attempts,
    next_attempt,
)

CREATED = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def schedule(
    retry_interval: float, max_retry_interval: float | None, max_age: float, seed: int = 0
) -> tuple[list[float], Expired]:
    """Delays of successive transient failures until the message expires."""
    rng = random.Random(seed)
    now, attempts = CREATED, 0
    delays: list[float] = []
    while True:
        delay, attempts = next_attempt(attempts, retry_interval, max_retry_interval, now, rng)
        expired = expiry_after_increment(CREATED, now, delay, max_age, None)
        if expired is not None:
            return delays, expired
        delays.append(delay)
        now += delay


def test_schedule_r2_max_age_1024():
    delays, expired = schedule(2, None, 1024)
    assert delays == [2, 4, 8, 16, 32, 64, 128, 256, 512]
    assert expired == Expired(
        "Next delivery time would be 34m 6s after creation, which exceeds max_age=17m 4s"
    )
    assert (expired.code, expired.enhanced_code, expired.site) == (551, (5, 4, 7), "")


def test_schedule_r2_capped_at_8():
    delays, _ = schedule(2, 8, 40)
    assert delays == [2, 4, 8, 8, 8, 8]
    assert [delay_for_attempt(n, 2, 8) for n in range(6)] == [2, 4, 8, 8, 8, 8]


def test_schedule_r1200_max_age_one_day():
    expected = [1200, 2400, 4800, 9600, 19200, 38400]
    assert [delay_for_attempt(n, 1200, None) for n in range(6)] == expected
    for seed in range(20):
        delays, expired = schedule(1200, None, 86400, seed)
        assert len(delays) == 6
        assert all(abs(d - e) <= 30 for d, e in zip(delays, expected, strict=True))
        assert expired.content.endswith("which exceeds max_age=1day")


def test_attempt_times_are_0_r_3r_7r():
    rng = random.Random(1)
    now, attempts, times = CREATED, 0, []
    for _ in range(4):
        delay, attempts = next_attempt(attempts, 5, None, now, rng)
        now += delay
        times.append(now - CREATED)
    assert times == [5, 15, 35, 75]  # jitter of 5s/20 truncates to 0
    assert attempts == 4


@pytest.mark.parametrize("retry_interval", [2, 20, 60, 600, 1200, 2400, 7200, 86400])
def test_jitter_bounds_over_many_seeds(retry_interval):
    magnitude = min(retry_interval / 20, 60)
    seen = set()
    for seed in range(500):
        delay, attempts = next_attempt(3, retry_interval, None, CREATED, random.Random(seed))
        assert attempts == 4
        assert delay == int(delay)
        jitter = delay - retry_interval * 8
        assert abs(jitter) <= magnitude / 2
        seen.add(jitter)
    if magnitude >= 4:
        assert min(seen) < 0 < max(seen)
        assert max(seen) - min(seen) >= magnitude / 2


def test_delay_for_attempt_saturates_and_truncates():
    assert delay_for_attempt(0, 2.9, None) == 2
    assert delay_for_attempt(3, 2.9, 10.5) == 10
    assert delay_for_attempt(70, 1200, None) == float(MAX_DELAY)
    assert delay_for_attempt(65535, 1200, None) == float(MAX_DELAY)
    assert delay_for_attempt(52, 1200, None) == float(MAX_DELAY)  # 1200 * 2**52 saturates
    assert delay_for_attempt(40, 1200, None) == 1200 * 2**40
    assert delay_for_attempt(65535, 1200, 3600) == 3600
    assert delay_for_attempt(65535, 0.5, None) == 0
    assert isinstance(delay_for_attempt(1, 2, None), float)


def test_next_attempt_never_negative():
    # max_retry_interval below retry_interval leaves room for negative jitter
    for seed in range(100):
        delay, _ = next_attempt(0, 1200, 1, CREATED, random.Random(seed))
        assert delay >= 0


def test_delay_with_jitter():
    values = {delay_with_jitter(60, random.Random(seed)) for seed in range(2000)}
    assert values <= {float(v) for v in range(60)}
    assert len(values) > 50
    assert delay_with_jitter(0, random.Random(0)) == 0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-5, "0s"),
        (1, "1s"),
        (60, "1m"),
        (1200, "20m"),
        (5400, "1h 30m"),
        (86400, "1day"),
        (172800, "2days"),
        (604800, "7days"),
        (90061, "1day 1h 1m 1s"),
        (2_630_016, "1month"),
        (31_557_600, "1year"),
        (2 * 31_557_600 + 2 * 2_630_016 + 3, "2years 2months 3s"),
        (1.5, "1s 500ms"),
        (0.25, "250ms"),
        (0.000_001_5, "1us 500ns"),
    ],
)
def test_format_duration_like_humantime(seconds, text):
    assert format_duration(seconds) == text


def test_expiry_after_increment_max_age():
    now = CREATED + 3000
    assert expiry_after_increment(CREATED, now, 600, 3600, None) is None
    assert expiry_after_increment(CREATED, now, 600.5, 3600, None) == Expired(
        "Next delivery time would be 1h 500ms after creation, which exceeds max_age=1h"
    )


def test_expiry_after_increment_with_scheduling_expires():
    expires = CREATED + 1000
    # max_age is ignored when the message has its own expiry
    assert expiry_after_increment(CREATED, CREATED, 999, 1, expires) is None
    expired = expiry_after_increment(CREATED, CREATED, 1000, 10**9, expires)
    assert expired == Expired(
        "Next delivery time would be at 2023-11-14 22:30:00 UTC which exceeds the expiry time "
        "2023-11-14 22:30:00 +00:00 configured via set_scheduling"
    )
    # a schedule window may push the due time past the expiry
    pushed = expiry_after_increment(
        CREATED, CREATED, 10, 10**9, expires, next_due=CREATED + 1200.25
    )
    assert pushed is not None
    assert pushed.content.startswith("Next delivery time would be at 2023-11-14 22:33:20.250 UTC")


def test_expiry_without_increment():
    assert expiry_without_increment(CREATED, CREATED + 604799, 604800) is None
    expired = expiry_without_increment(CREATED, CREATED + 604800, 604800)
    assert expired == Expired("Next delivery time PT604800S > PT604800S", site="localhost")
    late = expiry_without_increment(CREATED, CREATED + 90.5, 60)
    assert late is not None
    assert late.content == "Next delivery time PT90.5S > PT60S"
    assert expiry_without_increment(CREATED, CREATED, 0) == Expired(
        "Next delivery time P0D > P0D", site="localhost"
    )


def naive_infer(age: float, retry_interval: float, max_retry_interval: float | None) -> int:
    elapsed, n = 0.0, 0
    while n < 65535:
        delay = delay_for_attempt(n, retry_interval, max_retry_interval)
        if elapsed + delay > age:
            return n
        elapsed += delay
        n += 1
    return n


def test_infer_num_attempts_examples():
    assert infer_num_attempts(0, 2, None) == 0
    assert infer_num_attempts(1.9, 2, None) == 0
    assert infer_num_attempts(2, 2, None) == 1
    assert infer_num_attempts(5, 2, None) == 1
    assert infer_num_attempts(6, 2, None) == 2
    assert infer_num_attempts(1022, 2, None) == 9
    assert infer_num_attempts(86400 * 7, 1, 1) == 65535
    assert infer_num_attempts(10, 0, None) == 65535


@given(
    age=st.floats(0, 86400 * 30),
    retry_interval=st.integers(1, 3600),
    cap=st.none() | st.integers(1, 100_000),
)
def test_infer_num_attempts_matches_the_definition(age, retry_interval, cap):
    assert infer_num_attempts(age, retry_interval, cap) == naive_infer(age, retry_interval, cap)


def test_delay_based_on_age():
    # R=2: the schedule offsets from creation are 4, 4+8, ... for attempts 2, 3, ...
    assert delay_based_on_age(0, 0, 2, None, 1024) == 0
    assert delay_based_on_age(3, 5, 2, None, 1024) == 7  # 4 + 8 - 5
    assert delay_based_on_age(3, 20, 2, None, 1024) == 0
    assert delay_based_on_age(3, 1024, 2, None, 1024) is None
    assert delay_based_on_age(11, 10, 2, None, 1024) is None  # 4 + ... + 1024 >= max_age
