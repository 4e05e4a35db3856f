"""``kumoq simulate``'s forecast against a real harness run of the same scenario (issue 13):
delivered, expired and deferred counts agree within 10%.

The scenario, scaled down to seconds: 200 messages, half to ``short.test`` (``max_age`` 12 s,
retries after 2, 4, 8 s) and half to ``long.test`` (retries every 12 s for two minutes). The
destination tempfails 5% of the messages at random, and refuses every new session with a 421
for the first 18 s. So every ``short.test`` message is refused at 0, 2 and 6 s and expires
inside the window (its next retry would be at 14 s, past its 12 s), and every ``long.test``
message is refused twice (at 0 and 12 s) and delivered after the window (24 s), or 12 s later
when its random tempfail hits. The margins are 6 s either way: an attempt may start up to 6 s
late on a busy machine (a ``short.test`` message still gets its third attempt, a
``long.test`` one still lands after the window), and no attempt moves across the window's
end. (With retries after 1, 2, 4 s and ``max_age`` 6 s the margin was 3 s, and a loaded CI
run gave every ``short.test`` message one deferral fewer than the forecast.)

The simulation runs the scenario on virtual time; the harness runs the same policy in a real
daemon against the smart sink with the same behaviour: ``tempfail_percent=5`` and a
``refuse_window`` of 18 s counted from its first session (the simulated window is counted from
the simulation's start, when the first message arrives). The sink's random draws come from the
seed the simulated destinations use, one draw per message that reaches it on both sides, so
both see the same sequence of random failures.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kumoq.simulate.engine import simulate
from kumoq.simulate.scenario import Scenario
from kumoq.testing.harness_run import HarnessResult

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POLICY = """
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.start_esmtp_listener {
    listen = os.getenv('KUMOQ_SMTP_LISTEN') or '127.0.0.1:2025',
    relay_hosts = { '127.0.0.1' },
  }
  kumo.define_spool { name = 'data', path = './var/spool/data' }
  kumo.define_spool { name = 'meta', path = './var/spool/meta' }
  kumo.configure_local_logs { log_dir = './var/log' }
end)
local QUEUES = {
  ['short.test'] = { retry_interval = '2s', max_retry_interval = '8s', max_age = '12s' },
  ['long.test'] = { retry_interval = '12s', max_retry_interval = '12s', max_age = '2 min' },
}
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local q = QUEUES[domain]
  return kumo.make_queue_config {
    retry_interval = q.retry_interval,
    max_retry_interval = q.max_retry_interval,
    max_age = q.max_age,
    protocol = { smtp = {} },
  }
end)
"""

MESSAGES = 200
TEMPFAIL_PERCENT = 5
WINDOW_SECONDS = 18.0
SINK_SEED = 1313
"""The sink's seed; the simulated destinations draw from ``scenario.seed + 1``."""


def scenario() -> Scenario:
    behaviour = {"latency": "10ms", "command_latency": "1ms", "tempfail": TEMPFAIL_PERCENT / 100}
    window = {"from": 0, "until": WINDOW_SECONDS, "refuse": "421 4.7.0 deferred for a while"}
    return Scenario.from_mapping(
        {
            "duration": "10 min",
            "bucket": "10s",
            "seed": SINK_SEED - 1,
            "campaign": [  # the harness's traffic alternates the two domains: half each
                {"messages": MESSAGES // 2, "domains": {"short.test": 1}},
                {"messages": MESSAGES // 2, "domains": {"long.test": 1}},
            ],
            "defaults": behaviour,
            "domain": {name: {"window": [window]} for name in ("short.test", "long.test")},
        }
    )


def counts_of(totals: dict[str, int]) -> dict[str, int]:
    return {
        "delivered": totals["delivered"],
        "expired": totals["expired"],
        "deferred": totals["transient_failures"],
        "bounced": totals["bounced"],
    }


def within(forecast: int, measured: int, share: float = 0.10) -> bool:
    return abs(forecast - measured) <= share * max(forecast, measured)


@pytest.mark.timeout(400)
def test_the_forecast_matches_a_harness_run_of_the_same_scenario(
    harness: Callable[..., HarnessResult], tmp_path: Path
) -> None:
    policy = tmp_path / "policy.lua"
    policy.write_text(POLICY)

    forecast: dict[str, Any] = simulate(scenario(), policy)
    predicted = counts_of(forecast["totals"])
    assert forecast["totals"]["pending"] == 0, forecast["totals"]
    # The scenario does what it is meant to: short.test expires in the window, long.test is
    # delivered after it, and both were deferred on the way.
    assert predicted["expired"] == MESSAGES // 2, predicted
    assert predicted["delivered"] == MESSAGES // 2, predicted
    assert predicted["deferred"] >= MESSAGES * 2, predicted

    result = harness(
        policy, messages=MESSAGES, domains=["short.test:1", "long.test:1"], timeout=180,
        tempfail_percent=TEMPFAIL_PERCENT, seed=SINK_SEED,
        sink_refuse_window=(0.0, WINDOW_SECONDS),
    )  # fmt: skip
    counts = result.stats.counts
    measured = {
        "delivered": counts.get("Delivery", 0),
        "expired": counts.get("Expiration", 0),
        "deferred": counts.get("TransientFailure", 0),
        "bounced": counts.get("Bounce", 0),
    }
    assert result.sink["refused_sessions"] > 0, result.sink
    report = f"forecast {predicted}, harness {measured}"
    for key in ("delivered", "expired", "deferred"):
        assert within(predicted[key], measured[key]), f"{key}: {report}"
    assert predicted["bounced"] == measured["bounced"] == 0, report
