"""kumo.spawn_task, kumo.available_parallelism, kumo.set_diagnostic_log_filter,
kumo.invoke_get_egress_path_config and kumo.traceback."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kumoq.config.egress import EgressPathConfig
from kumoq.declarations import BUILDERS
from kumoq.errors import PolicyError
from kumoq.lua import PolicyEvents
from kumoq.lua.host import available_parallelism, parse_log_filter
from kumoq.lua.tasks import TASKS
from tests.unit.lua_kumo_support import call, load

TASK_POLICY = """
kumo.on('init', function()
  kumo.spawn_task { event_name = 'my.task', args = { 'hello', 'there' } }
  kumo.spawn_task { event_name = 'my.failing_task' }
end)
kumo.on('my.task', function(args)
  kumo.log_info('task got', kumo.json_encode(args))
  kumo.time.sleep(0.01)
  kumo.log_info('task done')
end)
kumo.on('my.failing_task', function(args)
  kumo.log_info('failing got', kumo.json_encode(args))
  error('the task failed')
end)
"""


async def test_spawned_tasks_run_in_the_background_and_errors_are_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    before = TASKS.running()
    rt = load(tmp_path, TASK_POLICY)
    rt.fire_init()
    assert TASKS.running() == before + 2
    for _ in range(100):
        await asyncio.sleep(0.01)
        if TASKS.running() == before:
            break
    messages = [(r.name, r.getMessage()) for r in caplog.records]
    assert ("kumoq.policy", 'task got ["hello","there"]') in messages
    assert ("kumoq.policy", "task done") in messages
    assert ("kumoq.policy", "failing got {}") in messages
    assert (
        "kumoq.lua.tasks",
        "Error while dispatching my.failing_task: init.lua:13: the task failed",
    ) in messages


async def test_a_reload_does_not_start_a_running_task_again(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    policy = """
    kumo.on('init', function() kumo.spawn_task { event_name = 'forever', args = {} } end)
    kumo.on('forever', function() while true do kumo.time.sleep(0.01) end end)
    """
    before = TASKS.running()
    first = load(tmp_path, policy)
    first.fire_init()
    second = load(tmp_path, policy)
    second.fire_init()
    await asyncio.sleep(0.05)
    assert TASKS.running() == before + 1
    assert any("already running" in r.getMessage() for r in caplog.records)
    for task in asyncio.all_tasks():
        if task.get_name() == "spawned-task-forever":
            task.cancel()
    await asyncio.sleep(0)


def test_without_an_event_loop_nothing_starts(tmp_path):
    before = TASKS.running()
    rt = load(tmp_path, TASK_POLICY)
    rt.fire_init()  # validation: checked, not started
    assert TASKS.running() == before


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("{ event_name = 'nope' }", "spawn_task: no handler is registered for the event 'nope'"),
        ("{ event = 'x' }", "spawn_task: expected a table with event_name and args"),
        ("'x'", "spawn_task: expected a table, got string"),
    ],
)
def test_spawn_task_errors(tmp_path, params, message):
    rt = load(tmp_path, f"kumo.on('init', function()\n  kumo.spawn_task({params})\nend)\n")
    with pytest.raises(PolicyError, match=message) as info:
        rt.fire_init()
    assert info.value.location == "init.lua:2"


# -- host --------------------------------------------------------------------------------------


def test_available_parallelism(tmp_path, monkeypatch):
    assert call(tmp_path, "return kumo.available_parallelism()") == available_parallelism()
    assert available_parallelism() >= 1
    monkeypatch.setenv("KUMO_AVAILABLE_PARALLELISM", "7")
    assert call(tmp_path, "return kumo.available_parallelism()") == 7
    monkeypatch.setenv("KUMO_AVAILABLE_PARALLELISM", "zero")
    with pytest.raises(PolicyError, match="KUMO_AVAILABLE_PARALLELISM must be an integer"):
        call(tmp_path, "local n = kumo.available_parallelism()")


def test_log_filter_directives():
    assert parse_log_filter("kumod=debug, lua=warn,kumoq.smtp=trace,info") == {
        "kumoq": logging.DEBUG,
        "kumoq.policy": logging.WARNING,
        "kumoq.smtp": 5,
        "": logging.INFO,
    }
    assert parse_log_filter("aiohttp::web=off") == {"aiohttp.web": logging.CRITICAL + 10}


def test_set_diagnostic_log_filter_sets_and_restores_levels(tmp_path):
    kumoq_logger, policy = logging.getLogger("kumoq"), logging.getLogger("kumoq.policy")
    before = kumoq_logger.level, policy.level
    try:
        load(tmp_path, "kumo.set_diagnostic_log_filter 'kumod=debug,lua=error'")
        assert (kumoq_logger.level, policy.level) == (logging.DEBUG, logging.ERROR)
        load(tmp_path, "kumo.set_diagnostic_log_filter 'lua=info'")
        assert (kumoq_logger.level, policy.level) == (before[0], logging.INFO)
    finally:
        load(tmp_path, "kumo.set_diagnostic_log_filter ''")
    assert (kumoq_logger.level, policy.level) == before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kumod=loud", "invalid level 'loud'"),
        ("kumod[span{x=1}]=debug", "target=level directives only"),
    ],
)
def test_bad_log_filters(tmp_path, text, message):
    with pytest.raises(PolicyError, match=message):
        load(tmp_path, f"kumo.set_diagnostic_log_filter '{text}'")


# -- invoke_get_egress_path_config ---------------------------------------------------------------

PATH_POLICY = """
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  if routing_domain == 'plain.test' then
    return { connection_limit = 3 }
  elseif routing_domain == 'none.test' then
    return nil
  elseif routing_domain == 'reject.test' then
    kumo.reject(421, 'not now')
  end
  return kumo.make_egress_path {
    connection_limit = 'local:5',
    max_message_rate = '100/h',
    idle_timeout = '30s',
    enable_tls = 'Required',
    prohibited_hosts = { '10.0.0.0/8' },
    ehlo_domain = site_name,
  }
