"""End to end: SMTP in -> spool -> ready queue -> SMTP out to a real aiosmtpd sink."""

from __future__ import annotations

import socket
import threading
import time
from typing import cast

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.e2e.policies import policy

pytestmark = pytest.mark.integration


class Sink:
    """An aiosmtpd handler: 450 for 'tempfail' local parts, 550 for 'permfail', else 250.

    Counts connections and the most sessions open at once."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self._lock = threading.Lock()

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        local = address.partition("@")[0]
        if "tempfail" in local:
            return "450 4.2.0 tempfail requested"
        if "permfail" in local:
            return "550 5.1.1 permfail requested"
        if local.startswith("421-"):
            return "421 4.3.2 disconnecting now"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # no decode_data: the content is bytes; a null reverse-path is "", not None
        assert envelope.mail_from is not None
        assert isinstance(envelope.content, bytes)
        with self._lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 queued"


class CountingController(Controller):
    def factory(self):
        smtp = super().factory()  # type: ignore[no-untyped-call]  # untyped in aiosmtpd
        sink: Sink = self.handler
        original_made, original_lost = smtp.connection_made, smtp.connection_lost

        def made(transport):
            with sink._lock:
                sink.connections += 1
                sink.open += 1
                sink.max_open = max(sink.max_open, sink.open)
            original_made(transport)

        def lost(exc):
            with sink._lock:
                sink.open -= 1
            original_lost(exc)

        smtp.connection_made, smtp.connection_lost = made, lost
        return smtp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sink(sink_of):
    return sink_of(Sink)


def relay_policy(port: int, path: str = "prohibited_hosts = {}, enable_tls = 'Disabled',") -> str:
    return policy(
        f"""
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    retry_interval = '1s', protocol = {{ smtp = {{ mx_list = {{ '127.0.0.1:{port}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function(routing_domain, source, site)
  return kumo.make_egress_path {{ {path} }}
end)
"""
    )


def test_relays_to_the_sink_with_kumomta_record_fields(kumoq, sink):
    daemon = kumoq(relay_policy(sink.port))
    daemon.send("s@example.com", ["r@example.com"])
    (delivery,) = daemon.wait_for_records("Delivery", 1)
    assert len(sink.messages) == 1
    mail_from, rcpts, content = sink.messages[0]
    assert (mail_from, rcpts) == ("s@example.com", ["r@example.com"])
    assert b"This is the body." in content
    assert delivery["site"] == f"unspecified->mx_list:127.0.0.1:{sink.port}@smtp_client"
    assert delivery["delivery_protocol"] == "ESMTP"
    assert delivery["egress_pool"] == "unspecified"
    assert delivery["egress_source"] == "unspecified"
    assert delivery["peer_address"]["addr"] == "127.0.0.1"
    assert delivery["response"]["code"] == 250
    assert delivery["response"]["enhanced_code"] == {"class": 2, "subject": 0, "detail": 0}


def test_4xx_is_retried_and_5xx_bounces(kumoq, sink):
    daemon = kumoq(relay_policy(sink.port))
    daemon.send("s@example.com", ["tempfail@example.com", "permfail@example.com"])
    (bounce,) = daemon.wait_for_records("Bounce", 1)
    assert bounce["recipient"] == "permfail@example.com"
    assert bounce["response"]["code"] == 550
    failures = daemon.wait_for_records("TransientFailure", 2, timeout=15)
    assert {f["recipient"] for f in failures} == {"tempfail@example.com"}
    assert [f["num_attempts"] for f in failures[:2]] == [0, 1]


def test_loopback_is_prohibited_by_default(kumoq, sink):
    daemon = kumoq(relay_policy(sink.port, path="enable_tls = 'Disabled',"))
    daemon.send("s@example.com", ["r@example.com"])
    (bounce,) = daemon.wait_for_records("Bounce", 1)
    assert bounce["response"]["code"] == 550
    assert "prohibited_hosts" in bounce["response"]["content"]
    assert sink.messages == []


def test_sessions_are_reused_and_connection_limit_holds(kumoq, sink):
    daemon = kumoq(
        relay_policy(
            sink.port, path="prohibited_hosts = {}, enable_tls = 'Disabled', connection_limit = 2,"
        )
    )
    daemon.send("s@example.com", [f"r{i}@example.com" for i in range(30)])
    daemon.wait_for_records("Delivery", 30, timeout=30)
    assert len(sink.messages) == 30
    assert sink.max_open <= 2
    assert sink.connections < 30  # several messages per session


def pool_queue_config(port: int) -> str:
    """get_queue_config for the egress-pool tests: pool 'pool-1', smart host on ``port``."""
    return f"""
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    egress_pool = 'pool-1', protocol = {{ smtp = {{ mx_list = {{ '127.0.0.1:{port}' }} }} }},
  }}
end)
"""


class PeerCountingSink(Sink):
    def __init__(self) -> None:
        super().__init__()
        self.by_peer: dict[str, int] = {}

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # aiosmtpd annotates Session.peer as str, but it holds the transport's peername
        with self._lock:
            peer = cast("tuple[str, int]", session.peer)[0]
            self.by_peer[peer] = self.by_peer.get(peer, 0) + 1
        return await super().handle_DATA(server, session, envelope)


def test_egress_pool_spreads_messages_by_source_weight(kumoq, sink_of):
    handler = sink_of(PeerCountingSink)
    pools = (
        pool_queue_config(handler.port)
        + """
kumo.on('get_egress_pool', function(name)
  return kumo.make_egress_pool {
    name = name, entries = { { name = 'ip-2', weight = 1 }, { name = 'ip-3', weight = 2 } },
  }
end)
kumo.on('get_egress_source', function(name)
  local addr = { ['ip-2'] = '127.0.0.2', ['ip-3'] = '127.0.0.3' }
  return kumo.make_egress_source { name = name, source_address = addr[name] }
end)
kumo.on('get_egress_path_config', function(routing_domain, source, site)
  return kumo.make_egress_path { prohibited_hosts = {}, enable_tls = 'Disabled' }
end)
"""
    )
    daemon = kumoq(policy(pools))
    daemon.send("s@example.com", [f"r{i}@example.com" for i in range(300)])
    deliveries = daemon.wait_for_records("Delivery", 300, timeout=60)
    # egress_pool took effect: both sources were used, bound to their addresses ...
    assert set(handler.by_peer) == {"127.0.0.2", "127.0.0.3"}
    # ... in proportion to their weights (1:2), within 10%.
    assert abs(handler.by_peer["127.0.0.2"] - 100) <= 10, handler.by_peer
    assert abs(handler.by_peer["127.0.0.3"] - 200) <= 20, handler.by_peer
    sources = {d["egress_source"] for d in deliveries}
    assert sources == {"ip-2", "ip-3"}
    assert {d["egress_pool"] for d in deliveries} == {"pool-1"}


ZONES = """
$ORIGIN test.
$TTL 300
a             MX 10 mx.shared
b             MX 10 mx.shared
mx.shared     A  127.0.0.1
example       MX 10 mx1.example
example       MX 20 mx2.example
mx1.example   A  127.0.0.9
mx2.example   A  127.0.0.1
nullmx        MX 0 .
"""


def mx_policy(port: int) -> str:
    return policy(
        f"""
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{ retry_interval = '1s' }}
end)
kumo.on('get_egress_path_config', function(routing_domain, source, site)
  return kumo.make_egress_path {{
    prohibited_hosts = {{}}, enable_tls = 'Disabled', smtp_port = {port},
  }}
end)
""",
        listener="",
    ).replace(
        "kumo.configure_local_logs {",
        f"kumo.dns.configure_test_resolver [[{ZONES}]]\n  kumo.configure_local_logs {{",
    )


def test_mx_preference_order_falls_back_to_the_next_host(kumoq, sink):
    daemon = kumoq(mx_policy(sink.port))
    daemon.send("s@example.com", ["r@example.test"])
    (delivery,) = daemon.wait_for_records("Delivery", 1, timeout=20)
    assert delivery["peer_address"] == {"name": "mx2.example.test", "addr": "127.0.0.1"}
    assert delivery["site"] == "unspecified->(mx1|mx2).example.test@smtp_client"


def test_domains_sharing_mx_hosts_share_one_ready_queue(kumoq, sink):
    daemon = kumoq(mx_policy(sink.port))
    daemon.send("s@example.com", ["r@a.test", "r@b.test"])
    deliveries = daemon.wait_for_records("Delivery", 2, timeout=20)
    assert {d["queue"] for d in deliveries} == {"a.test", "b.test"}
    assert {d["site"] for d in deliveries} == {"unspecified->mx.shared.test@smtp_client"}


def test_null_mx_and_nxdomain_bounce(kumoq, sink):
    daemon = kumoq(mx_policy(sink.port))
    daemon.send("s@example.com", ["r@nullmx.test", "r@nosuch.test"])
    bounces = daemon.wait_for_records("Bounce", 2, timeout=20)
    by_rcpt = {b["recipient"]: b["response"] for b in bounces}
    assert by_rcpt["r@nullmx.test"]["code"] == 556
    assert by_rcpt["r@nullmx.test"]["enhanced_code"] == {"class": 5, "subject": 1, "detail": 10}
    assert by_rcpt["r@nosuch.test"]["code"] >= 500
    assert sink.messages == []


def test_421_is_a_transient_failure_that_ends_the_session(kumoq, sink):
    daemon = kumoq(relay_policy(sink.port))
    daemon.send("s@example.com", ["421-x@example.com"])
    failures = daemon.wait_for_records("TransientFailure", 2, timeout=15)
    assert failures[0]["response"]["code"] == 421
    # Each attempt needed a new connection: the 421 closed the previous one.
    assert sink.connections >= 2
    assert sink.messages == []


def test_path_message_rate_holds_20_per_second(kumoq, sink):
    daemon = kumoq(
        relay_policy(
            sink.port,
            path="prohibited_hosts = {}, enable_tls = 'Disabled', max_message_rate = '20/s',",
        )
    )
    daemon.send("s@example.com", [f"r{i}@example.com" for i in range(100)])
    deliveries = daemon.wait_for_records("Delivery", 100, timeout=30)
    times = sorted(_event_time(d) for d in deliveries)
    t0 = times[0]
    for k in range(1, 5):
        assert sum(1 for t in times if t < t0 + k) <= 20 + 20 * k + 1
    assert times[-1] - t0 >= 3.5  # 80 after the burst at 20/s


def _event_time(record) -> float:
    from datetime import datetime

    head, _, frac = record["event_time"].rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{frac[:6]}+00:00").timestamp()


def test_full_ready_queue_sends_messages_back_without_counting_an_attempt(kumoq, sink):
    daemon = kumoq(
        relay_policy(
            sink.port,
            path="prohibited_hosts = {}, enable_tls = 'Disabled', max_ready = 1,"
            " connection_limit = 1,",
        )
    )
    daemon.send("s@example.com", [f"r{i}@example.com" for i in range(8)])
    delayed = daemon.wait_for(
        lambda: [
            r for r in daemon.records("Delayed") if "ReadyQueueWasFull" in r["response"]["content"]
        ],
        what="a ReadyQueueWasFull Delayed record",
    )
    assert all(r["num_attempts"] == 0 for r in delayed)
    daemon.wait_for_records("Delivery", 1)  # the one that fitted is delivered meanwhile


def test_connection_rate_limits_new_sessions(kumoq, sink):
    daemon = kumoq(
        relay_policy(
            sink.port,
            path="prohibited_hosts = {}, enable_tls = 'Disabled', max_connection_rate = '2/s',"
            " max_deliveries_per_connection = 1,",
        )
    )
    daemon.send("s@example.com", [f"r{i}@example.com" for i in range(6)])
    deliveries = daemon.wait_for_records("Delivery", 6, timeout=20)
    times = sorted(_event_time(d) for d in deliveries)
    assert sink.connections - sink.baseline == 6  # one message per connection
    # 2 connections at once, then 2 per second: 6 connections need about 2 s.
    assert times[-1] - times[0] >= 1.5


class EhloRecordingSink(Sink):
    def __init__(self) -> None:
        super().__init__()
        self.ehlo_names: list[str] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert session.host_name is not None  # set by EHLO/HELO before any DATA
        with self._lock:
            self.ehlo_names.append(session.host_name)
        return await super().handle_DATA(server, session, envelope)


def test_a_refreshed_egress_source_applies_to_the_next_connection(kumoq, sink_of):
    """get_egress_source is asked again once its ttl has passed; the ready queue's next
    connection uses the new source (here: its ehlo_domain)."""
    handler = sink_of(EhloRecordingSink)
    sources = (
        pool_queue_config(handler.port)
        + """
