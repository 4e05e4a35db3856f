"""The daemon hands the policy runtime a builder for every make_* table it validates."""

from __future__ import annotations

import pytest

from kumoq.config.egress import EgressPathConfig, EgressPool, EgressSource
from kumoq.declarations import BUILDERS, PolicyEgress
from kumoq.errors import ConfigError, PolicyError
from kumoq.lua import PolicyEvents, PolicyRuntime

POLICY = """
local kumo = require 'kumo'
kumo.on('get_egress_pool', function(name)
  return kumo.make_egress_pool { name = name, entries = { { name = 'ip-1', weight = 2 } } }
end)
kumo.on('get_egress_source', function(name)
  return kumo.make_egress_source { name = name, source_address = '127.0.0.2' }
end)
kumo.on('get_egress_path_config', function(routing_domain, source, site)
  if routing_domain == 'bad.example' then
    return kumo.make_egress_path { connection_limt = 5 }
  end
  return kumo.make_egress_path { connection_limit = 5, enable_tls = 'Required' }
end)
"""


@pytest.fixture
def events(tmp_path):
    path = tmp_path / "init.lua"
    path.write_text(POLICY)
    return PolicyEvents(PolicyRuntime(path, builders=BUILDERS))


def test_egress_tables_are_built_into_config_values(events):
    pool = events.call("get_egress_pool", "pool-a")
    assert isinstance(pool, EgressPool)
    assert [(e.name, e.weight) for e in pool.entries] == [("ip-1", 2)]
    source = events.call("get_egress_source", "ip-1")
    assert isinstance(source, EgressSource)
    assert source.source_address == "127.0.0.2"
    path = events.call("get_egress_path_config", "example.com", "ip-1", "mx.example.com")
    assert isinstance(path, EgressPathConfig)
    assert path.connection_limit.limit == 5


def test_unknown_egress_path_key_names_key_allowed_keys_and_line(events):
    with pytest.raises(PolicyError) as info:
        events.call("get_egress_path_config", "bad.example", "ip-1", "mx.example.com")
    text = str(info.value)
    assert "connection_limt" in text
    assert "connection_limit" in text
    assert "init.lua:11" in text  # the make_egress_path line (the text starts with \n)


def test_egress_events_must_return_the_matching_maker(tmp_path):
    path = tmp_path / "init.lua"
    path.write_text(
        "kumo.on('get_egress_pool', function(name) return nil end)\n"
        "kumo.on('get_egress_source', function(name) return { name = name } end)\n"
    )
    egress = PolicyEgress(PolicyEvents(PolicyRuntime(path, builders=BUILDERS)))
    with pytest.raises(ConfigError, match=r"return kumo\.make_egress_pool\{\.\.\.\}, got None"):
        egress.get_egress_pool("pool-a")
    with pytest.raises(ConfigError, match=r"must return kumo\.make_egress_source\{\.\.\.\}, got"):
        egress.get_egress_source("ip-1")
