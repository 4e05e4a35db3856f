"""kumoq.logs.hooks: log records offered to ``configure_log_hook`` hooks become queued messages.

The policy, spool and queue manager are fakes behind the ``HookTargets`` seams, except in the
tests that fire ``should_enqueue_log_record`` and ``configure_log_hook`` in real Lua."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from kumoq.clock import FakeClock
from kumoq.config.logs import LogHookConfig
from kumoq.declarations import load_policy
from kumoq.errors import ConfigError, PolicyError
from kumoq.logs.hooks import HookTargets, LogHooks, hook_message
from kumoq.logs.logger import RecordLogger
from kumoq.logs.records import RecordType, Response, build_record
from kumoq.lua import PolicyEvents
from kumoq.message import EnvelopeAddress, Message, new_spool_id
from tests.unit.lua_kumo_support import load

NOW = 1_700_000_000.0
OK = Response(250, None, "OK", None)


def message(meta: dict[str, Any] | None = None, rcpt: str = "r@dest.test") -> Message:
    return Message(
        id=new_spool_id(NOW),
        sender=EnvelopeAddress.parse("s@example.com"),
        recipients=[EnvelopeAddress.parse(rcpt)],
        meta={"campaign": "spring", "secret": "x", **(meta or {})},
        data=b"Subject: hi\r\nX-Tag: one\r\n\r\nbody\r\n",
    )


class Targets:
    """The policy, the queue manager and the spool, as the hook sees them."""

    def __init__(self, decide: bool | None = True, queue: str = "webhook.log_hook") -> None:
        self.decide = decide
        self.queue = queue
        self.asked: list[tuple[Message, str]] = []
        self.stored: list[Message] = []
        self.inserted: list[Message] = []
        self.gate: asyncio.Event | None = None

    async def should_enqueue_log_record(self, msg: Message, hook_name: str) -> bool:
        self.asked.append((msg, hook_name))
        if self.gate is not None:
            await self.gate.wait()
        if self.decide is None:
            raise PolicyError("init.lua:3: boom")
        msg.meta["queue"] = self.queue
        return self.decide

    async def resolve_waiting(self, name: str) -> object:
        return name

    def insert(self, msg: Message) -> None:
        self.inserted.append(msg)

    async def store(self, msg: Message) -> None:
        self.stored.append(msg)

    def wire(self, hooks: LogHooks) -> None:
        hooks.attach(HookTargets(policy=self, queues=self, store=self.store))


async def settle(hooks: LogHooks) -> None:
    for _ in range(200):
        if not hooks.pending:
            return
        await asyncio.sleep(0)
    raise AssertionError("the hooks did not settle")


def logger(*configs: LogHookConfig) -> tuple[RecordLogger, LogHooks]:
    hooks = LogHooks(configs, FakeClock(NOW))
    return RecordLogger([], "node", FakeClock(NOW), hooks=hooks), hooks


def test_config_keys():
    hook = LogHookConfig.from_mapping(
        {"name": "webhook", "headers": ["Subject"], "meta": {}, "deferred_spool": True,
         "per_record": {"Delivery": {"enable": False}}, "back_pressure": 10}
    )  # fmt: skip
    assert (hook.name, hook.headers, hook.meta, hook.back_pressure) == (
        "webhook", ("Subject",), (), 10,
    )  # fmt: skip
    assert not hook.record_enabled("Delivery")
    assert hook.record_enabled("Bounce")
    with pytest.raises(ConfigError, match="missing required key 'name'"):
        LogHookConfig.from_mapping({"headers": ["Subject"]})
    with pytest.raises(ConfigError, match="unknown key 'url'"):
        LogHookConfig.from_mapping({"name": "w", "url": "http://x"})
    with pytest.raises(ConfigError, match="template: not supported"):
        LogHookConfig.from_mapping({"name": "w", "per_record": {"Any": {"template": "x"}}})


def test_hook_message_carries_the_record():
    msg = message()
    line = build_record(RecordType.Delivery, msg, now=NOW, response=OK, nodeid="node")
    made = hook_message(line, NOW)
    record = json.loads(line)
    assert made.sender.email == "s@example.com"
    assert [r.email for r in made.recipients] == ["r@dest.test"]
    assert made.data == line
    assert made.meta["log_record"] == record
    assert made.meta["reception_protocol"] == "LogRecord"
    assert made.id != msg.id
    with pytest.raises(ValueError, match="no recipient"):
        hook_message(line.replace(b'"recipient":"r@dest.test"', b'"recipient":""'), NOW)


async def test_records_become_queued_messages_with_the_hook_selection():
    records, hooks = logger(
        LogHookConfig.from_mapping({"name": "webhook", "meta": ["campaign"], "headers": ["X-Tag"]})
    )
    targets = Targets()
    targets.wire(hooks)
    msg = message()
    records.log(RecordType.Reception, msg, response=OK, reception_protocol="ESMTP")
    records.log(RecordType.Delivery, msg, response=OK, site="dest.test")
    await settle(hooks)
    assert [name for _, name in targets.asked] == ["webhook", "webhook"]
    assert targets.stored == targets.inserted
    first, second = targets.inserted
    assert first.meta["log_record"]["type"] == "Reception"
    assert second.meta["log_record"]["type"] == "Delivery"
    assert first.meta["log_record"]["meta"] == {"campaign": "spring"}
    assert first.meta["log_record"]["headers"] == {"X-Tag": "one"}
    assert first.meta["campaign"] == "spring"  # the record's meta is the message's
    assert "secret" not in first.meta
    assert first.meta["queue"] == "webhook.log_hook"


async def test_nothing_is_queued_when_the_policy_says_no_or_fails():
    records, hooks = logger(LogHookConfig.from_mapping({"name": "webhook"}))
    targets = Targets(decide=False)
    targets.wire(hooks)
    records.log(RecordType.Delivery, message(), response=OK)
    targets_fail = Targets(decide=None)
    await settle(hooks)
    hooks.attach(HookTargets(policy=targets_fail, queues=targets_fail, store=targets_fail.store))
    records.log(RecordType.Delivery, message(), response=OK)
    await settle(hooks)
    assert len(targets.asked) == 1
    assert len(targets_fail.asked) == 1
    assert targets.stored == targets_fail.stored == []
    assert hooks.dropped == 1  # the failure is counted (and logged)


async def test_records_about_hook_messages_and_disabled_types_are_not_offered():
    records, hooks = logger(
        LogHookConfig.from_mapping({"name": "a", "per_record": {"Reception": {"enable": False}}}),
        LogHookConfig.from_mapping({"name": "b"}),
    )
    targets = Targets()
    targets.wire(hooks)
    records.log(RecordType.Delivery, message({"reception_protocol": "LogRecord"}), response=OK)
    records.log(RecordType.Reception, message(), response=OK, reception_protocol="ESMTP")
    await settle(hooks)
    assert [name for _, name in targets.asked] == ["b"]


async def test_records_wait_for_attach_and_close_drops_what_is_left():
    records, hooks = logger(LogHookConfig.from_mapping({"name": "webhook", "back_pressure": 1}))
    records.log(RecordType.Delivery, message(), response=OK)
    records.log(RecordType.Bounce, message(), response=Response(550, None, "no", None))
    assert hooks.pending == 2  # not attached yet
    targets = Targets()
    targets.gate = asyncio.Event()
    targets.wire(hooks)
    await asyncio.sleep(0)
    assert len(targets.asked) == 1  # back_pressure 1: one at a time, in order
    await hooks.close(0.01)
    assert hooks.dropped == 2
    assert targets.stored == []
    records.log(RecordType.Delivery, message(), response=OK)
    assert hooks.dropped == 3
    assert hooks.pending == 0


async def test_should_enqueue_log_record_in_lua(tmp_path):
    rt = load(
        tmp_path,
        """
        kumo.on('should_enqueue_log_record', function(msg, hook_name)
          if hook_name ~= 'mine' then return end
          local record = msg:get_meta 'log_record'
          if record.reception_protocol == 'LogRecord' then return false end
          msg:set_meta('queue', hook_name .. '.log_hook')
          return record.type == 'Delivery'
        end)
        kumo.on('should_enqueue_log_record', function(msg, hook_name)
          if hook_name == 'bad' then return 'yes' end
        end)
        """,
    )
    events = PolicyEvents(rt)
    line = build_record(RecordType.Delivery, message(), now=NOW, response=OK, nodeid="n")
    msg = hook_message(line, NOW)
    assert await events.should_enqueue_log_record(msg, "mine") is True
    assert msg.meta["queue"] == "mine.log_hook"
    assert await events.should_enqueue_log_record(hook_message(line, NOW), "other") is False
    with pytest.raises(PolicyError, match="must return a boolean or nil"):
        await events.should_enqueue_log_record(hook_message(line, NOW), "bad")


def test_configure_log_hook_is_declared_in_init(tmp_path):
    path = tmp_path / "init.lua"
    base = """
    kumo.on('init', function()
      kumo.define_spool { name = 'data', path = './d' }
      kumo.define_spool { name = 'meta', path = './m' }
    end)
    kumo.on('pre_init', function()
      kumo.configure_log_hook { name = 'webhook', headers = { 'Subject' } }
      %s
    end)
    """
    path.write_text(textwrap.dedent(base % ""))
    _, _, decl = load_policy(Path(path))
    (hook,) = decl.log_hooks
    assert (hook.name, hook.headers) == ("webhook", ("Subject",))
    path.write_text(textwrap.dedent(base % "kumo.configure_log_hook { name = 'webhook' }"))
    with pytest.raises(PolicyError, match="a hook named 'webhook' already exists"):
        load_policy(Path(path))
