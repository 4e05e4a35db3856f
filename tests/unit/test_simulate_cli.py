"""``kumoq simulate``: the command, its report, and the shipped example scenario.

The example (examples/what-if.toml, with examples/throttled-relay.lua) is run scaled down
here; ``test_the_example_at_full_size`` (marked bench) runs all 100,000 messages.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kumoq.cli import main
from kumoq.simulate.engine import simulate
from kumoq.simulate.report import format_text, render_html, span
from kumoq.simulate.scenario import Scenario, load_scenario

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "what-if.toml"
BENCH = ROOT / "bench" / "simulate-100k.toml"
"""The speed case of issue 13 (``make bench-simulate``): 5% tempfail everywhere, a 421 window."""
SCENARIOS = [*sorted((ROOT / "examples").glob("*.toml")), BENCH]

POLICY = """
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = './var/spool/data' }
  kumo.define_spool { name = 'meta', path = './var/spool/meta' }
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config { retry_interval = '10 minutes', protocol = { smtp = {} } }
end)
"""

SCENARIO = """
duration = "6 hours"
{policy}
[[campaign]]
messages = 300
rate = "600/h"
domains = {{ "a.example" = 2, "b.example" = 1 }}
[domain."b.example"]
tempfail = 0.3
"""


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """The command sets up diagnostics on the root logger, as ``kumoq`` does; the tests that
    follow get it back as it was."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def files(tmp_path: Path, policy_line: str = 'policy = "policy.lua"') -> Path:
    (tmp_path / "policy.lua").write_text(POLICY)
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO.format(policy=policy_line))
    return scenario


def test_simulate_prints_the_forecast(tmp_path, capsys):
    scenario = files(tmp_path)
    assert main(["simulate", "--scenario", str(scenario)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"kumoq simulate: policy {tmp_path / 'policy.lua'}\n")
    assert "300 messages over 6h of virtual time" in out
    assert "delivered 300, bounced 0, expired 0, still queued 0" in out
    assert "backlog cleared after " in out  # the last retries of b.example's tempfails
    for title in ("per 1h of virtual time", "deliveries per 1h, by domain",
                  "deliveries per 1h, by egress source", "what each destination saw",
                  "transient failures, most frequent responses"):  # fmt: skip
        assert f"\n{title}\n" in out


def test_simulate_json_and_report(tmp_path, capsys):
    scenario = files(tmp_path, policy_line="")
    page = tmp_path / "out.html"
    argv = ["simulate", "--policy", str(tmp_path / "policy.lua"), "--scenario", str(scenario),
            "--json", "--report", str(page)]  # fmt: skip
    assert main(argv) == 0
    forecast = json.loads(capsys.readouterr().out)
    assert set(forecast) == {
        "policy", "scenario", "run", "totals", "backlog_cleared_at", "bucket_seconds", "buckets",
        "delivered_by_domain", "delivered_by_source", "transient_failures_by_domain",
        "by_domain", "rejections", "delayed_reasons", "transient_responses", "ready_queues",
        "time_to_deliver", "depth", "destinations", "warnings",
    }  # fmt: skip
    assert forecast["totals"]["delivered"] == 300
    assert len(forecast["buckets"]) == 6
    assert sum(forecast["delivered_by_domain"]["b.example"]) == pytest.approx(100, abs=30)
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>")
    for plot in ("by-domain", "by-source", "retry-load", "depth"):
        assert f'<svg class="plot" id="{plot}"' in text
    assert "<h2>What each destination saw</h2>" in text
    assert "<script" not in text
    assert "http://" not in text.replace("http://www.w3.org", "")


def test_usage_and_policy_errors(tmp_path, capsys):
    scenario = files(tmp_path, policy_line="")
    assert main(["simulate", "--scenario", str(scenario)]) == 2
    assert "no policy: give --policy" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('duration = "1h"\n')
    assert main(["simulate", "--scenario", str(bad), "--policy", "p.lua"]) == 2
    assert "at least one [[campaign]] are required" in capsys.readouterr().err
    broken = tmp_path / "broken.lua"
    broken.write_text("this is not lua")
    assert main(["simulate", "--scenario", str(scenario), "--policy", str(broken)]) == 1
    assert "kumoq simulate:" in capsys.readouterr().err


def test_span():
    assert [span(s) for s in (None, 0.25, 42, 59.9, 60, 3725, 90061, 259200)] == [
        "-", "0.25s", "42s", "60s", "1m", "1h 2m", "1d 1h", "3d",
    ]  # fmt: skip


def scaled(scenario: Scenario, factor: int) -> Scenario:
    campaigns = tuple(
        dataclasses.replace(c, messages=c.messages // factor,
                            rate=None if c.rate is None else c.rate / factor)
        for c in scenario.campaigns
    )  # fmt: skip
    return dataclasses.replace(scenario, campaigns=campaigns)


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_every_example_scenario_loads_and_names_a_policy_that_exists(path: Path):
    scenario = load_scenario(path)
    assert scenario.policy is not None
    assert scenario.policy.is_file()


def test_the_example_scenario_runs_scaled_down():
    scenario = load_scenario(EXAMPLE)
    assert scenario.policy is not None
    assert scenario.policy == ROOT / "examples" / "throttled-relay.lua"
    assert scenario.messages == 100_000
    result = simulate(scaled(scenario, 50), scenario.policy)
    totals = result["totals"]
    assert totals["injected"] == 2000
    assert totals["delivered"] + totals["bounced"] + totals["expired"] == 2000
    assert totals["pending"] == 0
    # The policy's pool: ip-1 and ip-2 weighted 3 to 1.
    sources = {name: sum(series) for name, series in result["delivered_by_source"].items()}
    assert sources["ip-1"] == pytest.approx(3 * sources["ip-2"], rel=0.15)
    # Yahoo's 421 window from 1h to 3h refused sessions and made retries.
    assert result["destinations"]["yahoo.com"]["refused_window"] > 0
    assert sum(result["transient_failures_by_domain"]["yahoo.com"][1:3]) > 0
    # The MX hosts of the scenario make the site names a policy may match.
    assert "ip-1->(mta5|mta6|mta7).am0.yahoodns.net@smtp_client" in result["ready_queues"]
    # Every table and plot renders.
    assert "deliveries per 1h, by domain" in format_text(result)
    assert 'id="depth"' in render_html(result)


@pytest.mark.bench
@pytest.mark.parametrize("path", [EXAMPLE, BENCH], ids=lambda p: p.name)
def test_the_example_at_full_size(path: Path):
    """100,000 messages over up to 3 virtual days (make bench); see docs/benchmarks.md,
    "Simulator", for the time it takes."""
    scenario = load_scenario(path)
    assert scenario.policy is not None
    cpu = time.process_time()
    result = simulate(scenario, scenario.policy)
    cpu = time.process_time() - cpu
    print(f"\n{scenario.messages} messages, {result['totals']['attempts']} attempts, "
          f"{span(result['run']['virtual_seconds'])} virtual in {result['run']['real_seconds']} s "
          f"({cpu:.1f} s CPU)")  # fmt: skip
    assert result["totals"]["pending"] == 0
    assert cpu < 120
