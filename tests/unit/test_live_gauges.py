"""KumoMTA's gauges computed at scrape time from the live objects (issue 11)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from kumoq.gauges import LiveGauges
from kumoq.http.metrics import metrics_json, prometheus_text


def test_gauges_read_their_sources_at_each_scrape():
    scheduled = {"example.com": 2, "campaign:tenant@other.test": 0}
    ready: dict[str, int] = {}
    reads = 0

    def connections() -> list[tuple[str, int]]:
        nonlocal reads
        reads += 1
        return [("esmtp_listener", 3), ("smtp_client", 1), ("smtp_client:a->b@smtp_client", 1)]

    registry = CollectorRegistry()
    registry.register(
        LiveGauges(scheduled=scheduled.items, ready=ready.items, connections=connections)
    )
    reads = 0
    text = prometheus_text(registry).decode()
    assert reads == 1
    assert "# TYPE scheduled_count gauge\n" in text
    assert 'scheduled_count{queue="example.com"} 2.0\n' in text
    assert 'scheduled_count{queue="campaign:tenant@other.test"} 0.0\n' in text
    assert "# TYPE ready_count gauge\n" in text
    assert "ready_count{" not in text
    assert 'connection_count{service="esmtp_listener"} 3.0\n' in text
    assert 'connection_count{service="smtp_client:a->b@smtp_client"} 1.0\n' in text
    assert "scheduled_count_total 2.0\n" in text  # KumoMTA's gauge of that name
    assert "_total" not in text.replace("scheduled_count_total", "")

    # The numbers move with the objects, with nothing counted on the way.
    scheduled["example.com"] = 0
    ready["a->b@smtp_client"] = 5
    as_json = metrics_json(registry)
    assert as_json["scheduled_count"] == {
        "help": "number of messages in the scheduled queue",
        "type": "gauge",
        "value": {"queue": {"example.com": 0.0, "campaign:tenant@other.test": 0.0}},
    }
    # KumoMTA's service label: "<protocol>:<ready queue>", and the protocol's total (kcli's)
    assert as_json["ready_count"]["value"] == {
        "service": {"smtp_client:a->b@smtp_client": 5.0, "smtp_client": 5.0}
    }
    assert as_json["connection_count"]["value"]["service"]["esmtp_listener"] == 3.0


def test_unregistered_gauges_are_gone():
    registry = CollectorRegistry()
    gauges = LiveGauges(scheduled=lambda: [("q", 1)], ready=list, connections=list)
    registry.register(gauges)
    registry.unregister(gauges)
    assert "scheduled_count" not in prometheus_text(registry).decode()
    # Registered again (a second daemon in the same process) without a name clash.
    registry.register(gauges)
    assert 'scheduled_count{queue="q"} 1.0' in prometheus_text(registry).decode()
