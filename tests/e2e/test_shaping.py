"""End to end: shaping values from a TOML file (merged with a JSON file) reach the egress path
through a policy in the style of KumoMTA's shaping helper; observed at a counting sink."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.policies import policy
from tests.e2e.test_smtp_relay import Sink

pytestmark = pytest.mark.integration

SHAPING_TOML = """
["default"]
connection_limit = 10
max_deliveries_per_connection = 100

["rolled.test"]
connection_limit = 5

["also-rolled.test"]
connection_limit = 6

["example.com"]
mx_rollup = false
connection_limit = 1
max_deliveries_per_connection = 2
"""

SHAPING_JSON = """{
  // the local overrides: the sink speaks no TLS and lives on loopback
  "default": {"enable_tls": "Disabled", "prohibited_hosts": []}
}"""

HELPER_STYLE = """
local SHAPING_FILES = {{ '{toml}', '{json}' }}
local function load_shaping_data(files)
  local data = kumo.shaping.load(files, {{ dns_fail = 'Error', aliased_site = 'Warn' }})
  for _, err in ipairs(data:get_errors()) do kumo.log_error(err) end
  for _, warn in ipairs(data:get_warnings()) do kumo.log_warn(warn) end
  local rolled = data:get_egress_path_config('any.test', 'any', 'mx1.rolled.test')
  kumo.log_info('shaping for mx1.rolled.test', kumo.json_encode(rolled))
  return data
end
local cached_load = kumo.memoize(load_shaping_data, {{
  name = 'shaping_data', ttl = '1 minute', capacity = 16, invalidate_with_epoch = true,
}})
kumo.on('pre_init', function()
  kumo.dns.configure_test_resolver [[
$ORIGIN test.
$TTL 300
rolled       MX 10 mx1.rolled.test.
also-rolled  MX 10 mx1.also.test.
]]
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    retry_interval = '1s', protocol = {{ smtp = {{ mx_list = {{ '127.0.0.1:{port}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function(domain, egress_source, site_name)
  local params = cached_load(SHAPING_FILES):get_egress_path_config(domain, egress_source, site_name)
  if not params.refresh_strategy then params.refresh_strategy = 'Epoch' end
  return kumo.make_egress_path(params)
end)
"""


def test_shaping_values_reach_the_egress_path(kumoq, sink_of, tmp_path: Path) -> None:
    sink = sink_of(Sink)
    toml = tmp_path / "shaping.toml"
    toml.write_text(SHAPING_TOML)
    json = tmp_path / "local.json"
    json.write_text(SHAPING_JSON)
    daemon = kumoq(policy(HELPER_STYLE.format(toml=toml, json=json, port=sink.port)))
    daemon.send("s@example.com", [f"r{i}@example.com" for i in range(8)])
    daemon.wait_for_records("Delivery", 8, timeout=30)
    assert len(sink.messages) == 8
    assert sink.max_open == 1  # connection_limit = 1 from the TOML file
    # max_deliveries_per_connection = 2: at least 4 sessions for 8 messages
    assert sink.connections - sink.baseline >= 4
    # mx_rollup: rolled.test's entry is keyed by its site, looked up through the daemon's DNS
    rolled = [line for line in daemon.stderr_lines if "shaping for mx1.rolled.test" in line]
    assert rolled
    assert '"connection_limit":5' in rolled[0]
    assert not [line for line in daemon.stderr_lines if "ERROR kumoq.policy" in line]
