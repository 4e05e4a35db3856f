"""The metrics of a real ``kumoq serve`` move as mail goes through it (issue 11), scraped
through real HTTP: KumoMTA's counters and Lua event histogram, and kumoq's own latency and
priority metrics.
"""

from __future__ import annotations

import re

import pytest

from kumoq.testing.harness import KumoqDaemon
from tests.e2e.policies import MAILDIR_QUEUE
from tests.e2e.test_http_api import call, inject

pytestmark = pytest.mark.integration

POLICY = (
    """
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.start_esmtp_listener { listen = '127.0.0.1:0', hostname = 'mx.test' }
  kumo.start_http_listener { listen = '127.0.0.1:0', hostname = 'http.test' }
  kumo.define_spool { name = 'data', path = './var/spool/data', kind = 'SQLite' }
  kumo.define_spool { name = 'meta', path = './var/spool/meta', kind = 'SQLite' }
  kumo.configure_local_logs { log_dir = './var/log', max_segment_duration = '1s' }
end)
kumo.on('smtp_server_message_received', function(msg) msg:set_meta('priority', 2) end)
kumo.on('http_message_generated', function(msg) msg:set_meta('priority', 3) end)
"""
    + MAILDIR_QUEUE
)

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(daemon: KumoqDaemon) -> Samples:
    """``GET /metrics``, every sample by name and labels."""
    status, headers, text = call(daemon, "GET", "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or line.startswith("#"):
            continue
        name, labels, value = match.groups()
        samples[name, frozenset(_LABEL.findall(labels or ""))] = float(value)
    return samples


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_the_metrics_move_as_messages_are_received_and_delivered(kumoq):
    daemon = kumoq(POLICY)
    before = scrape(daemon)
    assert get(before, "memory_usage") > 0
    request = inject([{"email": f"h{i}@example.com"} for i in range(2)], "Subject: m\n\nm")
    assert call(daemon, "POST", "/api/inject/v1", request)[0] == 200
    daemon.send("s@example.com", ["smtp@example.com"])
    daemon.wait_for_maildir_count(3)

    def delivered() -> Samples | None:
        now = scrape(daemon)
        count = "kumoq_disposition_latency_seconds_count"
        done = get(now, count, disposition="Delivery") - get(before, count, disposition="Delivery")
        return now if done >= 3 else None

    after = daemon.wait_for(delivered, 10, what="three Delivery latencies")

    def grew(name: str, **labels: str) -> float:
        return get(after, name, **labels) - get(before, name, **labels)

    # KumoMTA's names
    assert grew("total_messages_received", service="http_listener") == 2
    assert grew("total_messages_received", service="esmtp_listener") == 1
    assert grew("total_messages_delivered", service="maildir") == 3
    assert grew("lua_event_started", event="http_message_generated") == 2
    assert grew("lua_event_latency_count", event="http_message_generated") == 2
    assert grew("lua_event_latency_count", event="smtp_server_message_received") == 1
    assert grew("lua_event_latency_bucket", event="smtp_server_message_received", le="+Inf") == 1
    assert grew("lua_event_latency_count", event="get_queue_config") >= 1
    assert grew("message_save_latency_count") >= 3
    assert get(after, "scheduled_count_total") >= 0
    # kumoq's own
    assert grew("kumoq_disposition_latency_seconds_count", disposition="Delivery") == 3
    assert grew("kumoq_disposition_latency_seconds_bucket", disposition="Delivery", le="60.0") == 3
    assert grew("kumoq_disposition_latency_seconds_sum", disposition="Delivery") > 0
    assert grew("kumoq_messages_received_by_priority_total", priority="3") == 2
    assert grew("kumoq_messages_received_by_priority_total", priority="2") == 1
    assert grew("kumoq_messages_received_by_priority_total", priority="1") == 0
    assert grew("kumoq_spool_commit_latency_seconds_count", spool="SQLite") >= 3

    as_json = call(daemon, "GET", "/metrics.json?prefix=kumoq_disposition")[2]
    assert list(as_json) == ["kumoq_disposition_latency_seconds"]
    delivery = as_json["kumoq_disposition_latency_seconds"]["value"]["disposition"]["Delivery"]
    assert delivery["count"] >= 3
