"""End to end: retry schedules, expiry, queue rates, config refresh, reaping, priorities."""

from __future__ import annotations

import itertools
import time
from datetime import datetime

import pytest

from tests.e2e.policies import policy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Deliveries fail while ./blocker exists (the maildir would have to live under a file).
BLOCKABLE = """
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local f = io.open('./blocker', 'r')
  local path = './var/maildir'
  if f then f:close(); path = './blocker/maildir' end
  return kumo.make_queue_config {{
    retry_interval = '{retry}', max_age = '{max_age}', strategy = '{strategy}',
    refresh_interval = '1s', {extra}
    protocol = {{ maildir_path = path }},
  }}
end)
"""

PRIORITY_FROM_HEADER = """
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  local p = msg:get_first_named_header_value 'X-Priority'
  if p then msg:set_meta('priority', tonumber(p)) end
end)
"""


def blockable(
    retry: str = "2s", max_age: str = "1 hour", strategy: str = "SkipList", extra: str = ""
) -> str:
    return BLOCKABLE.format(retry=retry, max_age=max_age, strategy=strategy, extra=extra)


def event_time(record) -> float:
    text = record["event_time"].rstrip("Z")
    head, _, frac = text.partition(".")
    return datetime.fromisoformat(f"{head}.{frac[:6]}+00:00").timestamp()


@pytest.mark.parametrize("strategy", ["TimerWheel", "SkipList"])
def test_retry_schedule_doubles_within_one_and_a_half(kumoq, strategy):
    daemon = kumoq(policy(blockable(retry="2s", strategy=strategy)), start=False)
    (daemon.workdir / "blocker").write_text("deliveries fail while this exists")
    daemon.start()
    daemon.send("s@example.com", ["r@example.com"])
    failures = daemon.wait_for_records("TransientFailure", 4, timeout=40)
    times = [event_time(r) for r in failures[:4]]
    intervals = [b - a for a, b in itertools.pairwise(times)]
    for interval, expected in zip(intervals, [2, 4, 8], strict=True):
        assert expected <= interval <= 1.5 * expected, (strategy, intervals)
    assert [r["num_attempts"] for r in failures[:4]] == [0, 1, 2, 3]


def test_expiry_by_max_age(kumoq):
    daemon = kumoq(policy(blockable(retry="1s", max_age="3s")), start=False)
    (daemon.workdir / "blocker").write_text("x")
    daemon.start()
    daemon.send("s@example.com", ["r@example.com"])
    (expiration,) = daemon.wait_for_records("Expiration", 1, timeout=20)
    assert expiration["response"]["code"] == 551
    assert expiration["response"]["enhanced_code"] == {"class": 5, "subject": 4, "detail": 7}
    assert "exceeds max_age=3s" in expiration["response"]["content"]
    daemon.stop()
    daemon.start()  # the expired message is gone from the spool
    assert any("0 messages re-queued" in line for line in daemon.stderr_lines[-10:])


def test_expiry_by_set_scheduling_expires(kumoq):
    expires = """
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  msg:set_scheduling { expires = os.date('!%Y-%m-%dT%H:%M:%SZ', os.time() + 3) }
end)
"""
    daemon = kumoq(policy(expires, blockable(retry="1s")), start=False)
    (daemon.workdir / "blocker").write_text("x")
    daemon.start()
    daemon.send("s@example.com", ["r@example.com"])
    (expiration,) = daemon.wait_for_records("Expiration", 1, timeout=20)
    assert expiration["response"]["code"] == 551
    assert "configured via set_scheduling" in expiration["response"]["content"]


@pytest.mark.parametrize("strategy", ["SkipList", "SingletonTimerWheel"])
def test_queue_message_rate_holds_10_per_second(kumoq, strategy):
    daemon = kumoq(policy(blockable(strategy=strategy, extra="max_message_rate = '10/s',")))
    recipients = [f"r{i}@example.com" for i in range(60)]
    daemon.send("s@example.com", recipients)
    deliveries = daemon.wait_for_records("Delivery", 60, timeout=30)
    times = sorted(event_time(r) for r in deliveries)
    t0 = times[0]
    for k in range(1, 6):
        admitted = sum(1 for t in times if t < t0 + k)
        assert admitted <= 10 + 10 * k + 1, (k, admitted)
    assert 4.0 <= times[-1] - t0 <= 9.0
    delayed = daemon.records("Delayed")
    assert delayed
    assert all("MessageRateThrottle" in r["response"]["content"] for r in delayed)
    # 50 held back (after the burst of 10), each held once, not again and again (150 before
    # the pacing line); some slack for a loaded machine, where a late release can lose its turn.
    assert len(delayed) <= 1.5 * 50, len(delayed)
    # A throttled message is not a failed attempt.
    assert all(r["num_attempts"] == 0 for r in deliveries)


