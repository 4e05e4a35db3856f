"""Every Prometheus metric kumoq exports, defined in one place with its help text.

Names follow KumoMTA's where the concept matches, so its dashboards carry over; kumoq's own
metrics say so in their help text. Metrics live in ``REGISTRY``, which the HTTP listener
serves at ``/metrics``. Any layer may count: this module imports nothing from kumoq.

KumoMTA's counters carry no ``_total`` suffix (``total_messages_delivered``), while
prometheus-client's ``Counter`` always exposes ``<name>_total``. Those counters are
``ExactCounter``s: a collector whose family (an ``ExactNameFamily``) keeps its own name, which
the HTTP listener exposes as is (kumoq.http.metrics). Incrementing one is a dict update on the
event loop thread: no lock, no label lookup.

KumoMTA's gauges of what is waiting and connected (``scheduled_count``, ``ready_count``,
``connection_count``...) cost nothing on the hot path: ``kumoq.gauges.LiveGauges`` computes
them at scrape time from the daemon's live queues and listeners.

Histograms observed on the event loop thread are ``LoopHistogram``s: ``child(label_value)``
returns the series once (kept in a dict), and ``observe`` is a bisect and two additions, with no
lock (prometheus-client's own ``Histogram`` takes a lock per observation and walks its buckets:
about 1 to 2 µs against 0.2 µs). A histogram observed on another thread (the spool's writer)
is prometheus-client's. docs/operations.md ("Metrics") lists every metric and its buckets.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Final, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

__all__ = [
    "ACCEPT_FAILURES",
    "DELAYED_DUE_TO_MESSAGE_RATE_THROTTLE",
    "DELAYED_DUE_TO_READY_QUEUE_FULL",
    "DELAYED_DUE_TO_THROTTLE_INSERT_READY",
    "DISPOSITION_LATENCY",
    "LATENCY_BUCKETS",
    "LOG_RECORDS_DROPPED",
    "LUA_EVENT_LATENCY",
    "LUA_EVENT_STARTED",
    "MESSAGES_RECEIVED_BY_PRIORITY",
    "MESSAGE_SAVE_LATENCY",
    "REDIS_THROTTLES_CONNECTED",
    "REDIS_THROTTLE_FALLBACKS",
    "REGISTRY",
    "SMTP_AUTH_FAILURES",
    "SMTP_SERVER_REJECTIONS",
    "SPOOL_COMMIT_LATENCY",
    "SPOOL_QUARANTINED",
    "SUPERVISED_TASK_RESTARTS",
    "TOTAL_CONNECTIONS_DENIED",
    "TOTAL_MESSAGES_DELIVERED",
    "TOTAL_MESSAGES_FAIL",
    "TOTAL_MESSAGES_RECEIVED",
    "TOTAL_MESSAGES_TRANSFAIL",
    "USER_LUA_LATENCY",
    "ExactCounter",
    "ExactNameFamily",
    "HistogramChild",
    "LoopHistogram",
    "ProcessGauges",
    "note_delayed",
]

REGISTRY: Final = CollectorRegistry(auto_describe=True)

#: How prometheus-client writes a bucket bound (``le``): ``0.005``, ``10.0``, ``+Inf``.
_le: Final = cast(Callable[[float], str], floatToGoString)

SUPERVISED_TASK_RESTARTS: Final = Counter(
    "supervised_task_restarts",
    "How often a long-running task (a queue maintainer, a retry loop) ended with an "
    "unexpected exception and was restarted (kumoq).",
    ["task"],
    registry=REGISTRY,
)

SPOOL_QUARANTINED: Final = Counter(
    "spool_quarantined",
    "Spool records that could not be read at enumeration and were moved to the spool's "
    "quarantine instead of being loaded (kumoq).",
    ["spool", "reason"],
    registry=REGISTRY,
)

LOG_RECORDS_DROPPED: Final = Counter(
    "log_records_dropped",
    "Log records that could not be written (for example on a full disk); no partial record is "
    "ever left in a segment (kumoq).",
    ["logger"],
    registry=REGISTRY,
)

REDIS_THROTTLE_FALLBACKS: Final = Counter(
    "redis_throttle_fallbacks",
    "Throttle checks (kind throttle) and connection-limit leases (kind lease, extend, release) "
    "made in the process because the redis of kumo.configure_redis_throttles did not answer "
    "(kumoq).",
    ["kind"],
    registry=REGISTRY,
)

REDIS_THROTTLES_CONNECTED: Final = Gauge(
    "redis_throttles_connected",
    "1 while the redis of kumo.configure_redis_throttles answers, 0 while throttles and "
    "connection limits fall back to the process, or when no such redis is configured (kumoq).",
    registry=REGISTRY,
)

ACCEPT_FAILURES: Final = Counter(
    "accept_failures",
    "Connections an ESMTP listener could not accept: accept() failed, most often for want of "
    "file descriptors (EMFILE, ENFILE); the listener then pauses accepting briefly (kumoq).",
    ["listener"],
    registry=REGISTRY,
)


class ExactNameFamily(Metric):
    """A metric family whose samples carry the family's own name, with no ``_total``: the
    exposition writes ``# TYPE <name> counter`` and ``<name>{...} value`` (KumoMTA's form)."""


