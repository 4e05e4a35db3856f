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
``connection_count``) cost nothing on the hot path: ``LiveGauges`` computes them at scrape
time from ``CountSource``s, which the daemon builds from its live queues and listeners.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

__all__ = [
    "ACCEPT_FAILURES",
    "LOG_RECORDS_DROPPED",
    "REGISTRY",
    "SMTP_AUTH_FAILURES",
    "SPOOL_QUARANTINED",
    "SUPERVISED_TASK_RESTARTS",
    "TOTAL_MESSAGES_DELIVERED",
    "TOTAL_MESSAGES_FAIL",
    "TOTAL_MESSAGES_RECEIVED",
    "TOTAL_MESSAGES_TRANSFAIL",
    "CountSource",
    "ExactCounter",
    "ExactNameFamily",
    "LiveGauges",
]

REGISTRY: Final = CollectorRegistry(auto_describe=True)

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


class CountSource(Protocol):
    """Called at scrape time (on the event loop thread): one ``(label value, count)`` pair per
    live object, such as a scheduled queue's name and the messages waiting in it."""

    def __call__(self) -> Iterable[tuple[str, float]]: ...


class LiveGauges:
    """KumoMTA's gauges ``scheduled_count`` (label ``queue``), ``ready_count`` (``queue``) and
    ``connection_count`` (``service``), read from their sources when scraped.

    The daemon registers one in ``REGISTRY`` when it starts and unregisters it at shutdown.
    A queue that was reaped is simply absent, as in KumoMTA once its metrics are pruned."""

    FAMILIES: Final = (
        ("scheduled_count", "number of messages in the scheduled queue", "queue"),
        ("ready_count", "number of messages in the ready queue", "queue"),
        ("connection_count", "number of active connections", "service"),
    )

    def __init__(
        self, *, scheduled: CountSource, ready: CountSource, connections: CountSource
    ) -> None:
        self._sources = (scheduled, ready, connections)

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(n, doc, labels=[label]) for n, doc, label in self.FAMILIES]

    def collect(self) -> Iterator[Metric]:
        for (name, doc, label), source in zip(self.FAMILIES, self._sources, strict=True):
            family = GaugeMetricFamily(name, doc, labels=[label])
            for label_value, count in source():
                family.add_metric([label_value], float(count))
            yield family
