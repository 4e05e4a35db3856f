"""The what-if simulator against small scenarios whose outcome is known in advance.

Each test runs kumoq's real queue manager, SMTP egress and SMTP client on virtual time
(kumoq.simulate.engine) against simulated destinations, so hours of virtual time take a
second or two, and checks the forecast against arithmetic: a retry schedule, a connection
limit over a latency, a message rate.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from kumoq.errors import PolicyError
from kumoq.simulate.engine import simulate
from kumoq.simulate.scenario import Scenario

POLICY = """
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = './var/spool/data' }}
  kumo.define_spool {{ name = 'meta', path = './var/spool/meta' }}
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{ {queue} protocol = {protocol} }}
end)
kumo.on('get_egress_path_config', function(routing_domain, source, site_name)
  return kumo.make_egress_path {{ {path} }}
end)
{more}
"""


def forecast(
    tmp_path: Path,
    scenario: str,
    *,
    queue: str = "",
    path: str = "",
    more: str = "",
    protocol: str = "{ smtp = {} }",
) -> dict[str, Any]:
    policy = tmp_path / "policy.lua"
    policy.write_text(POLICY.format(queue=queue, path=path, more=more, protocol=protocol))
    return simulate(Scenario.from_mapping(tomllib.loads(scenario)), policy)


def by_bucket(result: dict[str, Any], key: str) -> list[int]:
    return [bucket[key] for bucket in result["buckets"]]


def test_a_domain_that_tempfails_everything_expires_every_message_at_max_age(tmp_path):
    # retry_interval 20 min doubles: attempts at 0, 20m, 1h, 2h20m and 5h; the next would be
    # 5h20m later, past max_age = 6h, so the fifth failure expires the message (at about 5h).
    result = forecast(tmp_path, """
        duration = "1 day"
        [[campaign]]
        messages = 200
        domains = { "down.example" = 1 }
        [domain."down.example"]
        tempfail = 1.0
        latency = "1s"
    """, queue="retry_interval = '20 minutes', max_age = '6 hours',")  # fmt: skip
    totals = result["totals"]
    assert totals["expired"] == 200
    assert totals["delivered"] == totals["bounced"] == totals["pending"] == 0
    assert totals["attempts"] == totals["transient_failures"] == 5 * 200
    # The attempts follow the schedule, each retry within its jitter (1/20 of retry_interval,
    # here +-30 s): 0, 20m and 1h (some just before the hour), 2h20m, then 5h (give or take).
    attempts = by_bucket(result, "attempts")
    assert sum(attempts[:2]) == 600
    assert attempts[2:4] == [200, 0]
    assert sum(attempts[4:6]) == 200
    expired = by_bucket(result, "expired")
    assert sum(expired[4:6]) == sum(expired) == 200
    assert abs(result["backlog_cleared_at"] - 5 * 3600) < 4 * 30 + 60
    assert result["destinations"]["down.example"]["tempfailed"] == 1000
    # The run ends once every message is final, not at the end of the day.
    assert result["run"]["virtual_seconds"] < 6 * 3600 + 1


def test_a_connection_limit_over_a_latency_bounds_the_throughput(tmp_path):
    # Two sessions that each take 0.5 s per message: 4 messages a second, 1000 in 250 s.
    result = forecast(tmp_path, """
        duration = "1 hour"
        bucket = "1 minute"
        [[campaign]]
        messages = 1000
        domains = { "slow.example" = 1 }
        [domain."slow.example"]
        latency = "500ms"
        max_connections = 2
    """, path="connection_limit = 2")  # fmt: skip
    assert result["totals"]["delivered"] == 1000
    assert result["backlog_cleared_at"] == pytest.approx(250, rel=0.05)
    assert by_bucket(result, "delivered")[1:4] == [pytest.approx(240, abs=3)] * 3
    seen = result["destinations"]["slow.example"]
    assert seen["peak_sessions"] == 2
    assert seen["refused_busy"] == 0
    assert result["ready_queues"] == {"unspecified->mx.slow.example@smtp_client": 1000}


def test_more_connections_than_the_destination_takes_get_421_and_are_retried(tmp_path):
    result = forecast(tmp_path, """
        duration = "1 day"
        [[campaign]]
        messages = 300
        domains = { "strict.example" = 1 }
        [domain."strict.example"]
        latency = "1s"
        max_connections = 2
    """, path="connection_limit = 10", queue="retry_interval = '5 minutes',")  # fmt: skip
    seen = result["destinations"]["strict.example"]
    assert seen["refused_busy"] > 0
    assert seen["peak_sessions"] == 2
    assert result["totals"]["delivered"] == 300
    assert result["totals"]["transient_failures"] >= seen["refused_busy"]
    assert any("421 4.7.0 too many connections" in text or "unexpected banner" in text
               for text in result["transient_responses"])  # fmt: skip


def test_a_queue_message_rate_paces_the_deliveries(tmp_path):
    result = forecast(tmp_path, """
        duration = "8 hours"
        [[campaign]]
        messages = 500
        domains = { "paced.example" = 1 }
    """, queue="max_message_rate = '100/h',")  # fmt: skip
    delivered = by_bucket(result, "delivered")
    # The throttle's burst goes at once; after it, 100 an hour.
    assert delivered[1:4] == [pytest.approx(100, abs=2)] * 3
    assert sum(delivered) == 500
    assert result["totals"]["delayed"] > 0
    assert "MessageRateThrottle" in " ".join(result["delayed_reasons"])


def test_shares_of_tempfail_and_permfail_and_a_421_window(tmp_path):
    result = forecast(tmp_path, """
        duration = "1 day"
        bucket = "10 minutes"
        seed = 11
        [[campaign]]
        messages = 2000
        rate = "4000/h"
        domains = { "mixed.example" = 1 }
        [domain."mixed.example"]
        latency = "100ms"
        tempfail = 0.1
        permfail = 0.05
        [[domain."mixed.example".window]]
        from = "10m"
        until = "20m"
        refuse = "421 4.7.0 blocked for a while"
    """, queue="retry_interval = '10 minutes',")  # fmt: skip
    totals = result["totals"]
    assert totals["delivered"] + totals["bounced"] == 2000
    assert totals["bounced"] == pytest.approx(100, rel=0.3)
    seen = result["destinations"]["mixed.example"]
    assert seen["refused_window"] > 0
    assert seen["permfailed"] == totals["bounced"]
    # From 10m to 20m every session is refused: only transactions already under way end.
    delivered = by_bucket(result, "delivered")
    assert delivered[0] > 500
    assert delivered[1] < 5
    assert delivered[2] > 500
    assert totals["transient_failures"] > seen["tempfailed"]  # the 421s are counted too


def test_max_messages_per_connection_makes_new_sessions_without_failures(tmp_path):
    result = forecast(tmp_path, """
        duration = "1 hour"
        [[campaign]]
        messages = 400
        domains = { "short.example" = 1 }
        [domain."short.example"]
        latency = "50ms"
        max_messages_per_connection = 10
    """, path="connection_limit = 1")  # fmt: skip
    seen = result["destinations"]["short.example"]
    assert result["totals"]["delivered"] == 400
    assert result["totals"]["transient_failures"] == 0
    assert seen["hung_up_after_limit"] == 40
    assert seen["sessions"] == 40


def test_sources_tenants_and_the_reception_event_come_from_the_policy(tmp_path):
    more = """
    kumo.on('smtp_server_message_received', function(msg, conn_meta)
      if msg:get_first_named_header_value 'X-Drop' then
        kumo.reject(550, 'not this one')
      end
      msg:set_meta('routing_domain', 'relay.example')
    end)
    kumo.on('get_egress_pool', function(name)
      return kumo.make_egress_pool { name = name,
        entries = { { name = 'ip-1', weight = 3 }, { name = 'ip-2', weight = 1 } } }
    end)
    kumo.on('get_egress_source', function(name)
      return kumo.make_egress_source { name = name }
    end)
    """
    result = forecast(tmp_path, """
        duration = "1 hour"
        [[campaign]]
        name = "spring"
        tenant = "acme"
        messages = 400
        domains = { "a.example" = 1, "b.example" = 1 }
        [[campaign]]
        messages = 10
        domains = { "a.example" = 1 }
        headers = { "X-Drop" = "yes" }
        [domain."relay.example"]
        latency = "10ms"
    """, queue="egress_pool = 'pool',", more=more)  # fmt: skip
    totals = result["totals"]
    assert totals["injected"] == 410
    assert totals["rejected"] == 10
    assert "550 not this one" in " ".join(result["rejections"])
    assert totals["delivered"] == 400
    # Weighted round robin per scheduled queue: 3 to 1 (a retried message may pick again).
    sources = {name: sum(series) for name, series in result["delivered_by_source"].items()}
    assert sources == {"ip-1": pytest.approx(300, abs=3), "ip-2": pytest.approx(100, abs=3)}
    # routing_domain sent everything to relay.example's MX; the domains are the recipients'.
    assert set(result["delivered_by_domain"]) == {"a.example", "b.example"}
    assert result["destinations"]["relay.example"]["accepted"] == 400
    assert set(result["ready_queues"]) == {
        "ip-1->mx.relay.example@smtp_client", "ip-2->mx.relay.example@smtp_client",
    }  # fmt: skip


def test_an_unreachable_destination_and_the_end_of_the_duration(tmp_path):
    result = forecast(tmp_path, """
        duration = "2 hours"
        [[campaign]]
        messages = 50
        domains = { "gone.example" = 1 }
        [domain."gone.example"]
        unreachable = true
    """, queue="retry_interval = '10 minutes',")  # fmt: skip
    totals = result["totals"]
    assert totals["pending"] == 50  # still queued when the two hours were over
    assert result["backlog_cleared_at"] is None
    assert result["run"]["virtual_seconds"] == pytest.approx(7200)
    assert result["destinations"]["gone.example"]["unreachable"] > 0
    assert result["depth"][-1]["pending"] == 50


def test_maildir_queues_count_as_delivered_and_write_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = forecast(tmp_path, """
        duration = "1 hour"
        [[campaign]]
        messages = 20
        domains = { "local.example" = 1 }
    """, protocol="{ maildir_path = './var/maildir' }")  # fmt: skip
    assert result["totals"]["delivered"] == 20
    assert result["delivered_by_source"] == {"(maildir)": [20]}
    assert not (tmp_path / "var").exists()


def test_the_same_seed_gives_the_same_forecast(tmp_path):
    scenario = """
        duration = "1 day"
        seed = 5
        [[campaign]]
        messages = 300
        rate = "1000/h"
        domains = { "a.example" = 2, "b.example" = 1 }
        [defaults]
        tempfail = 0.2
        permfail = 0.05
    """
    first = forecast(tmp_path, scenario, queue="retry_interval = '5 minutes',")
    second = forecast(tmp_path, scenario, queue="retry_interval = '5 minutes',")
    for result in (first, second):
        result.pop("run")
    assert first == second


def test_a_policy_that_does_not_load_raises(tmp_path):
    policy = tmp_path / "broken.lua"
    policy.write_text("local kumo = require 'kumo'\nkumo.on('init', function() error('no') end)")
    scenario = Scenario.from_mapping(tomllib.loads(
        'duration = "1h"\n[[campaign]]\nmessages = 1\ndomains = { "a.example" = 1 }'
    ))  # fmt: skip
    with pytest.raises(PolicyError, match="no"):
        simulate(scenario, policy)


def test_custom_lua_delivery_is_not_simulated_and_the_forecast_says_so(tmp_path):
    result = forecast(tmp_path, """
        duration = "10 minutes"
        [[campaign]]
        messages = 5
        domains = { "lua.example" = 1 }
    """, protocol="{ custom_lua = { constructor = 'make.webhook' } }")  # fmt: skip
    assert result["totals"]["delivered"] == 0
    assert result["totals"]["transient_failures"] > 0
    assert result["warnings"] == [
        "custom Lua delivery is not simulated: its messages failed transiently"
    ]
