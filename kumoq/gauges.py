"""KumoMTA's gauges of what waits and what is connected, computed when ``/metrics`` is scraped
from the daemon's live queues and listeners (``LiveGauges``): nothing on the hot path counts
them. A collector: the daemon registers it in ``kumoq.metrics.REGISTRY`` when it starts and
unregisters it at shutdown. docs/operations.md ("Metrics") lists the gauges.

L0: imports prometheus-client only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Final, Protocol

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

__all__ = ["CountSource", "LiveGauges"]


class CountSource(Protocol):
    """Called at scrape time (on the event loop thread): one ``(label value, count)`` pair per
    live object, such as a scheduled queue's name and the messages waiting in it."""

    def __call__(self) -> Iterable[tuple[str, float]]: ...


class LiveGauges:
    """Gauges read from their sources when scraped, with KumoMTA's names and labels:

    - ``scheduled``: ``(scheduled queue, messages)`` → ``scheduled_count{queue}``, and their
      sum and number as ``scheduled_count_total`` and ``scheduled_queue_count``;
    - ``ready``: ``(ready queue, messages)`` → ``ready_count{service}``, KumoMTA's service
      being ``<protocol>:<ready queue>`` (``smtp_client:unspecified->mx.example.com@smtp_client``)
      plus one total per protocol (``smtp_client``), which is what kcli reads;
    - ``connections``: ``(service, connections)`` → ``connection_count{service}`` as given;
    - ``dead_letters`` (optional): kumoq's ``kumoq_dead_letter_count``.

    The daemon registers one in ``REGISTRY`` when it starts and unregisters it at shutdown.
    A queue that was reaped is simply absent, as in KumoMTA once its metrics are pruned."""

    SCHEDULED: Final = ("scheduled_count", "number of messages in the scheduled queue")
    SCHEDULED_TOTAL: Final = (
        "scheduled_count_total",
        "total number of messages across all scheduled queues",
    )
    SCHEDULED_QUEUES: Final = (
        "scheduled_queue_count",
        "how many scheduled queues are tracked by the QueueManager",
    )
    READY: Final = ("ready_count", "number of messages in the ready queue")
    CONNECTIONS: Final = ("connection_count", "number of active connections")
    DEAD_LETTERS: Final = (
        "kumoq_dead_letter_count",
        "Messages kept in the dead-letter store (bounced or expired, within "
        "dead_letter_retention) (kumoq).",
    )

    def __init__(
        self,
        *,
        scheduled: CountSource,
        ready: CountSource,
        connections: CountSource,
        dead_letters: Callable[[], int] | None = None,
    ) -> None:
        self._scheduled = scheduled
        self._ready = ready
        self._connections = connections
        self._dead_letters = dead_letters

    def describe(self) -> list[Metric]:
        families: list[Metric] = [
            GaugeMetricFamily(*self.SCHEDULED, labels=["queue"]),
            GaugeMetricFamily(*self.SCHEDULED_TOTAL),
            GaugeMetricFamily(*self.SCHEDULED_QUEUES),
            GaugeMetricFamily(*self.READY, labels=["service"]),
            GaugeMetricFamily(*self.CONNECTIONS, labels=["service"]),
        ]
        if self._dead_letters is not None:
            families.append(GaugeMetricFamily(*self.DEAD_LETTERS))
        return families

    def collect(self) -> Iterator[Metric]:
        scheduled = GaugeMetricFamily(*self.SCHEDULED, labels=["queue"])
        total, queues = 0.0, 0
        for queue, count in self._scheduled():
            scheduled.add_metric([queue], float(count))
            total += count
            queues += 1
        yield scheduled
        yield GaugeMetricFamily(*self.SCHEDULED_TOTAL, value=total)
        yield GaugeMetricFamily(*self.SCHEDULED_QUEUES, value=queues)

        ready = GaugeMetricFamily(*self.READY, labels=["service"])
        by_protocol: dict[str, float] = {}
        for queue, count in self._ready():
            protocol = _ready_protocol(queue)
            ready.add_metric([f"{protocol}:{queue}"], float(count))
            by_protocol[protocol] = by_protocol.get(protocol, 0.0) + count
        for protocol, count in by_protocol.items():
            ready.add_metric([protocol], count)
        yield ready

        connections = GaugeMetricFamily(*self.CONNECTIONS, labels=["service"])
        for service, count in self._connections():
            connections.add_metric([service], float(count))
        yield connections
        if self._dead_letters is not None:
            yield GaugeMetricFamily(*self.DEAD_LETTERS, value=float(self._dead_letters()))


def _ready_protocol(queue: str) -> str:
    """KumoMTA's service type of a ready queue ``<source>-><site>@<protocol>``: ``smtp_client``,
    ``lua`` (``@lua:<constructor>``) or ``maildir`` (``@maildir:<path>``)."""
    if queue.endswith("@smtp_client"):
        return "smtp_client"
    for protocol in ("lua", "maildir"):
        if f"@{protocol}:" in queue:
            return protocol
    return queue.rpartition("@")[2] or "unknown"
