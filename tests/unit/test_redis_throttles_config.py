"""``kumo.configure_redis_throttles``: its parameters (kumoq.config.redis) and the declaration
in real Lua (only in ``init``, only once, a reload that changes it needs a restart)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kumoq.config.redis import RedisThrottleConfig
from kumoq.declarations import load_policy
from kumoq.errors import ConfigError, PolicyError


def test_defaults_and_durations() -> None:
    cfg = RedisThrottleConfig.from_mapping({"node": "redis://127.0.0.1:6379/"})
    assert cfg.node == ("redis://127.0.0.1:6379/",)
    assert (cfg.pool_size, cfg.connect_timeout, cfg.wait_timeout) == (10, 30.0, 30.0)
    assert cfg.response_timeout is None
    assert not cfg.is_cluster
    cfg = RedisThrottleConfig.from_mapping(
        {"node": "redis://a/", "connect_timeout": "2s", "response_timeout": "1 minute",
         "wait_timeout": 5, "pool_size": 3}
    )  # fmt: skip
    assert (cfg.connect_timeout, cfg.response_timeout, cfg.wait_timeout) == (2.0, 60.0, 5.0)


def test_several_nodes_are_a_cluster_unless_told() -> None:
    nodes = ["redis://a:7000/", "redis://b:7001/"]
    assert RedisThrottleConfig.from_mapping({"node": nodes}).is_cluster
    assert RedisThrottleConfig.from_mapping({"node": "redis://a/", "cluster": True}).is_cluster
    assert not RedisThrottleConfig.from_mapping({"node": nodes, "cluster": False}).is_cluster


@pytest.mark.parametrize(
    ("params", "match"),
    [
        (
            {"node": "redis://a/", "poolsize": 2},
            r"unknown key 'poolsize'; allowed keys are: "
            r"cluster, connect_timeout, node, password, pool_size, read_from_replicas, "
            r"recycle_timeout, response_timeout, username, wait_timeout",
        ),
        ({}, "missing required key 'node'"),
        ({"node": "http://a/"}, "the scheme must be one of"),
        ({"node": "redis:///"}, "no host name"),
        ({"node": "redis://a:port/"}, "invalid redis URL"),
        ({"node": []}, "at least one redis URL"),
        ({"node": "redis://a/", "pool_size": 0}, "must be at least 1"),
        ({"node": "redis://a/", "connect_timeout": "soon"}, "invalid duration"),
        ({"node": "redis://a/", "cluster": "yes"}, "expected true or false"),
    ],
)
def test_bad_parameters_are_refused(params: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RedisThrottleConfig.from_mapping(params)


def test_describe_hides_a_password() -> None:
    cfg = RedisThrottleConfig.from_mapping({"node": "redis://user:secret@host:6380/1"})
    assert cfg.describe() == "redis://user:***@host:6380/1"


POLICY = """
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = './d' }
  kumo.define_spool { name = 'meta', path = './m' }
  %s
end)
%s
"""


def write(tmp_path: Path, init: str, rest: str = "") -> Path:
    path = tmp_path / "init.lua"
    path.write_text(textwrap.dedent(POLICY % (init, rest)))
    return path


def test_declared_in_init(tmp_path: Path) -> None:
    path = write(tmp_path, "kumo.configure_redis_throttles { node = 'redis://127.0.0.1/' }")
    _, _, decl = load_policy(path)
    assert decl.redis_throttles == RedisThrottleConfig(("redis://127.0.0.1/",))
    _, _, same = load_policy(path)
    assert decl.restart_only_changes(same) == []
    path = write(tmp_path, "kumo.configure_redis_throttles { node = 'redis://other/' }")
    _, _, changed = load_policy(path)
    assert decl.restart_only_changes(changed) == ["the redis throttles"]
    _, _, none = load_policy(write(tmp_path, ""))
    assert none.redis_throttles is None
    assert decl.restart_only_changes(none) == ["the redis throttles"]


def test_a_second_call_is_an_error(tmp_path: Path) -> None:
    call = "kumo.configure_redis_throttles { node = 'redis://127.0.0.1/' }"
    with pytest.raises(PolicyError, match="redis already configured for throttles") as err:
        load_policy(write(tmp_path, f"{call}\n  {call}"))
    assert "init.lua:6" in str(err.value)  # the second call's line


def test_outside_init_is_an_error(tmp_path: Path) -> None:
    rest = """
    kumo.on('get_queue_config', function()
      kumo.configure_redis_throttles { node = 'redis://127.0.0.1/' }
    end)
    kumo.configure_redis_throttles { node = 'redis://127.0.0.1/' }
    """
    with pytest.raises(PolicyError, match="may only be called from inside the init event"):
        load_policy(write(tmp_path, "", rest))


def test_an_unknown_key_names_the_allowed_ones(tmp_path: Path) -> None:
    bad = "kumo.configure_redis_throttles { node = 'redis://127.0.0.1/', nodes = 1 }"
    with pytest.raises(PolicyError, match="unknown key 'nodes'; allowed keys are: cluster, "):
        load_policy(write(tmp_path, bad))
