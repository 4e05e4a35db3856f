"""The events of issue 14 through real Lua: ``get_listener_domain`` and
``kumo.make_listener_domain``, ``smtp_server_data``, ``requeue_message`` (with the scheduler's
``ask_policy``), ``validate_config`` with ``kumo.validation_failed()``, the multi-handler
dispatch, and the load-time report of handlers kumoq never calls."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kumoq.config.listener_domain import ListenerDomain, LogReportDisposition
from kumoq.declarations import BUILDERS, Declarations, PolicyRequeue
from kumoq.errors import PolicyError, RejectError
from kumoq.logs.records import Response
from kumoq.lua import PolicyEvents, PolicyRuntime
from kumoq.lua.budget import LuaLimits
from kumoq.lua.events import FIRED_EVENTS, NOT_FIRED_YET, unfired_handlers
from kumoq.message import EnvelopeAddress, Message, new_spool_id
from kumoq.scheduler.context import InsertContext, InsertReason
from kumoq.scheduler.requeue import KEPT, ask_policy


def load(
    tmp_path: Path, src: str, limits: LuaLimits | None = None
) -> tuple[PolicyEvents, Declarations]:
    path = tmp_path / "init.lua"
    path.write_text(textwrap.dedent(src))
    decl = Declarations()
    runtime = PolicyRuntime(path, builders=BUILDERS, declare=decl.declare, limits=limits)
    return PolicyEvents(runtime), decl


def line(src: str, text: str) -> str:
    """``init.lua:N``, N the line of ``src`` (as written by ``load``) holding ``text``."""
    lines = textwrap.dedent(src).splitlines()
    (number,) = [n for n, content in enumerate(lines, 1) if text in content]
    return f"init.lua:{number}"


def message(*rcpts: str) -> Message:
    return Message(
        id=new_spool_id(1_700_000_000.0),
        sender=EnvelopeAddress.parse("a@sender.example"),
        recipients=[EnvelopeAddress.parse(r) for r in rcpts or ("b@rcpt.example",)],
        data=b"Subject: hi\r\n\r\nbody\r\n",
    )


# -- get_listener_domain -------------------------------------------------------------------


LISTENER_DOMAINS = """
kumo.on('get_listener_domain', function(domain, listener, conn_meta)
  local asked = conn_meta:get_meta 'asked' or ''
  conn_meta:set_meta('asked', asked .. domain .. '@' .. listener .. ' ')
  if domain == 'relay.test' then
    return kumo.make_listener_domain { relay_to = true }
  elseif domain == 'bounce.test' then
    return kumo.make_listener_domain { log_oob = 'LogThenDrop', log_arf = true }
  elseif domain == 'lan.test' then
    return kumo.make_listener_domain { relay_from = { '10.0.0.0/8' } }
  elseif domain == 'table.test' then
    return { relay_to = true }
  elseif domain == 'rejects.test' then
    kumo.reject(550, 'no thanks')
  elseif domain == 'typo.test' then
    return kumo.make_listener_domain { relay_too = true }
  end
end)
"""


async def test_get_listener_domain_answers_with_the_made_object(tmp_path):
    ev, _ = load(tmp_path, LISTENER_DOMAINS)
    conn: dict[str, object] = {}
    relay = await ev.get_listener_domain("relay.test", "127.0.0.1:25", conn)
    assert relay == ListenerDomain(relay_to=True)
    bounce = await ev.get_listener_domain("bounce.test", "127.0.0.1:25", conn)
    assert bounce is not None
    assert (bounce.log_oob, bounce.log_arf) == (
        LogReportDisposition.LogThenDrop,
        LogReportDisposition.LogThenRelay,
    )
    lan = await ev.get_listener_domain("lan.test", "127.0.0.1:25", conn)
    assert lan is not None
    assert str(lan.relay_from[0]) == "10.0.0.0/8"
    assert await ev.get_listener_domain("other.test", "[::1]:2025", conn) is None
    assert conn["asked"] == (
        "relay.test@127.0.0.1:25 bounce.test@127.0.0.1:25 lan.test@127.0.0.1:25 "
        "other.test@[::1]:2025 "
    )


async def test_get_listener_domain_without_a_handler_is_none(tmp_path):
    ev, _ = load(tmp_path, "")
    assert await ev.get_listener_domain("relay.test", "127.0.0.1:25", {}) is None


async def test_get_listener_domain_errors(tmp_path):
    ev, _ = load(tmp_path, LISTENER_DOMAINS)
    with pytest.raises(PolicyError, match=r"must return kumo\.make_listener_domain"):
        await ev.get_listener_domain("table.test", "127.0.0.1:25", {})
    # kumo.reject is no reply in this event (KumoMTA: technical difficulties).
    with pytest.raises(PolicyError, match=r"kumo.reject\(550, 'no thanks'\) is an error") as info:
        await ev.get_listener_domain("rejects.test", "127.0.0.1:25", {})
    assert not isinstance(info.value, RejectError)
    with pytest.raises(PolicyError, match="unknown key 'relay_too'") as info:
        await ev.get_listener_domain("typo.test", "127.0.0.1:25", {})
    assert info.value.location == line(LISTENER_DOMAINS, "relay_too")


# -- smtp_server_data ----------------------------------------------------------------------


async def test_smtp_server_data_sees_every_recipient_and_may_change_them(tmp_path):
    ev, _ = load(
        tmp_path,
        """
        kumo.on('smtp_server_data', function(msg, conn_meta)
          local seen = {}
          for _, r in ipairs(msg:recipient_list()) do table.insert(seen, tostring(r)) end
          msg:set_meta('seen', table.concat(seen, ','))
          msg:set_meta('via', conn_meta:get_meta 'received_via')
          msg:set_recipient { 'x@alias.test', 'y@alias.test', 'z@other.test' }
        end)
        """,
    )
    msg = message("b@rcpt.example", "c@rcpt.example")
    await ev.smtp_server_data(msg, {"received_via": "127.0.0.1:25"})
    assert msg.meta == {"seen": "b@rcpt.example,c@rcpt.example", "via": "127.0.0.1:25"}
    assert [r.email for r in msg.recipients] == ["x@alias.test", "y@alias.test", "z@other.test"]


async def test_smtp_server_data_reject_and_errors(tmp_path):
    src = """
        kumo.on('smtp_server_data', function(msg, conn_meta)
          if msg:get_first_named_header_value 'Subject' == 'spam' then
            kumo.reject(552, '5.7.0 not here')
          end
          error('broken')
        end)
        """
    ev, _ = load(tmp_path, src)
    spam = message()
    spam.data = b"Subject: spam\r\n\r\nbody\r\n"
    with pytest.raises(RejectError) as info:
        await ev.smtp_server_data(spam, {})
    assert (info.value.code, info.value.reply_text) == (552, "5.7.0 not here")
    with pytest.raises(PolicyError, match=f"{line(src, 'broken')}: broken"):
        await ev.smtp_server_data(message(), {})


# -- requeue_message -----------------------------------------------------------------------


REQUEUE = """
kumo.on('requeue_message', function(msg, response, context, increment, delay)
  msg:set_meta('args', string.format('%s|%s|%s|%s|%d', response,
    table.concat(context, ','), tostring(increment), tostring(delay), msg:num_attempts()))
  if response:find 'greylist' then
    msg:set_meta('queue', 'fallback.test')
  elseif response:find 'full' then
    msg:increment_num_attempts()
  elseif response:find 'give up' then
    kumo.reject(550, '5.4.7 gave up after ' .. msg:num_attempts() .. ' attempts')
  elseif response:find 'broken' then
    msg:set_meta('queue', 'half-done.test')
    error('oops')
  elseif response:find 'spin' then
    while true do end
  end
end)
"""
LOGGED = InsertContext(InsertReason.LoggedTransientFailure)


def ask(ev: PolicyEvents, msg: Message, text: str, *, increment=True, delay=None):
    response = Response(451, (4, 7, 1), text, None)
    policy = PolicyRequeue(ev)
    context = LOGGED if increment else InsertContext(InsertReason.MessageRateThrottle)
    return ask_policy(
        policy, msg, msg.queue_name(), response, context, increment_attempts=increment, delay=delay
    )


def test_requeue_message_gets_kumomtas_arguments(tmp_path):
    ev, _ = load(tmp_path, REQUEUE)
    msg = message()
    msg.num_attempts = 2
    assert ask(ev, msg, "try again") is KEPT
    assert msg.meta["args"] == "451 4.7.1 try again|LoggedTransientFailure|true|nil|2"
    assert ask(ev, msg, "slow down", increment=False, delay=12.5) is KEPT
    assert msg.meta["args"] == "451 4.7.1 slow down|MessageRateThrottle|false|12.5|2"


def test_requeue_message_moves_bounces_and_bumps_attempts(tmp_path):
    ev, _ = load(tmp_path, REQUEUE)
    msg = message()
    assert ask(ev, msg, "greylisted").moved_to == "fallback.test"
    msg = message()
    assert ask(ev, msg, "mailbox full") is KEPT
    assert msg.num_attempts == 1  # the backoff that follows starts one step further
    msg = message()
    msg.num_attempts = 4
    outcome = ask(ev, msg, "give up")
    assert outcome.bounce == Response(550, None, "5.4.7 gave up after 4 attempts", None)


def test_a_failing_requeue_handler_leaves_the_message_where_it_was(tmp_path):
    ev, _ = load(tmp_path, REQUEUE, limits=LuaLimits(time_budget=0.05))
    msg = message()
    outcome = ask(ev, msg, "broken")
    assert outcome.moved_to is None
    assert outcome.bounce is None
    assert outcome.error is not None
    assert f"{line(REQUEUE, 'oops')}: oops" in outcome.error
    assert "queue" not in msg.meta  # the half-done rebind was undone
    assert msg.queue_name() == "rcpt.example"
    # Over its time budget: an error, not a bounce (a budget error is a 451 RejectError).
    outcome = ask(ev, message(), "spin")
    assert outcome.bounce is None
    assert outcome.error is not None
    assert "time budget" in outcome.error


def test_without_a_handler_nothing_is_asked(tmp_path):
    ev, _ = load(tmp_path, "")
    msg = message()
    assert ask(ev, msg, "greylisted") is KEPT
    assert msg.meta == {}


# -- validate_config and the multi-handler dispatch ----------------------------------------


def test_validation_failed_is_remembered_with_its_line_and_the_handler_goes_on(tmp_path):
    ev, decl = load(
        tmp_path,
        """
        kumo.on('validate_config', function()
          kumo.log_info 'first'
        end)
        kumo.on('validate_config', function()
          kumo.validation_failed()
          kumo.validation_failed()
        end)
        kumo.on('validate_config', function()
          kumo.validation_failed()
        end)
        """,
    )
    ev.validate_config()
    assert decl.validation_failures == ["init.lua:6", "init.lua:7", "init.lua:10"]


def test_validate_config_errors_name_their_line(tmp_path):
    ev, _ = load(tmp_path, "kumo.on('validate_config', function()\n  error('bad file')\nend)\n")
    with pytest.raises(PolicyError, match=r"init\.lua:2: bad file"):
        ev.validate_config()


def test_a_multi_handler_event_stops_at_the_first_handler_that_returns_anything(tmp_path):
    """KumoMTA's dispatch: a handler that returns nothing lets the next run; ``return nil``
    is a value and ends the dispatch."""
    ev, _ = load(
        tmp_path,
        """
        kumo.on('get_queue_config', function(domain)
          if domain == 'stop.test' then return nil end
        end)
        kumo.on('get_queue_config', function(domain)
          return kumo.make_queue_config { retry_interval = '5m' }
        end)
        """,
    )
    assert ev.get_queue_config("stop.test", None, None, None) is None
    second = ev.get_queue_config("go.test", None, None, None)
    assert second is not None
    assert second.retry_interval == 300.0


# -- handlers kumoq never calls --------------------------------------------------------------


def test_handlers_kumoq_never_calls_are_named_with_their_line(tmp_path):
    (tmp_path / "helper.lua").write_text(
        "local kumo = require 'kumo'\nkumo.on('throttle_insert_ready_queue', function() end)\n"
    )
    ev, _ = load(
        tmp_path,
        """
        require 'helper'
        kumo.on('smtp_server_message_received', function() end)
        kumo.on('spool_message_enumerated', function() end)
        kumo.on('smtp_server_message_recieved', function() end)
        kumo.on('make.webhook', function() end)
        kumo.on('webhook', function() end)
        kumo.on('tsa_init', function() end)
        """,
    )
    found = unfired_handlers(ev.runtime.handler_names)
    assert [site for site, _ in found] == [
        "helper.lua:2", "init.lua:4", "init.lua:5", "init.lua:7", "init.lua:8",
    ]  # fmt: skip
    texts = dict(found)
    assert texts["helper.lua:2"] == (
        "kumo.on('throttle_insert_ready_queue'): not yet supported: KumoMTA fires it, kumoq "
        "does not yet; the handler is never called"
    )
    assert texts["init.lua:5"].startswith(
        "kumo.on('smtp_server_message_recieved'): unknown event (did you mean "
        "'smtp_server_message_received'?): neither KumoMTA nor kumoq fires it"
    )
    assert "unknown event: neither" in texts["init.lua:7"]  # no close name
    assert "tsa-daemon" in texts["init.lua:8"]
    # A constructor the caller knows of is not reported.
    assert "init.lua:7" not in dict(unfired_handlers(ev.runtime.handler_names, {"webhook"}))


def test_the_event_lists_do_not_overlap():
    assert not FIRED_EVENTS & NOT_FIRED_YET.keys()
