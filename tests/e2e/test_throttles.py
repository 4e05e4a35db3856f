"""End to end: throttles and limits shared across egress paths, and ``kumo.make_throttle``.

Real ``kumoq serve`` (the ``kumoq`` fixture) relaying to a real aiosmtpd sink that counts what
it receives: two egress sources (two paths to one site) share an
``additional_message_rate_throttles`` name and an ``additional_connection_limits`` name; a
reception policy throttles per tenant with ``kumo.make_throttle``. No timed upper bounds: the
rate is checked as the least time the deliveries must span."""

from __future__ import annotations

import asyncio
import smtplib
import time
from typing import cast

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.e2e.policies import policy
from tests.e2e.test_smtp_relay import Sink, pool_queue_config

pytestmark = pytest.mark.integration

TWO_SOURCES = """
kumo.on('get_egress_pool', function(name)
  return kumo.make_egress_pool {
    name = name, entries = { { name = 'ip-2', weight = 1 }, { name = 'ip-3', weight = 1 } },
  }
end)
kumo.on('get_egress_source', function(name)
  local addr = { ['ip-2'] = '127.0.0.2', ['ip-3'] = '127.0.0.3' }
  return kumo.make_egress_source { name = name, source_address = addr[name] }
end)
"""


class TimedSink(Sink):
    """Records when each message arrived and from which source address; DATA takes a while
    (``hold`` seconds) so that sessions overlap."""

    hold = 0.0

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[float] = []
        self.by_peer: dict[str, int] = {}

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.hold:
            await asyncio.sleep(self.hold)
        with self._lock:
            self.arrivals.append(time.monotonic())
            peer = cast("tuple[str, int]", session.peer)[0]
            self.by_peer[peer] = self.by_peer.get(peer, 0) + 1
        return await super().handle_DATA(server, session, envelope)


class SlowSink(TimedSink):
    hold = 0.2


def two_paths(port: int, path: str) -> str:
    return policy(
        pool_queue_config(port)
        + TWO_SOURCES
        + f"""
kumo.on('get_egress_path_config', function(routing_domain, source, site)
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, enable_tls = 'Disabled', {path} }}
end)
"""
    )


def test_two_paths_sharing_a_message_rate_deliver_at_the_shared_rate(kumoq, sink_of):
    sink = sink_of(TimedSink)
    # '1/s': the GCRA admits one at once, then one a second: 8 messages over the two paths
    # take at least 7 s together (each path alone, 4 messages, would take 3 s).
    daemon = kumoq(two_paths(sink.port, "additional_message_rate_throttles = { shared = '1/s' },"))
    daemon.send("s@example.com", [f"r{i}@example.com" for i in range(8)])
    daemon.wait_for_records("Delivery", 8, timeout=90)
    assert set(sink.by_peer) == {"127.0.0.2", "127.0.0.3"}, sink.by_peer  # two paths
    span = max(sink.arrivals) - min(sink.arrivals)
    assert span >= 6.0, span  # 7 s, less the first connection's own set-up


def test_an_additional_connection_limit_holds_across_two_paths(kumoq, sink_of):
    sink = sink_of(SlowSink)
    daemon = kumoq(
        two_paths(
            sink.port, "connection_limit = 10, additional_connection_limits = { shared = 2 },"
        )
    )
    daemon.send("s@example.com", [f"r{i}@example.com" for i in range(40)])
    daemon.wait_for_records("Delivery", 40, timeout=120)
    assert set(sink.by_peer) == {"127.0.0.2", "127.0.0.3"}, sink.by_peer
    assert len(sink.messages) == 40
    assert sink.max_open <= 2, sink.max_open


def test_without_the_shared_limit_the_two_paths_open_more(kumoq, sink_of):
    """The counterpart of the test above: the sink sees more than 2 at once without it."""
    sink = sink_of(SlowSink)
    daemon = kumoq(two_paths(sink.port, "connection_limit = 10,"))
    daemon.send("s@example.com", [f"r{i}@example.com" for i in range(40)])
    daemon.wait_for_records("Delivery", 40, timeout=120)
    assert sink.max_open > 2, sink.max_open