local calls = 0
kumo.on('get_egress_pool', function(name)
  return kumo.make_egress_pool { name = name, entries = { { name = 'src' } } }
end)
kumo.on('get_egress_source', function(name)
  calls = calls + 1
  return kumo.make_egress_source {
    name = name, ehlo_domain = 'version' .. calls .. '.example', ttl = '1s',
  }
end)
kumo.on('get_egress_path_config', function(routing_domain, source, site)
  return kumo.make_egress_path {
    prohibited_hosts = {}, enable_tls = 'Disabled', idle_timeout = '100ms',
  }
end)
"""
    )
    daemon = kumoq(policy(sources))
    daemon.send("s@example.com", ["first@example.com"])
    daemon.wait_for_records("Delivery", 1)
    time.sleep(1.5)  # past the source's ttl and the connection's idle_timeout
    daemon.send("s@example.com", ["second@example.com"])
    daemon.wait_for_records("Delivery", 2)
    assert handler.ehlo_names == ["version1.example", "version2.example"]


def test_a_session_the_server_closed_while_idle_is_not_reused(kumoq):
    """The sink drops connections idle for 0.3 s (aiosmtpd's timeout: a 421, then close),
    well within the path's idle_timeout: the next message gets a new connection, not a
    failed attempt on the dead one."""
    handler = Sink()
    controller = CountingController(handler, hostname="127.0.0.1", port=free_port(), timeout=0.3)
    controller.start()
    try:
        daemon = kumoq(
            relay_policy(
                controller.port,
                path="prohibited_hosts = {}, enable_tls = 'Disabled', idle_timeout = '10s',",
            )
        )
        daemon.send("s@example.com", ["first@example.com"])
        daemon.wait_for_records("Delivery", 1)
        time.sleep(1.0)  # the sink hangs up on the idle session
        daemon.send("s@example.com", ["second@example.com"])
        deliveries = daemon.wait_for_records("Delivery", 2)
        assert [d["recipient"] for d in deliveries] == ["first@example.com", "second@example.com"]
        assert deliveries[0]["session_id"] != deliveries[1]["session_id"]
        assert daemon.records("TransientFailure") == []
    finally:
        controller.stop()
