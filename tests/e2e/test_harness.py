"""``kumoq harness`` runs real policies, unmodified, against the smart sink (issue 13): every
example and the shipped policy with 500 messages; a relay policy with production paths, ports,
sources and throttles; ``--expect``, ``--json``, the timeout and the exit statuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kumoq.testing.harness_stats import EXPECT_TRAFFIC

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).parents[2]
POLICIES = [*sorted((ROOT / "examples").glob("*.lua")), ROOT / "policy" / "init.lua"]
#: Extra arguments for an example whose counts differ from "500 delivered" with the defaults.
EXAMPLE_ARGS: dict[str, list[str]] = {}


def harness_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kumoq", "harness", "--quiet", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_and_the_shipped_policy_deliver_500(policy):
    extra = EXAMPLE_ARGS.get(policy.name, ["--expect", "delivered=500"])
    run = harness_cli("--policy", str(policy), "--messages", "500", "--json",
                      "--expect", "received=500", "--expect", "bounced=0",
                      "--expect", "unfinished=0", *extra)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["timed_out"] is False
    assert report["stats"]["finished"] + report["stats"]["discarded"] == 500
    assert report["traffic"]["accepted"] == 500
    assert report["daemon_errors"] == []


RELAY = """
-- A production-looking relay: fixed ports, absolute paths, a source with its own IP and port,
-- an mx_list with an address, a queue throttle; nothing here knows about the harness.
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.start_esmtp_listener { listen = '0.0.0.0:25', relay_hosts = { '127.0.0.1' } }
  kumo.define_spool { name = 'data', path = '/var/spool/kumoq-harness-test/data' }
  kumo.define_spool { name = 'meta', path = '/var/spool/kumoq-harness-test/meta' }
  kumo.configure_local_logs { log_dir = '/var/log/kumoq-harness-test' }
end)
kumo.on('get_egress_source', function(name)
  return kumo.make_egress_source {
    name = name, source_address = '10.255.0.1', remote_port = 2525, ehlo_domain = 'mta.test',
  }
end)
kumo.on('get_egress_pool', function(name)
  return kumo.make_egress_pool { name = name, entries = { { name = 'ip-1' } } }
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local smtp = {}
  if domain == 'corp.example' then smtp.mx_list = { '[10.9.9.9]:2525' } end
  return kumo.make_queue_config {
    egress_pool = 'pool-a',
    retry_interval = '1 hour',
    max_message_rate = domain == 'yahoo.com' and '10/s' or nil,
    protocol = { smtp = smtp },
  }
end)
kumo.on('get_egress_path_config', function(routing_domain, source, site)
  return kumo.make_egress_path { connection_limit = 3 }
end)
"""

GMAIL = "ip-1->(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com@smtp_client"
YAHOO = "ip-1->(mta5|mta6|mta7).am0.yahoodns.net@smtp_client"
CORP = "ip-1->mx_list:[10.9.9.9]:2525@smtp_client"


def test_a_relay_policy_runs_as_in_production_but_delivers_to_the_sink(harness, tmp_path):
    result = harness(
        RELAY, messages=200, domains=["gmail.com:3", "yahoo.com:1", "corp.example:1"],
        expect=["delivered=200", "bounced=0"], timeout=60,
    )  # fmt: skip
    stats = result.stats
    # The real site names, the policy's pool and source, its mx_list, one ready queue each.
    assert stats.by_ready_queue == {
        GMAIL: {"Delivery": 120}, YAHOO: {"Delivery": 40}, CORP: {"Delivery": 40},
    }  # fmt: skip
    assert result.sink["accepted"] == 200
    assert result.sink["peak_concurrency"] <= 9  # connection_limit 3 per ready queue
    # yahoo.com's max_message_rate held messages back, and the report says so.
    (row,) = [d for d in stats.delays if d.where == "yahoo.com"]
    assert row.reason == "MessageRateThrottle"
    assert row.messages > 0
    assert result.delayed_metrics["delayed_due_to_message_rate_throttle"]["yahoo.com"] > 0
    # Absolute paths were kept inside the run's directory; every delivery went to the sink,
    # over STARTTLS (Opportunistic by default) against its self-signed certificate.
    workdir = tmp_path / "harness1"
    assert (workdir / "_harness/root/var/spool/kumoq-harness-test/meta").is_dir()
    assert any((workdir / "_harness/root/var/log/kumoq-harness-test").iterdir())
    assert not Path("/var/spool/kumoq-harness-test").exists()
    deliveries = [
        json.loads(line)
        for segment in (workdir / "_harness/log").iterdir()
        for line in segment.read_text().splitlines()
        if '"Delivery"' in line
    ]
    assert len(deliveries) == 200
    assert {r["peer_address"]["addr"] for r in deliveries} == {"127.0.0.1"}
    assert {r["tls_protocol_version"] for r in deliveries} <= {"TLSv1.2", "TLSv1.3"}


def test_a_failed_expectation_exits_1_and_says_which():
    run = harness_cli("--policy", "examples/minimal.lua", "--messages", "20",
                      "--expect", "delivered=20", "--expect", "delivered=19",
                      "--expect", "bounced>=1")  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "expectation delivered=19 failed: got 20" in run.stderr
    assert "expectation bounced>=1 failed: got 0" in run.stderr
    assert "delivered=20 failed" not in run.stderr
    assert "FAIL delivered=19 (got 20)" in run.stdout


def test_the_json_report_shape(tmp_path):
    page = tmp_path / "out.html"
    run = harness_cli("--policy", "policy/init.lua", "--messages", "30", "--json",
                      "--domain", "gmail.com:2", "--domain", "yahoo.com:1",
                      "--report", str(page), "--expect", "delivered=30")  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert set(report) == {
        "policy", "messages", "started", "finished_in", "timed_out", "traffic", "sink", "stats",
        "depth", "delayed_metrics", "expectations", "daemon_errors", "workdir", "exit_status",
    }  # fmt: skip
    assert report["exit_status"] == 0
    assert report["workdir"] is None  # a temporary directory, removed
    assert set(EXPECT_TRAFFIC) <= set(report["traffic"])
    stats = report["stats"]
    assert stats["counts"] == {"Delivery": 30, "Reception": 30}
    assert stats["by_scheduled_queue"] == {
        "gmail.com": {"Delivery": 20, "Reception": 20},
        "yahoo.com": {"Delivery": 10, "Reception": 10},
    }
    assert stats["by_ready_queue"] == {"maildir": {"Delivery": 30}}  # the shipped policy
    assert set(stats["latency_ms"]) == {"p50", "p90", "p99", "max"}
    assert sum(stats["deliveries_per_second"]["maildir"]) * stats["bucket_seconds"] == 30
    assert report["expectations"] == [
        {"expect": "delivered=30", "name": "delivered", "actual": 30, "ok": True}
    ]
    assert all(len(sample) == 3 for sample in report["depth"])
    assert page.read_text().count('<svg class="plot"') == 2


TEMPFAIL_RELAY = """
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.start_esmtp_listener { listen = '127.0.0.1:0' }
  kumo.define_spool { name = 'data', path = './var/spool', kind = 'SQLite' }
  kumo.define_spool { name = 'meta', path = './var/spool', kind = 'SQLite' }
  kumo.configure_local_logs { log_dir = './var/log' }