TENANT_THROTTLE = """
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  local tenant = msg:get_first_named_header_value 'X-Tenant' or 'none'
  msg:set_meta('tenant', tenant)
  if tenant == 'patient' then
    local slept = kumo.make_throttle('patient', '1/s'):sleep_if_throttled()
    msg:set_meta('slept', slept)
    return
  end
  local result = kumo.make_throttle('tenant-' .. tenant, '2/h'):throttle()
  if result.throttled then
    kumo.reject(451, string.format('4.4.5 tenant %s is over its rate, retry in %ds',
      tenant, result.retry_after.secs))
  end
end)
"""


def test_make_throttle_per_tenant_in_message_received(kumoq):
    from tests.e2e.policies import MAILDIR_QUEUE

    daemon = kumoq(policy(MAILDIR_QUEUE + TENANT_THROTTLE))
    for _ in range(2):
        daemon.send("s@example.com", ["r@example.com"], headers={"X-Tenant": "a"})
    with pytest.raises(smtplib.SMTPDataError) as refused:
        daemon.send("s@example.com", ["r@example.com"], headers={"X-Tenant": "a"})
    assert refused.value.smtp_code == 451
    assert b"tenant a is over its rate, retry in" in refused.value.smtp_error
    daemon.send("s@example.com", ["r@example.com"], headers={"X-Tenant": "b"})  # its own
    daemon.wait_for_maildir_count(3)

    started = time.monotonic()
    for _ in range(3):
        daemon.send("s@example.com", ["r@example.com"], headers={"X-Tenant": "patient"})
    assert time.monotonic() - started >= 1.5  # 1/s: the 2nd and 3rd waited about 1 s each
    daemon.wait_for_maildir_count(6)

    def patient() -> list[str] | None:
        slept = [str(r["meta"].get("slept")) for r in daemon.records("Reception")
                 if r["meta"].get("tenant") == "patient"]  # fmt: skip
        return sorted(slept) if len(slept) == 3 else None

    assert daemon.wait_for(patient, timeout=30) == ["False", "True", "True"]


def per_source_paths(port: int, by_source: str, common: str = "") -> str:
    return policy(
        pool_queue_config(port)
        + TWO_SOURCES
        + f"""
local BY_SOURCE = {{ {by_source} }}
kumo.on('get_egress_path_config', function(routing_domain, source, site)
  local path = {{ prohibited_hosts = {{}}, enable_tls = 'Disabled', {common} }}
  path.source_selection_rate = BY_SOURCE[source]
  return kumo.make_egress_path(path)
end)
"""
    )


def test_source_selection_rate_skips_an_exhausted_source(kumoq, sink_of):
    sink = sink_of(TimedSink)
    daemon = kumoq(per_source_paths(sink.port, "['ip-2'] = '1/h'"))
    daemon.send("s@example.com", [f"r{i}@example.com" for i in range(10)])
    deliveries = daemon.wait_for_records("Delivery", 10, timeout=60)
    assert sink.by_peer == {"127.0.0.2": 1, "127.0.0.3": 9}, sink.by_peer
    assert sum(d["egress_source"] == "ip-2" for d in deliveries) == 1


def test_every_source_exhausted_is_a_transient_failure(kumoq, sink_of):
    sink = sink_of(TimedSink)
    daemon = kumoq(
        per_source_paths(
            sink.port, "", "additional_source_selection_rates = { ['pool-wide'] = '1/h' },"
        )
    )
    daemon.send("s@example.com", [f"r{i}@example.com" for i in range(3)])
    daemon.wait_for_records("Delivery", 1, timeout=30)
    failures = daemon.wait_for_records("TransientFailure", 2, timeout=30)
    assert all(
        "are eligible for selection at this time" in f["response"]["content"] for f in failures
    ), failures
    assert len(sink.messages) == 1
