"""KumoMTA's counters are exposed under their exact names, in text and in KumoMTA's JSON."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kumoq.http.metrics import metrics_json, prometheus_text
from kumoq.logs.logger import count_record
from kumoq.logs.records import RecordType
from kumoq.metrics import (
    TOTAL_MESSAGES_DELIVERED,
    TOTAL_MESSAGES_FAIL,
    TOTAL_MESSAGES_RECEIVED,
    TOTAL_MESSAGES_TRANSFAIL,
    ExactCounter,
)


def registry_with_everything() -> tuple[CollectorRegistry, ExactCounter]:
    registry = CollectorRegistry()
    exact = ExactCounter("total_messages_delivered", "total number of messages ever delivered",
                         "service", registry=registry)  # fmt: skip
    exact.inc("smtp_client")
    exact.inc("smtp_client:unspecified->mx.example.com@smtp_client", 2)
    exact.inc('odd"label\\')
    Counter("kumoq_restarts", "restarts", ["task"], registry=registry).labels("q").inc()
    Gauge("ready_count", "ready", ["service"], registry=registry).labels("a").set(3)
    Gauge("message_count", "messages", registry=registry).set(7)
    h = Histogram("latency", "lat", buckets=(0.1, 1.0), registry=registry)
    h.observe(0.05)
    h.observe(0.5)
    return registry, exact


def test_exact_counters_keep_kumomtas_names_in_the_text():
    registry, _ = registry_with_everything()
    text = prometheus_text(registry).decode()
    assert "# HELP total_messages_delivered total number of messages ever delivered\n" in text
    assert "# TYPE total_messages_delivered counter\n" in text
    assert 'total_messages_delivered{service="smtp_client"} 1.0\n' in text
    assert (
        'total_messages_delivered{service="smtp_client:unspecified->mx.example.com@smtp_client"}'
        " 2.0\n" in text
    )
    assert 'total_messages_delivered{service="odd\\"label\\\\"} 1.0\n' in text
    assert "total_messages_delivered_total" not in text
    # prometheus-client's own families are untouched.
    assert "# TYPE kumoq_restarts_total counter\n" in text
    assert 'kumoq_restarts_total{task="q"} 1.0\n' in text
    assert 'ready_count{service="a"} 3.0\n' in text
    assert 'latency_bucket{le="0.1"} 1.0\n' in text


def test_the_prefix_filter():
    registry, _ = registry_with_everything()
    text = prometheus_text(registry, "total_").decode()
    assert "total_messages_delivered" in text
    assert "ready_count" not in text


def test_kumomtas_json_shapes():
    registry, _ = registry_with_everything()
    data = metrics_json(registry)
    assert data["total_messages_delivered"] == {
        "help": "total number of messages ever delivered",
        "type": "counter",
        "value": {
            "service": {
                "smtp_client": 1.0,
                "smtp_client:unspecified->mx.example.com@smtp_client": 2.0,
                'odd"label\\': 1.0,
            }
        },
    }
    assert data["kumoq_restarts_total"]["value"] == {"task": {"q": 1.0}}
    assert data["message_count"] == {"help": "messages", "type": "gauge", "value": 7.0}
    assert data["latency"]["type"] == "histogram"
    assert data["latency"]["value"] == {
        "count": 2.0,
        "sum": 0.55,
        "avg": 0.275,
        "bucket": [[0.1, 1.0], [1.0, 2.0]],
    }


def test_two_labels_become_a_list():
    registry = CollectorRegistry()
    Gauge("g", "two labels", ["a", "b"], registry=registry).labels("x", "y").set(1)
    assert metrics_json(registry)["g"]["value"] == [{"a": "x", "b": "y", "@": 1.0}]


def test_log_records_count_as_kumomta_counts_them():
    before = {
        "recv_http": TOTAL_MESSAGES_RECEIVED.value("http_listener"),
        "recv_smtp": TOTAL_MESSAGES_RECEIVED.value("esmtp_listener"),
        "smtp": TOTAL_MESSAGES_DELIVERED.value("smtp_client"),
        "smtp_q": TOTAL_MESSAGES_DELIVERED.value("smtp_client:s->q@smtp_client"),
        "maildir": TOTAL_MESSAGES_DELIVERED.value("maildir"),
        "transfail": TOTAL_MESSAGES_TRANSFAIL.value("lua"),
        "fail": TOTAL_MESSAGES_FAIL.value("smtp_client"),
    }
    count_record(RecordType.Reception, {"reception_protocol": "HTTP"})
    count_record(RecordType.Reception, {"reception_protocol": "ESMTP"})
    count_record(RecordType.Delivery, {"delivery_protocol": "ESMTP", "site": "s->q@smtp_client"})
    count_record(RecordType.Delivery, {"delivery_protocol": "Maildir", "site": ""})
    count_record(RecordType.TransientFailure, {"delivery_protocol": "Lua", "site": ""})
    count_record(RecordType.Bounce, {"delivery_protocol": "ESMTP", "site": "s->q@smtp_client"})
    count_record(RecordType.Bounce, {})  # not from a deliverer: not a delivery attempt
    count_record(RecordType.Expiration, {"delivery_protocol": "ESMTP"})
    assert TOTAL_MESSAGES_RECEIVED.value("http_listener") == before["recv_http"] + 1
    assert TOTAL_MESSAGES_RECEIVED.value("esmtp_listener") == before["recv_smtp"] + 1
    assert TOTAL_MESSAGES_DELIVERED.value("smtp_client") == before["smtp"] + 1
    assert TOTAL_MESSAGES_DELIVERED.value("smtp_client:s->q@smtp_client") == before["smtp_q"] + 1
    assert TOTAL_MESSAGES_DELIVERED.value("maildir") == before["maildir"] + 1
    assert TOTAL_MESSAGES_TRANSFAIL.value("lua") == before["transfail"] + 1
    assert TOTAL_MESSAGES_FAIL.value("smtp_client") == before["fail"] + 1