class ExactCounter:
    """A counter with one label that is exposed under ``name`` exactly (KumoMTA's names).

    Registered in ``registry``; ``inc(label_value)`` adds one. Values only grow. Meant for the
    event loop thread (the dict update is atomic under the GIL anyway)."""

    __slots__ = ("documentation", "labelname", "name", "values")

    def __init__(
        self,
        name: str,
        documentation: str,
        labelname: str,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelname = labelname
        self.values: dict[str, float] = {}
        registry.register(self)

    def inc(self, label_value: str, amount: float = 1.0) -> None:
        values = self.values
        values[label_value] = values.get(label_value, 0.0) + amount

    def value(self, label_value: str) -> float:
        return self.values.get(label_value, 0.0)

    def describe(self) -> list[Metric]:
        return [ExactNameFamily(self.name, self.documentation, "counter")]

    def collect(self) -> Iterator[Metric]:
        family = ExactNameFamily(self.name, self.documentation, "counter")
        for label_value, value in list(self.values.items()):
            family.add_sample(self.name, {self.labelname: label_value}, value)
        yield family


TOTAL_MESSAGES_RECEIVED: Final = ExactCounter(
    "total_messages_received",
    "total number of messages ever received",
    "service",
)

TOTAL_MESSAGES_DELIVERED: Final = ExactCounter(
    "total_messages_delivered",
    "total number of messages ever delivered",
    "service",
)

TOTAL_MESSAGES_TRANSFAIL: Final = ExactCounter(
    "total_messages_transfail",
    "total number of message delivery attempts that transiently failed",
    "service",
)

TOTAL_MESSAGES_FAIL: Final = ExactCounter(
    "total_messages_fail",
    "total number of message delivery attempts that permanently failed",
    "service",
)

SMTP_AUTH_FAILURES: Final = Counter(
    "smtp_server_auth_failures",
    "SMTP AUTH attempts an ESMTP listener refused: reason 'invalid_credentials' (535, the "
    "policy said no) or 'rate_limited' (454, the client IP is over max_auth_failures_per_ip) "
    "(kumoq).",
    ["listener", "reason"],
    registry=REGISTRY,
)


TOTAL_CONNECTIONS_DENIED: Final = ExactCounter(
    "total_connections_denied",
    "total number of connections rejected due to load shedding or concurrency limits",
    "service",
)

SMTP_SERVER_REJECTIONS: Final = ExactCounter(
    "smtp_server_rejections",
    "number of Rejection records logged by the smtp server",
    "service",
)

DELAYED_DUE_TO_MESSAGE_RATE_THROTTLE: Final = ExactCounter(
    "delayed_due_to_message_rate_throttle",
    "Number of times a message was delayed due to max_message_rate",
    "queue",
)

DELAYED_DUE_TO_READY_QUEUE_FULL: Final = ExactCounter(
    "delayed_due_to_ready_queue_full",
    "Number of times a message was delayed due to the corresponding ready queue being full",
    "queue",
)

DELAYED_DUE_TO_THROTTLE_INSERT_READY: Final = ExactCounter(
    "delayed_due_to_throttle_insert_ready",
    "number of times a message was delayed due to the throttle_insert_ready_queue event",
    "queue",
)

#: KumoMTA's ``InsertReason`` names (kumoq.scheduler.context) → the counter of that delay.
_DELAYED_BY_REASON: Final[dict[str, ExactCounter]] = {
    "MessageRateThrottle": DELAYED_DUE_TO_MESSAGE_RATE_THROTTLE,
    "ReadyQueueWasFull": DELAYED_DUE_TO_READY_QUEUE_FULL,
    "ThrottledByThrottleInsertReadyQueue": DELAYED_DUE_TO_THROTTLE_INSERT_READY,
}


def note_delayed(reason_name: str, queue: str) -> None:
    """Count one message of scheduled queue ``queue`` moved back into it for ``reason_name``
    (an ``InsertReason`` name) in KumoMTA's ``delayed_due_to_*`` counter for that reason: a
    ``max_message_rate`` (``MessageRateThrottle``), a full ready queue (``ReadyQueueWasFull``)
    or ``throttle_insert_ready_queue`` (``ThrottledByThrottleInsertReadyQueue``). Any other
    reason is not counted. One dict lookup and one dict update."""
    counter = _DELAYED_BY_REASON.get(reason_name)
    if counter is not None:
        counter.inc(queue)


LUA_EVENT_STARTED: Final = ExactCounter(
    "lua_event_started",
    "Incremented each time we start to call a lua event callback. Use lua_event_latency_count "
    "to track completed events.",
    "event",
)


class HistogramChild:
    """One series of a ``LoopHistogram``: per-bucket counts (not cumulative; the last one is
    ``+Inf``) and the sum. Observed from one thread only."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_many(self, value: float, n: int) -> None:
        """``n`` observations of ``value`` (``n`` messages stored by one write, say)."""
        self.counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n

    @property
    def count(self) -> int:
        return sum(self.counts)


class LoopHistogram:
    """A histogram with at most one label whose series are updated without a lock: every
    observation of a series must come from one thread (the event loop). Exposed as a standard
    Prometheus histogram (``<name>_bucket{le}``, ``_count``, ``_sum``).

    ``child(label_value)`` creates the series on first use and returns the same object after;
    callers keep it, or call ``child`` (one dict lookup) per observation. Without a label the
    one series is ``child()`` and exists from the start, at zero."""

    __slots__ = ("bounds", "children", "documentation", "labelname", "name")

    def __init__(
        self,
        name: str,
        documentation: str,
        labelname: str | None,
        buckets: Sequence[float],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelname = labelname
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self.children: dict[str, HistogramChild] = {}
        if labelname is None:
            self.child()
        registry.register(self)

    def child(self, label_value: str = "") -> HistogramChild:
        child = self.children.get(label_value)
        if child is None:
            child = self.children[label_value] = HistogramChild(self.bounds)
        return child

    def _family(self) -> HistogramMetricFamily:
        labels = [] if self.labelname is None else [self.labelname]
        return HistogramMetricFamily(self.name, self.documentation, labels=labels)

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        les = [_le(b) for b in self.bounds] + ["+Inf"]
        for label_value, child in list(self.children.items()):
            counts, total = list(child.counts), child.sum  # a snapshot; cumulated below
            buckets: list[tuple[str, float]] = []
            cumulative = 0
            for le, n in zip(les, counts, strict=True):
                cumulative += n
                buckets.append((le, float(cumulative)))
            labels = [] if self.labelname is None else [label_value]
            family.add_metric(labels, buckets=buckets, sum_value=total)
        yield family


#: KumoMTA's latency buckets (seconds), kept as a subset wherever a KumoMTA histogram is
#: exposed, so that queries on its ``le`` values keep working.
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Below 5 ms, where a policy event or a spool write on a fast disk usually ends.
_FINE_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025)

LUA_EVENT_LATENCY: Final = LoopHistogram(
    "lua_event_latency",
    "how long a given lua event callback took",
    "event",
    _FINE_BUCKETS + LATENCY_BUCKETS,
)

USER_LUA_LATENCY: Final = LoopHistogram(
    "user_lua_latency",
    "how long something user-defined took to run in your lua policy",
    "label",
    LATENCY_BUCKETS,
)

MESSAGE_SAVE_LATENCY: Final = LoopHistogram(
    "message_save_latency",
    "How many seconds it takes to save a message to spool",
    None,
    _FINE_BUCKETS[2:] + LATENCY_BUCKETS,
)

#: From a local relay's 10 ms to the default max_age (a week): where deliveries, bounces and
#: expirations fall.
_DISPOSITION_BUCKETS: Final = (
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0,
    86400.0, 2 * 86400.0, 4 * 86400.0, 7 * 86400.0,
)  # fmt: skip

DISPOSITION_LATENCY: Final = LoopHistogram(
    "kumoq_disposition_latency_seconds",
    "Seconds from a message's reception to its final record, by disposition: Delivery, "
    "Bounce, Expiration or AdminBounce (kumoq).",
    "disposition",
    _DISPOSITION_BUCKETS,
)

SPOOL_COMMIT_LATENCY: Final = Histogram(
    "kumoq_spool_commit_latency_seconds",
    "Seconds one group commit of the spool's writer thread takes (write, sync, rename), by "
    "spool kind (LocalDisk, SQLite, RocksDB); each commit carries every store and remove that "
    "arrived during the previous one (kumoq).",
    ["spool"],
    buckets=_FINE_BUCKETS[2:] + LATENCY_BUCKETS,
    registry=REGISTRY,
)

MESSAGES_RECEIVED_BY_PRIORITY: Final = Counter(
    "kumoq_messages_received_by_priority",
    "Messages accepted (their Reception record logged), by their priority meta: 0 low, "
    "1 normal, 2 high, 3 critical (kumoq).",
    ["priority"],
    registry=REGISTRY,
)


class ProcessGauges:
    """KumoMTA's ``memory_usage``: the process's resident set size in bytes, read from
    ``/proc/self/statm`` when scraped (absent where there is no ``/proc``)."""

    NAME: Final = "memory_usage"
    HELP: Final = "number of bytes of used memory (Resident Set Size)"

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(self.NAME, self.HELP)]

    def collect(self) -> Iterator[Metric]:
        try:
            with open("/proc/self/statm", "rb") as f:
                resident_pages = int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            return
        yield GaugeMetricFamily(
            self.NAME, self.HELP, value=float(resident_pages * os.sysconf("SC_PAGE_SIZE"))
        )


REGISTRY.register(ProcessGauges())
