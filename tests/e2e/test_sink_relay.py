"""End to end with the test tools of issue 13: ``traffic`` sends into a real ``kumoq serve``
(over SMTP, and over ``POST /api/inject/v1``), the daemon relays to the ``smart_sink``, and
every message is found in the sink; refusals by the sink come back as the daemon's records."""

from __future__ import annotations

import socket

import pytest

from kumoq.testing import TargetUnreachable
from tests.e2e.policies import TENANT_FROM_HEADERS

pytestmark = pytest.mark.integration


def relay_policy(sink_port: int) -> str:
    """SMTP and HTTP in; every queue relays to the sink (no TLS) and retries after an hour."""
    return f"""
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:0', hostname = 'mx.test' }}
  kumo.start_http_listener {{ listen = '127.0.0.1:0' }}
  kumo.define_spool {{ name = 'data', path = './var/spool', kind = 'SQLite' }}
  kumo.define_spool {{ name = 'meta', path = './var/spool', kind = 'SQLite' }}
  kumo.configure_local_logs {{
    log_dir = './var/log', max_segment_duration = '1s', meta = {{ '*' }},
  }}
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    retry_interval = '1h',
    protocol = {{ smtp = {{ mx_list = {{ '127.0.0.1:{sink_port}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function(routing_domain, source, site)
  return kumo.make_egress_path {{ enable_tls = 'Disabled', prohibited_hosts = {{}} }}
end)
kumo.on('http_message_generated', function(msg, auth)
  local user = msg:recipient().user
  if string.find(user, 'refused') then kumo.reject(550, '5.7.1 refused here') end
  if string.find(user, 'later') then kumo.reject(451, '4.7.1 try later') end
  local campaign = msg:get_first_named_header_value 'X-Campaign'
  if campaign then msg:set_meta('campaign', campaign) end
end)
{TENANT_FROM_HEADERS}
"""


def test_smtp_traffic_through_kumoq_ends_in_the_sink(kumoq, smart_sink, traffic):
    daemon = kumoq(relay_policy(smart_sink.port))
    summary = traffic(
        daemon.smtp_address, count=200, concurrency=4, per_connection=25,
        domains=["gmail.com:3", "yahoo.com:1"], headers={"X-Tenant": "acme"}, campaign="spring",
    )  # fmt: skip
    assert (summary.accepted, summary.errors) == (200, 0)
    smart_sink.wait_for(accepted=200)
    messages = smart_sink.messages()
    numbers = sorted(int(m["Delivered-To"].split("@")[0].removeprefix("user")) for m in messages)
    assert numbers == list(range(200))
    domains = [m["Delivered-To"].partition("@")[2] for m in messages]
    assert (domains.count("gmail.com"), domains.count("yahoo.com")) == (150, 50)
    assert {m["X-Campaign"] for m in messages} == {"spring"}
    assert all(m["Received"] for m in messages)  # kumoq's trace header went along
    deliveries = daemon.wait_for_records("Delivery", 200)
    assert {r["queue"] for r in deliveries} == {"spring:acme@gmail.com", "spring:acme@yahoo.com"}
    # The daemon reuses its connections to the sink.
    assert smart_sink.counts["sessions"] < 200


def test_sink_refusals_become_the_daemons_records(kumoq, smart_sink, traffic):
    daemon = kumoq(relay_policy(smart_sink.port))
    assert traffic(daemon.smtp_address, count=5, local_part="permfail").accepted == 5
    assert traffic(daemon.smtp_address, count=5, local_part="450-busy").accepted == 5
    bounces = daemon.wait_for_records("Bounce", 5)
    assert {r["response"]["code"] for r in bounces} == {500}
    failures = daemon.wait_for_records("TransientFailure", 5)
    assert {r["response"]["code"] for r in failures} == {450}
    assert smart_sink.counts["accepted"] == 0


def test_http_injection_traffic_ends_in_the_sink(kumoq, smart_sink, traffic):
    daemon = kumoq(relay_policy(smart_sink.port))
    host, port = daemon.listeners["http"]
    summary = traffic(http=f"http://{host}:{port}", count=150, http_batch=40, concurrency=2,
                      campaign="autumn")  # fmt: skip
    assert summary.mode == "http"
    assert (summary.sent, summary.accepted, summary.errors) == (150, 150, 0)
    assert summary.connections == 4  # requests of 40, 40, 40 and 30 recipients
    smart_sink.wait_for(accepted=150)
    messages = smart_sink.messages()
    assert sorted(m["Delivered-To"] for m in messages) == sorted(
        f"user{i}@example.com" for i in range(150)
    )
    assert all(m["To"] == f"<{m['Delivered-To']}>" for m in messages)  # the To: template
    deliveries = daemon.wait_for_records("Delivery", 150)
    assert {r["queue"] for r in deliveries} == {"autumn:@example.com"}


@pytest.mark.parametrize(("local_part", "field"), [("refused", "permfailed"),
                                                   ("later", "tempfailed")])  # fmt: skip
def test_http_refusals_are_counted_by_their_code(kumoq, smart_sink, traffic, local_part, field):
    daemon = kumoq(relay_policy(smart_sink.port))
    host, port = daemon.listeners["http"]
    summary = traffic(http=f"http://{host}:{port}/api/inject/v1", count=12, http_batch=5,
                      local_part=local_part)  # fmt: skip
    assert getattr(summary, field) == 12
    assert summary.accepted == summary.errors == 0
    assert summary.reply_samples


def test_an_unreachable_http_target_raises(traffic):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TargetUnreachable, match=f"cannot connect to http://127.0.0.1:{port}"):
        traffic(http=f"http://127.0.0.1:{port}", count=3)
