"""What a harness run did, from its log records: counts, throughput, latency, delays, and the
``--expect`` checks.

``analyse(records, started=...)`` reads the records of one run (``kumoq.logs.tail`` gives them)
and returns ``HarnessStats``:

- counts by record type, per scheduled queue (``queue``) and per ready queue (``site``; a
  maildir delivery has none and is counted under ``maildir``);
- messages received, finished (``Delivery``, ``Bounce``, ``Expiration`` or ``AdminBounce``),
  discarded (received into the ``null`` queue, which keeps nothing) and unfinished;
- throughput and the latency percentiles from reception to delivery, overall and per ready
  queue;
- the delays: each ``Delayed`` record's reason (the last one of its ``Context:``, such as
  ``MessageRateThrottle``, ``ReadyQueueWasFull`` or ``ConnectionRateThrottle``), where (the
  ready queue, else the scheduled queue), how many messages and for how long (from the record's
  time to the ``at`` time it names);
- the series the report plots: deliveries per second per ready queue, in buckets of
  ``bucket_seconds`` (a 1, 2 or 5 step, about ``PLOT_BUCKETS`` buckets over the run).

``Expectation.parse("delivered=500")`` and ``check_expectations`` implement ``--expect``.

Pure: no IO and no clock; imports only the standard library and kumoq.testing.traffic_run.
"""

from __future__ import annotations

import math
import operator
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Final

from kumoq.testing.traffic_run import percentile

__all__ = [
    "EXPECT_KEYS",
    "EXPECT_NAMES",
    "FINAL_TYPES",
    "NULL_QUEUE",
    "DelayRow",
    "Expectation",
    "HarnessStats",
    "analyse",
    "bucket_for",
    "check_expectations",
    "event_seconds",
    "expectation_values",
    "ready_queue_of",
]

FINAL_TYPES: Final = frozenset({"Delivery", "Bounce", "Expiration", "AdminBounce"})
"""A message with one of these records is done: nothing more will happen to it."""

NULL_QUEUE: Final = "null"
MAILDIR: Final = "maildir"

EXPECT_KEYS: Final[Mapping[str, str]] = {
    "received": "Reception",
    "delivered": "Delivery",
    "bounced": "Bounce",
    "transient_failure": "TransientFailure",
    "expired": "Expiration",
    "admin_bounced": "AdminBounce",
    "delayed": "Delayed",
    "rejected": "Rejection",
}
"""``--expect`` names of record counts; a record type's own name works too (``Delivery=500``)."""

EXPECT_OTHER: Final = ("finished", "unfinished", "discarded")
EXPECT_TRAFFIC: Final = ("accepted", "tempfailed", "permfailed", "errors", "sent")
"""The messages' ends from ``analyse``, and the traffic generator's counts of SMTP replies."""
EXPECT_NAMES: Final = frozenset(
    (*EXPECT_KEYS, *EXPECT_KEYS.values(), *EXPECT_OTHER, *EXPECT_TRAFFIC)
)

PLOT_BUCKETS: Final = 60
_STEPS: Final = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_CONTEXT: Final = re.compile(r"Context: (?P<reasons>.*?)\. Next due in .*? at (?P<at>\S+)")
_FRACTION: Final = re.compile(r"(\.\d{6})\d+")
_OPERATORS: Final[dict[str, Callable[[float, float], bool]]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "!=": operator.ne,
    "==": operator.eq,
    "=": operator.eq,
    ">": operator.gt,
    "<": operator.lt,
}
_EXPECTATION: Final = re.compile(r"^\s*([A-Za-z_]+)\s*(>=|<=|!=|==|=|>|<)\s*(\d+)\s*$")


def event_seconds(text: str) -> float:
    """An RFC 3339 ``event_time`` (nine fraction digits, ``Z``) as unix seconds."""
    return datetime.fromisoformat(_FRACTION.sub(r"\1", text).replace("Z", "+00:00")).timestamp()


