"""End to end: two ``kumoq serve`` nodes sharing throttles and connection limits through one
real redis-server (``kumo.configure_redis_throttles``).

Each node has its own work directory, spool and ports; both relay to one counting aiosmtpd
sink, over the same egress path (so the same throttle and ready-queue keys). Rates are checked
as the least time the deliveries must span, never as an upper bound."""

from __future__ import annotations

import email
import time
from collections import Counter

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.e2e.policies import policy
from tests.e2e.test_throttles import TimedSink
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def node_policy(redis_url: str, sink_port: int, path: str) -> str:
    text = policy(
        f"""
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    retry_interval = '1s', protocol = {{ smtp = {{ mx_list = {{ '127.0.0.1:{sink_port}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function(routing_domain, source, site)
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, enable_tls = 'Disabled', {path} }}
end)
"""
    )
    redis = f"  kumo.configure_redis_throttles {{ node = '{redis_url}', connect_timeout = '2s' }}\n"
    marker = "  kumo.define_spool"
    return text.replace(marker, redis + marker, 1)


class HoldingSink(TimedSink):
    """Holds DATA a while, so that sessions of both nodes overlap."""

    hold = 0.3


class IdSink(TimedSink):
    """Counts each message by its Message-ID."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: Counter[str] = Counter()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        msg_id = email.message_from_bytes(envelope.content).get("Message-ID", "?")
        with self._lock:
            self.ids[msg_id] += 1
        return await super().handle_DATA(server, session, envelope)


def two_nodes(kumoq, redis_server: RedisServer, sink_port: int, path: str):
    text = node_policy(redis_server.url, sink_port, path)
    return kumoq(text, name="node-a"), kumoq(text, name="node-b")


def test_two_nodes_share_a_path_message_rate(kumoq, sink_of, redis_server) -> None:
    sink = sink_of(TimedSink)
    nodes = two_nodes(kumoq, redis_server, sink.port, "max_message_rate = '20/s',")
    for node in nodes:
        assert any("shared through" in line for line in node.stderr_lines), node.stderr_lines
    for node in nodes:
        node.send("s@example.com", [f"r{i}@example.com" for i in range(80)])
    for node in nodes:
        node.wait_for_records("Delivery", 80, timeout=120)
    assert len(sink.arrivals) == 160
    span = max(sink.arrivals) - min(sink.arrivals)
    # Shared, 160 at 20/s after a burst of 20 take (160 - 20) / 20 = 7 s; each node alone
    # (40/s together) would take 3 s. The slack covers the whole-second redis clock.
    assert span >= 7.0 - 1.5, span


def test_two_nodes_share_a_connection_limit(kumoq, sink_of, redis_server) -> None:
    sink = sink_of(HoldingSink)
    nodes = two_nodes(kumoq, redis_server, sink.port, "connection_limit = 4,")
    for node in nodes:
        node.send("s@example.com", [f"r{i}@example.com" for i in range(40)])
    for node in nodes:
        node.wait_for_records("Delivery", 40, timeout=180)
    assert len(sink.messages) == 80
    assert sink.max_open <= 4, sink.max_open  # each node alone would open 4


def test_a_redis_restart_mid_run_loses_no_message(kumoq, sink_of, redis_server) -> None:
    sink = sink_of(IdSink)
    nodes = two_nodes(
        kumoq, redis_server, sink.port, "max_message_rate = '20/s', connection_limit = 3,"
    )
    sent = []
    for n, node in enumerate(nodes):
        for i in range(60):
            msg_id = f"<m{n}-{i}@redis.test>"
            node.send("s@example.com", f"r{i}@example.com", headers={"Message-ID": msg_id})
            sent.append(msg_id)
    nodes[0].wait_for(lambda: len(sink.messages) >= 10, timeout=60)
    redis_server.stop()
    time.sleep(2.0)  # both nodes fall back to their own throttles and leases
    redis_server.start()
    for node in nodes:
        node.wait_for_records("Delivery", 60, timeout=180)
    nodes[0].wait_for(lambda: len(sink.messages) >= 120, timeout=30)
    time.sleep(1.0)  # a duplicate would arrive now
    assert sorted(sink.ids) == sorted(sent)
    assert set(sink.ids.values()) == {1}, [k for k, v in sink.ids.items() if v > 1]
    warned = []
    for node in nodes:
        assert not node.records("Bounce")
        lines = [line for line in node.stderr_lines if "does not answer" in line]
        assert len(lines) <= 1, lines  # one warning per outage, not one per check
        warned += lines
    assert warned, "no node noticed the outage"