end)
kumo.on('get_queue_config', function()
  return kumo.make_queue_config { retry_interval = '1 hour', protocol = { smtp = {} } }
end)
"""


def test_the_timeout_ends_the_run_with_status_4(tmp_path):
    policy = tmp_path / "relay.lua"
    policy.write_text(TEMPFAIL_RELAY)
    run = harness_cli("--policy", str(policy), "--messages", "10", "--local-part", "tempfail",
                      "--timeout", "3", "--json", "--workdir", str(tmp_path / "run"))  # fmt: skip
    assert run.returncode == 4, run.stderr
    assert "10 messages had no final disposition after 3 s" in run.stderr
    report = json.loads(run.stdout)
    assert report["timed_out"] is True
    assert report["stats"]["unfinished"] == 10
    assert report["stats"]["counts"]["TransientFailure"] == 10
    assert report["finished_in"] < 30
    assert report["workdir"] == str(tmp_path / "run")  # --workdir is kept


def test_usage_errors_exit_2_and_a_policy_that_cannot_start_exits_3(tmp_path):
    assert harness_cli("--policy", "examples/minimal.lua", "--expect", "deliverd=1").returncode == 2
    assert harness_cli("--policy", str(tmp_path / "missing.lua")).returncode == 2
    broken = tmp_path / "broken.lua"
    broken.write_text("local kumo = require 'kumo'\nkumo.on('init', function() oops( end)\n")
    run = harness_cli("--policy", str(broken), "--messages", "1")
    assert run.returncode == 3
    assert "broken.lua" in run.stderr


def test_http_injection_when_asked():
    run = harness_cli("--policy", "examples/minimal.lua", "--messages", "40", "--http", "--json",
                      "--expect", "delivered=40")  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["traffic"]["mode"] == "http"
    assert report["sink"]["accepted"] == 0  # minimal.lua delivers into a maildir
