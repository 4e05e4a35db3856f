"""End to end: protocol = {custom_lua = {constructor = ...}} delivers through policy code."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from tests.e2e.policies import policy

pytestmark = pytest.mark.integration

WEBHOOK = """
kumo.on('make.webhook', function(domain, tenant, campaign)
  local conn = { sent = 0 }
  function conn:send(msg)
    local user = msg:recipient().user
    if user == 'tempfail' then kumo.reject(450, '4.2.0 try later') end
    if user == 'permfail' then kumo.reject(550, '5.1.1 no such user') end
    if user == 'boom' then error('webhook exploded') end
    self.sent = self.sent + 1
    return 'posted to ' .. domain .. ' (#' .. self.sent .. ' on this connection)'
  end
  return conn
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    retry_interval = '1s', protocol = { custom_lua = { constructor = 'make.webhook' } },
  }
end)
"""


def test_custom_lua_delivery_success_reject_and_error(kumoq):
    daemon = kumoq(policy(WEBHOOK))
    daemon.send("s@example.com", ["a@hook.test", "b@hook.test"])
    deliveries = daemon.wait_for_records("Delivery", 2)
    contents = sorted(d["response"]["content"] for d in deliveries)
    # One connection served both messages.
    assert contents == [
        "posted to hook.test (#1 on this connection)",
        "posted to hook.test (#2 on this connection)",
    ]
    first = deliveries[0]
    assert first["response"]["code"] == 200
    assert first["delivery_protocol"] == "Lua"
    assert first["site"] == "unspecified->hook.test@lua:make.webhook"
    assert first["peer_address"] == {"name": "Lua via make.webhook", "addr": "0.0.0.0"}

    daemon.send("s@example.com", ["tempfail@hook.test", "permfail@hook.test", "boom@hook.test"])
    (bounce,) = daemon.wait_for_records("Bounce", 1)
    assert bounce["recipient"] == "permfail@hook.test"
    assert bounce["response"]["code"] == 550
    assert bounce["response"]["content"] == "no such user"
    failures = daemon.wait_for_records("TransientFailure", 4, timeout=15)
    by_rcpt: dict[str, list[dict[str, Any]]] = {}
    for f in failures:
        by_rcpt.setdefault(f["recipient"], []).append(f["response"])
    assert by_rcpt["tempfail@hook.test"][0]["code"] == 450
    boom = by_rcpt["boom@hook.test"][0]
    assert boom["code"] == 400
    assert "error in deliver_message" in boom["content"]
    assert "webhook exploded" in boom["content"]


BATCHES = """
kumo.on('make.batch', function(domain, tenant, campaign)
  local conn = { batches = 0 }
  function conn:send_batch(msgs)
    if domain == 'temp.test' then kumo.reject(450, '4.2.0 batch of ' .. #msgs .. ' deferred') end
    if domain == 'perm.test' then kumo.reject(550, '5.1.1 batch of ' .. #msgs .. ' refused') end
    if domain == 'boom.test' then error('batch of ' .. #msgs .. ' exploded') end
    self.batches = self.batches + 1
    local users = {}
    for i, msg in ipairs(msgs) do users[i] = msg:recipient().user end
    return 'batch #' .. self.batches .. ' of ' .. #msgs .. ': ' .. table.concat(users, ',')
  end
  return conn
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local batch = { constructor = 'make.batch', batch_size = 3, min_batch_size = 3,
    max_batch_latency = '1s' }
  if domain ~= 'hook.test' then batch.min_batch_size = 2; batch.max_batch_latency = '5s' end
  return kumo.make_queue_config { retry_interval = '1m', protocol = { custom_lua = batch } }
end)
"""


def event_time(record: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(record["event_time"][:26] + "+00:00")


def test_send_batch_groups_messages_up_to_batch_size(kumoq):
    daemon = kumoq(policy(BATCHES))
    users = [f"u{i}" for i in range(7)]
    daemon.send("s@example.com", [f"{u}@hook.test" for u in users])
    deliveries = daemon.wait_for_records("Delivery", 7)
    received = {r["id"]: event_time(r) for r in daemon.records("Reception")}
    batches: dict[str, list[dict[str, Any]]] = {}
    for d in deliveries:
        assert d["response"]["code"] == 200
        assert d["site"] == "unspecified->hook.test@lua:make.batch"
        assert d["delivery_protocol"] == "Lua"
        batches.setdefault(d["response"]["content"], []).append(d)
    assert sorted(d["recipient"].split("@")[0] for d in deliveries) == users
    sizes = []
    for content, members in batches.items():
        size = int(content.split(" of ")[1].split(":")[0])
        assert size == len(members) <= 3, content
        assert sorted(content.split(": ")[1].split(",")) == sorted(
            m["recipient"].split("@")[0] for m in members
        )
        sizes.append(size)
        if size < 3:  # a partial batch waited max_batch_latency for its oldest message
            oldest = min(received[m["id"]] for m in members)
            assert (event_time(members[0]) - oldest).total_seconds() >= 1.0, content
    assert sum(sizes) == 7
    assert 3 in sizes
    assert len({d["session_id"] for d in deliveries}) == 1


def test_send_batch_reject_and_error_apply_to_the_whole_batch(kumoq):
    daemon = kumoq(policy(BATCHES))
    daemon.send(
        "s@example.com",
        [f"{u}@{d}" for d in ("temp.test", "perm.test", "boom.test") for u in ("a", "b")],
    )
    bounces = daemon.wait_for_records("Bounce", 2)
    assert {b["recipient"] for b in bounces} == {"a@perm.test", "b@perm.test"}
    assert {(b["response"]["code"], b["response"]["content"]) for b in bounces} == {
        (550, "batch of 2 refused")
    }
    failures = daemon.wait_for_records("TransientFailure", 4)
    by_domain: dict[str, list[dict[str, Any]]] = {}
    for f in failures:
        by_domain.setdefault(f["recipient"].split("@")[1], []).append(f["response"])
    assert [(r["code"], r["content"]) for r in by_domain["temp.test"]] == [
        (450, "batch of 2 deferred")
    ] * 2
    boom = by_domain["boom.test"]
    assert len(boom) == 2
    for r in boom:
        assert r["code"] == 400
        assert r["content"].startswith("KumoMTA internal: error in deliver_message: ")
        assert "batch of 2 exploded" in r["content"]


def test_messages_waiting_for_a_batch_stay_spooled_over_a_restart(kumoq):
    slow = BATCHES.replace("max_batch_latency = '1s'", "max_batch_latency = '1h'")
    daemon = kumoq(policy(slow))
    daemon.send("s@example.com", ["a@hook.test", "b@hook.test"])
    daemon.wait_for_records("Reception", 2)
    assert daemon.stop() == 0
    assert "Delivery" not in daemon.record_counts()
    assert not [line for line in daemon.stderr_lines if "Traceback" in line]
    daemon.policy_path.write_text(
        policy(BATCHES.replace("min_batch_size = 3", "min_batch_size = 2"))
    )
    daemon.start()
    deliveries = daemon.wait_for_records("Delivery", 2)
    assert {d["recipient"] for d in deliveries} == {"a@hook.test", "b@hook.test"}
    (content,) = {d["response"]["content"] for d in deliveries}  # one batch of both
    assert content in ("batch #1 of 2: a,b", "batch #1 of 2: b,a")


POOLED = """
kumo.on('make.pooled', function(domain, tenant, campaign)
  local conn = {}
  function conn:send(msg) return 'sent' end
  return conn
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    egress_pool = 'pool-1', protocol = { custom_lua = { constructor = 'make.pooled' } },
  }
end)
kumo.on('get_egress_pool', function(name)
  return kumo.make_egress_pool {
    name = name, entries = { { name = 'ip-a', weight = 1 }, { name = 'ip-b', weight = 3 } },
  }
end)
kumo.on('get_egress_source', function(name)
  return kumo.make_egress_source { name = name }
end)
"""


def test_custom_lua_delivery_goes_through_the_pools_sources(kumoq):
    daemon = kumoq(policy(POOLED))
    daemon.send("s@example.com", [f"r{i}@hook.test" for i in range(40)])
    deliveries = daemon.wait_for_records("Delivery", 40)
    by_source: dict[str, int] = {}
    for d in deliveries:
        by_source[d["egress_source"]] = by_source.get(d["egress_source"], 0) + 1
        assert d["egress_pool"] == "pool-1"
        assert d["site"] == f"{d['egress_source']}->hook.test@lua:make.pooled"
    assert by_source == {"ip-a": 10, "ip-b": 30}  # the weights, 1:3, over 40 messages


def rated_paths(rates: str) -> str:
    """POOLED with a ``get_egress_path_config`` that gives each source's path ``rates`` (a Lua
    table of source name to path keys) and insists on KumoMTA's arguments for a custom
    protocol: the site name is the routing domain."""
    return (
        POOLED
        + f"""
local RATES = {rates}
kumo.on('get_egress_path_config', function(routing_domain, source, site)
  if site ~= routing_domain then
    error('site ' .. site .. ' is not the routing domain ' .. routing_domain)
  end
  return kumo.make_egress_path(RATES[source] or {{}})
end)
"""
    )


def test_source_selection_rate_skips_an_exhausted_source_in_lua_delivery(kumoq):
    daemon = kumoq(policy(rated_paths("{ ['ip-a'] = { source_selection_rate = '1/h' } }")))
    daemon.send("s@example.com", [f"r{i}@hook.test" for i in range(12)])
    deliveries = daemon.wait_for_records("Delivery", 12)
    by_source: dict[str, int] = {}
    for d in deliveries:
        by_source[d["egress_source"]] = by_source.get(d["egress_source"], 0) + 1
        assert d["site"] == f"{d['egress_source']}->hook.test@lua:make.pooled"
    assert by_source == {"ip-a": 1, "ip-b": 11}  # ip-a's turns after its first go to ip-b
    assert daemon.records("TransientFailure") == []


def test_every_source_exhausted_in_lua_delivery_is_a_transient_failure(kumoq):
    shared = "{ additional_source_selection_rates = { ['lua-wide'] = '2/h' } }"
    daemon = kumoq(policy(rated_paths(f"{{ ['ip-a'] = {shared}, ['ip-b'] = {shared} }}")))
    daemon.send("s@example.com", [f"r{i}@hook.test" for i in range(5)])
    deliveries = daemon.wait_for_records("Delivery", 2)
    failures = daemon.wait_for_records("TransientFailure", 3)
    for failure in failures:
        assert failure["response"]["code"] == 451
        assert failure["response"]["content"] == (
            "KumoMTA internal: no sources for hook.test pool=`pool-1` "
            "are eligible for selection at this time"
        )
    assert len(daemon.records("Delivery")) == len(deliveries) == 2


def test_a_lua_paths_message_rate_delays_what_it_cannot_send_now(kumoq):
    daemon = kumoq(policy(rated_paths("{ ['ip-a'] = { max_message_rate = '1/h' } }")))
    daemon.send("s@example.com", [f"r{i}@hook.test" for i in range(8)])
    # The pool's weights (1:3) give ip-a two of the eight: its first goes, the second waits.
    deliveries = daemon.wait_for_records("Delivery", 7)
    (delayed,) = daemon.wait_for_records("Delayed", 1)
    by_source: dict[str, int] = {}
    for d in deliveries:
        by_source[d["egress_source"]] = by_source.get(d["egress_source"], 0) + 1
    assert by_source == {"ip-a": 1, "ip-b": 6}, by_source
    assert "MessageRateThrottle" in delayed["response"]["content"]
    assert delayed["num_attempts"] == 0  # not a failed attempt
    assert {d["recipient"] for d in deliveries} | {delayed["recipient"]} == {
        f"r{i}@hook.test" for i in range(8)
    }


PACED_BATCHES = """
kumo.on('make.paced', function(domain, tenant, campaign)
  local conn = {}
  function conn:send_batch(msgs) return 'batch of ' .. #msgs end
  return conn
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    retry_interval = '1m',
    protocol = { custom_lua = { constructor = 'make.paced', batch_size = 4,
                                min_batch_size = 4, max_batch_latency = '2s' } },
  }
end)
kumo.on('get_egress_path_config', function(routing_domain, source, site)
  return kumo.make_egress_path { max_message_rate = '4/h' }
end)
"""


def test_a_lua_paths_message_rate_counts_every_message_of_a_batch(kumoq):
    daemon = kumoq(policy(PACED_BATCHES))
    daemon.send("s@example.com", [f"r{i}@hook.test" for i in range(8)])
    deliveries = daemon.wait_for_records("Delivery", 4)
    delayed = daemon.wait_for_records("Delayed", 4)
    assert {d["response"]["content"] for d in deliveries} == {"batch of 4"}
    assert {r["recipient"] for r in deliveries} | {r["recipient"] for r in delayed} == {
        f"r{i}@hook.test" for i in range(8)
    }
    assert len(daemon.records("Delivery")) == 4  # the second batch waits for the rate


EXPIRING = """
kumo.on('make.slow', function(domain, tenant, campaign)
  local conn = {}
  function conn:send(msg) return 'sent' end
  return conn
end)
kumo.on('smtp_server_message_received', function(msg)
  msg:set_scheduling { expires = os.date('!%Y-%m-%dT%H:%M:%SZ', os.time() + 2) }
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    retry_interval = '1m', protocol = { custom_lua = { constructor = 'make.slow' } },
  }
end)
kumo.on('get_egress_path_config', function(routing_domain, source, site)
  -- one per 4 s: under the path's idle_timeout (5 s), so the second message waits inline
  return kumo.make_egress_path { max_message_rate = '15/min,max_burst=1' }
end)
"""


def test_a_message_whose_expiry_passes_while_the_rate_holds_it_is_not_sent(kumoq):
    daemon = kumoq(policy(EXPIRING))
    daemon.send("s@example.com", ["a@hook.test", "b@hook.test"])
    (delivery,) = daemon.wait_for_records("Delivery", 1)
    (expiration,) = daemon.wait_for_records("Expiration", 1, timeout=30)
    assert {delivery["recipient"], expiration["recipient"]} == {"a@hook.test", "b@hook.test"}
    assert "configured via set_scheduling" in expiration["response"]["content"]
    assert len(daemon.records("Delivery")) == 1