def _when(record: Mapping[str, Any]) -> float:
    text = record.get("event_time")
    if isinstance(text, str) and text:
        return event_seconds(text)
    return float(record.get("timestamp") or 0)


def ready_queue_of(record: Mapping[str, Any]) -> str | None:
    """The ready queue an attempt record belongs to; ``maildir`` for a maildir attempt; None
    for a record that belongs to none."""
    site = record.get("site")
    if site:
        return str(site)
    if record.get("delivery_protocol") == "Maildir":
        return MAILDIR
    return None


@dataclass(slots=True, kw_only=True)
class DelayRow:
    """The ``Delayed`` records of one reason in one place."""

    reason: str
    where: str
    delays: int = 0
    messages: int = 0
    total_seconds: float = 0.0
    max_seconds: float = 0.0


@dataclass(slots=True, kw_only=True)
class HarnessStats:
    """See the module docstring. Times are seconds; latencies milliseconds."""

    counts: dict[str, int] = field(default_factory=dict)
    by_scheduled_queue: dict[str, dict[str, int]] = field(default_factory=dict)
    by_ready_queue: dict[str, dict[str, int]] = field(default_factory=dict)
    received: int = 0
    finished: int = 0
    discarded: int = 0
    unfinished: int = 0
    elapsed: float = 0.0
    delivered_per_second: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    latency_ms_by_ready_queue: dict[str, dict[str, float]] = field(default_factory=dict)
    delays: list[DelayRow] = field(default_factory=list)
    bucket_seconds: float = 1.0
    deliveries_per_second: dict[str, list[float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _percentiles(values: Iterable[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": percentile(ordered, 0.50),
        "p90": percentile(ordered, 0.90),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1] if ordered else 0.0,
    }


def _nested(table: defaultdict[str, Counter[str]]) -> dict[str, dict[str, int]]:
    return {name: dict(sorted(counts.items())) for name, counts in sorted(table.items())}


def analyse(records: Iterable[Mapping[str, Any]], *, started: float) -> HarnessStats:
    """The stats of one run whose traffic started at unix time ``started``. O(records)."""
    stats = HarnessStats()
    counts: Counter[str] = Counter()
    by_queue: defaultdict[str, Counter[str]] = defaultdict(Counter)
    by_ready: defaultdict[str, Counter[str]] = defaultdict(Counter)
    received_at: dict[str, float] = {}
    final: set[str] = set()
    discarded: set[str] = set()
    latencies: list[float] = []
    latencies_by_ready: defaultdict[str, list[float]] = defaultdict(list)
    delivered_at: defaultdict[str, list[float]] = defaultdict(list)
    delays: dict[tuple[str, str], tuple[DelayRow, set[str]]] = {}
    last = started
    for record in records:
        kind = str(record.get("type", ""))
        msg_id = str(record.get("id", ""))
        queue = str(record.get("queue", ""))
        when = _when(record)
        last = max(last, when)
        counts[kind] += 1
        if queue:
            by_queue[queue][kind] += 1
        ready = ready_queue_of(record)
        if ready is not None and kind != "Reception":
            by_ready[ready][kind] += 1
        if kind == "Reception":
            received_at.setdefault(msg_id, when)
            if queue == NULL_QUEUE:
                discarded.add(msg_id)
        elif kind in FINAL_TYPES:
            final.add(msg_id)
        if kind == "Delivery":
            label = ready or "(none)"
            delivered_at[label].append(when)
            if msg_id in received_at:
                latency = (when - received_at[msg_id]) * 1000.0
                latencies.append(latency)
                latencies_by_ready[label].append(latency)
        elif kind == "Delayed":
            _note_delay(delays, record, when, ready or queue)
    stats.counts = dict(sorted(counts.items()))
    stats.by_scheduled_queue = _nested(by_queue)
    stats.by_ready_queue = _nested(by_ready)
    stats.received = len(received_at)
    stats.discarded = len(discarded & received_at.keys())
    stats.finished = len(final & received_at.keys())
    stats.unfinished = stats.received - stats.finished - stats.discarded
    stats.elapsed = max(0.0, last - started)
    delivered = counts["Delivery"]
    stats.delivered_per_second = delivered / stats.elapsed if stats.elapsed > 0 else 0.0
    stats.latency_ms = _percentiles(latencies)
    stats.latency_ms_by_ready_queue = {
        name: _percentiles(values) for name, values in sorted(latencies_by_ready.items())
    }
    stats.delays = sorted(
        (row for row, _ in delays.values()), key=lambda r: (-r.messages, r.reason, r.where)
    )
    bucket = stats.bucket_seconds = bucket_for(stats.elapsed)
    buckets = max(1, math.ceil(stats.elapsed / bucket))
    for name, times in sorted(delivered_at.items()):
        series = [0.0] * buckets
        for when in times:
            series[min(buckets - 1, max(0, int((when - started) / bucket)))] += 1.0 / bucket
        stats.deliveries_per_second[name] = [round(rate, 3) for rate in series]
    return stats


def bucket_for(elapsed: float) -> float:
    """The smallest step that cuts ``elapsed`` seconds into at most ``PLOT_BUCKETS`` buckets."""
    return next((s for s in _STEPS if elapsed / s <= PLOT_BUCKETS), _STEPS[-1])


def _note_delay(
    delays: dict[tuple[str, str], tuple[DelayRow, set[str]]],
    record: Mapping[str, Any],
    when: float,
    where: str,
) -> None:
    content = str((record.get("response") or {}).get("content", ""))
    match = _CONTEXT.search(content)
    reason, seconds = "unknown", 0.0
    if match is not None:
        reason = match.group("reasons").split(", ")[-1] or "unknown"
        try:
            seconds = max(0.0, event_seconds(match.group("at")) - when)
        except ValueError:
            seconds = 0.0
    key = (reason, where)
    if key not in delays:
        delays[key] = (DelayRow(reason=reason, where=where), set())
    row, ids = delays[key]
    row.delays += 1
    row.total_seconds += seconds
    row.max_seconds = max(row.max_seconds, seconds)
    ids.add(str(record.get("id", "")))
    row.messages = len(ids)


@dataclass(frozen=True, slots=True)
class Expectation:
    """One ``--expect NAME=N`` (or ``>=``, ``<=``, ``>``, ``<``, ``!=``)."""

    name: str
    op: str
    value: int

    @classmethod
    def parse(cls, text: str) -> Expectation:
        match = _EXPECTATION.match(text)
        if match is None:
            raise ValueError(f"invalid expectation {text!r}: expected NAME=N (or >=, <=, >, <, !=)")
        name, op, value = match.groups()
        if name not in EXPECT_NAMES:
            known = ", ".join((*EXPECT_KEYS, *EXPECT_OTHER, *EXPECT_TRAFFIC))
            raise ValueError(f"invalid expectation {text!r}: unknown name {name!r}; use {known}")
        return cls(name, "=" if op == "==" else op, int(value))

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value}"


def expectation_values(stats: HarnessStats, traffic: Mapping[str, Any]) -> dict[str, int]:
    """Every name ``--expect`` may use, with its value in this run."""
    values = {name: stats.counts.get(kind, 0) for name, kind in EXPECT_KEYS.items()}
    values.update({kind: stats.counts.get(kind, 0) for kind in EXPECT_KEYS.values()})
    values.update(finished=stats.finished, unfinished=stats.unfinished, discarded=stats.discarded)
    values.update({name: int(traffic.get(name, 0)) for name in EXPECT_TRAFFIC})
    return values


def check_expectations(
    expectations: Iterable[Expectation], values: Mapping[str, int]
) -> list[dict[str, Any]]:
    """One result per expectation: ``{expect, name, actual, ok}``."""
    results = []
    for exp in expectations:
        actual = values.get(exp.name)
        ok = actual is not None and _OPERATORS[exp.op](actual, exp.value)
        results.append({"expect": str(exp), "name": exp.name, "actual": actual, "ok": ok})
    return results