def test_config_refresh_picks_up_a_changed_answer(kumoq):
    routed = """
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local f = io.open('./route', 'r')
  local route = f:read('l'); f:close()
  return kumo.make_queue_config {
    refresh_interval = '1s', protocol = { maildir_path = './var/maildir/' .. route },
  }
end)
"""
    daemon = kumoq(policy(routed), start=False)
    (daemon.workdir / "route").write_text("first\n")
    daemon.start()
    daemon.send("s@example.com", ["r@example.com"])
    daemon.wait_for(lambda: daemon.maildir_files("var/maildir/first"), what="first route")
    (daemon.workdir / "route").write_text("second\n")
    time.sleep(1.5)
    daemon.send("s@example.com", ["r@example.com"])
    daemon.wait_for(lambda: daemon.maildir_files("var/maildir/second"), what="second route")


def test_idle_queue_is_reaped_and_resolved_again(kumoq):
    counted = """
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  kumo.log_info('get_queue_config called for ' .. domain)
  return kumo.make_queue_config {
    reap_interval = '1s', protocol = { maildir_path = './var/maildir' },
  }
end)
"""
    daemon = kumoq(policy(counted))
    daemon.send("s@example.com", ["r@reap.test"])
    daemon.wait_for_maildir_count(1)
    daemon.wait_for(
        lambda: any("reaped idle queue reap.test" in line for line in daemon.stderr_lines),
        what="the reap",
    )
    daemon.send("s@example.com", ["r@reap.test"])
    daemon.wait_for_maildir_count(2)
    calls = [
        line for line in daemon.stderr_lines if "get_queue_config called for reap.test" in line
    ]
    assert len(calls) == 2


def test_lua_error_in_get_queue_config_loses_nothing(kumoq):
    flaky = """
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local f = io.open('./broken', 'r')
  if f then f:close(); error('get_queue_config is broken today') end
  local b = io.open('./blocker', 'r')
  local path = './var/maildir'
  if b then b:close(); path = './blocker/maildir' end
  return kumo.make_queue_config {
    retry_interval = '1s', refresh_interval = '1s', protocol = { maildir_path = path },
  }
end)
"""
    daemon = kumoq(policy(flaky), start=False)
    (daemon.workdir / "blocker").write_text("x")
    daemon.start()
    daemon.send("s@example.com", ["r@example.com"])
    daemon.wait_for_records("TransientFailure", 1)
    (daemon.workdir / "broken").write_text("x")
    daemon.wait_for(
        lambda: any("get_queue_config is broken today" in line for line in daemon.stderr_lines),
        timeout=15,
        what="the policy error in the diagnostics",
    )
    daemon.stop()
    # Restart while the policy is still broken: the message is enumerated, cannot be resolved,
    # and stays in the spool.
    daemon.start()
    daemon.wait_for(
        lambda: any("cannot resolve its queue" in line for line in daemon.stderr_lines),
        what="the enumeration error",
    )
    daemon.stop()
    (daemon.workdir / "broken").unlink()
    (daemon.workdir / "blocker").unlink()
    daemon.start()
    daemon.wait_for_maildir_count(1, timeout=20)


def test_higher_priority_overtakes_bulk_sharing_a_throttle(kumoq):
    daemon = kumoq(policy(PRIORITY_FROM_HEADER, blockable(extra="max_message_rate = '5/s',")))
    daemon.send(
        "bulk@example.com",
        [f"b{i}@example.com" for i in range(40)],
        headers={"X-Priority": "0"},
    )
    daemon.send("reset@example.com", ["urgent@example.com"], headers={"X-Priority": "3"})
    deliveries = daemon.wait_for_records("Delivery", 41, timeout=30)
    order = [r["recipient"] for r in sorted(deliveries, key=event_time)]
    assert order.index("urgent@example.com") < 15, order


def test_first_attempt_holds_the_message_until_then(kumoq):
    later = """
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  msg:set_scheduling { first_attempt = os.date('!%Y-%m-%dT%H:%M:%SZ', os.time() + 3) }
end)
"""
    daemon = kumoq(policy(later, blockable()))
    sent = time.time()
    daemon.send("s@example.com", ["r@example.com"])
    (delayed,) = daemon.wait_for_records("Delayed", 1)
    assert "Context: Received, ScheduledForLater" in delayed["response"]["content"]
    (delivery,) = daemon.wait_for_records("Delivery", 1, timeout=15)
    # os.time() has whole seconds: the first attempt is 2 to 3 s after the send.
    assert event_time(delivery) >= sent + 2