end)
kumo.on('t', function(domain)
  return kumo.invoke_get_egress_path_config(domain, 'ip-1', 'mx.example.com')
end)
kumo.on('again', function(domain)
  local config = kumo.invoke_get_egress_path_config(domain, 'ip-1', 'mx.example.com')
  return kumo.make_egress_path(config)
end)
"""


def test_invoke_get_egress_path_config_returns_the_parameter_table(tmp_path):
    events = PolicyEvents(load(tmp_path, PATH_POLICY, builders=BUILDERS))
    config = events.call("t", "example.com")
    assert config["connection_limit"] == "local:5"
    assert config["max_message_rate"] == "100/h"
    assert config["idle_timeout"] == "30s"
    assert config["connect_timeout"] == "1m"
    assert config["enable_tls"] == "Required"
    assert config["prohibited_hosts"] == ["10.0.0.0/8"]
    assert config["ehlo_domain"] == "mx.example.com"
    assert "smtp_auth_plain_username" not in config  # not set
    expected = events.call("get_egress_path_config", "example.com", "ip-1", "mx.example.com")
    assert events.call("again", "example.com") == expected  # the table round-trips


def test_a_plain_table_or_nothing_is_built_with_the_defaults(tmp_path):
    events = PolicyEvents(load(tmp_path, PATH_POLICY, builders=BUILDERS))
    assert events.call("t", "plain.test")["connection_limit"] == 3
    assert events.call("again", "none.test") == EgressPathConfig()


def test_a_reject_in_the_event_goes_on_up(tmp_path):
    from kumoq.errors import RejectError

    events = PolicyEvents(load(tmp_path, PATH_POLICY, builders=BUILDERS))
    with pytest.raises(RejectError) as info:
        events.call("t", "reject.test")
    assert info.value.code == 421


# -- traceback -----------------------------------------------------------------------------------


def test_traceback_lists_the_frames(tmp_path):
    got = call(
        tmp_path,
        """
        local function inner()
          local frames = kumo.traceback(1)
          return frames
        end
        local frames = inner()
        return { frames[1].short_src, frames[1].curr_line, frames[1].what,
                 frames[1].name, frames[2].curr_line }
        """,
    )
    assert got == ["init.lua", 4, "Lua", "inner", 7]
