"""Lua budgets (issue 10, defect 4): a time budget per call into the policy, a memory cap on the
Lua state. Real Lua through PolicyRuntime and PolicyEvents.

The limits are set through the environment, as an operator sets them, so the runaway tests run
unchanged against a runtime without budgets (where they hang: the ``thread`` timeout method
ends such a run, since a signal cannot interrupt Lua).
"""

from __future__ import annotations

import asyncio
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from kumoq.dns.mx_cache import MxCache, MxResult
from kumoq.dns.resolver import TestResolver
from kumoq.errors import ConfigError, PolicyError, RejectError
from kumoq.lua import PolicyEvents, PolicyRuntime
from kumoq.message import EnvelopeAddress, Message, new_spool_id

BUDGET = 0.25  # seconds, KUMOQ_LUA_TIME_BUDGET for these tests
SLACK = 2.0  # seconds of scheduling noise allowed on a shared machine
runaway = pytest.mark.timeout(60, method="thread")


@pytest.fixture(autouse=True)
def limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUMOQ_LUA_TIME_BUDGET", str(BUDGET))
    monkeypatch.setenv("KUMOQ_LUA_MAX_MEMORY", "32 MiB")


@pytest.fixture
def memory_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A time budget no memory test reaches, even on a loaded machine: only the cap stops it."""
    monkeypatch.setenv("KUMOQ_LUA_TIME_BUDGET", "60")


def load(tmp_path: Path, src: str) -> PolicyEvents:
    path = tmp_path / "init.lua"
    path.write_text(textwrap.dedent(src).lstrip("\n"))
    return PolicyEvents(PolicyRuntime(path))


def message(data: bytes = b"Subject: hi\r\n\r\nbody\r\n") -> Message:
    return Message(
        id=new_spool_id(time.time()),
        sender=EnvelopeAddress.parse("sender@example.com"),
        recipients=[EnvelopeAddress.parse("rcpt@example.com")],
        meta={},
        data=data,
    )


def assert_over_budget(exc: PolicyError, event: str, location: str, kind: str) -> None:
    """A 451 4.3.0 (not the 421 of other policy errors) naming the event and file:line."""
    assert isinstance(exc, RejectError)
    assert exc.code == 451
    assert exc.reply_text.startswith("4.3.0 ")
    assert not exc.disconnect
    assert exc.location == location
    assert event in str(exc)
    assert location in str(exc)
    assert kind in str(exc)


# -- time -----------------------------------------------------------------------------------


@runaway
async def test_a_handler_that_never_returns_fails_within_its_budget(tmp_path: Path) -> None:
    events = load(
        tmp_path,
        """
        kumo.on('smtp_server_message_received', function(msg, conn_meta)
          while true do end
        end)
        """,
    )
    start = time.monotonic()
    with pytest.raises(PolicyError) as info:
        await events.smtp_server_message_received(message(), {})
    elapsed = time.monotonic() - start
    assert BUDGET <= elapsed < BUDGET + SLACK
    assert_over_budget(info.value, "smtp_server_message_received", "init.lua:2", "time budget")
    assert "KUMOQ_LUA_TIME_BUDGET" in str(info.value)


LOOPS = {
    "pcall": """
        while true do pcall(function() while true do end end) end
    """,
    "xpcall with a looping handler": """
        while true do xpcall(error, function() while true do end end) end
    """,
    "coroutine.wrap": """
        coroutine.wrap(function() while true do end end)()
    """,
    "coroutines resumed under pcall": """
        while true do
          coroutine.resume(coroutine.create(function()
            while true do pcall(string.rep, 'x', 10) end
          end))
        end
    """,
    "a gsub callback": """
        string.gsub(string.rep('x', 100), '.', function() while true do end end)
    """,
    "a to-be-closed variable": """
        local guard <close> = setmetatable({}, { __close = function() while true do end end })
        error('boom')
    """,
    "a to-be-closed variable in a coroutine": """
        coroutine.wrap(function()
          local guard <close> = setmetatable({}, { __close = function() while true do end end })
          while true do end
        end)()
    """,
    "a coroutine closed by the policy": """
        local co = coroutine.create(function()
          local guard <close> = setmetatable({}, { __close = function() while true do end end })
          while true do end
        end)
        while true do coroutine.resume(co) coroutine.close(co) end
    """,
}


@runaway
@pytest.mark.parametrize("body", LOOPS.values(), ids=LOOPS.keys())
def test_the_policy_cannot_catch_the_budget_error(tmp_path: Path, body: str) -> None:
    events = load(
        tmp_path,
        "kumo.on('busy', function()\n" + textwrap.dedent(body).strip("\n") + "\nend)\n",
    )
    start = time.monotonic()
    with pytest.raises(PolicyError) as info:
        events.call("busy")
    assert time.monotonic() - start < BUDGET + SLACK
    assert isinstance(info.value, RejectError)
    assert info.value.code == 451
    assert "busy" in str(info.value)
    assert info.value.location is not None
    assert info.value.location.startswith("init.lua:")


@runaway
def test_the_runtime_answers_the_next_call(tmp_path: Path) -> None:
    events = load(
        tmp_path,
        """
        local calls = 0
        kumo.on('spin', function() while true do calls = calls + 1 end end)
        kumo.on('count', function() return calls > 0 end)
        kumo.on('work', function(n)
          local t = {}
          for i = 1, n do t[#t + 1] = tostring(i) end
          return #table.concat(t, ',')
        end)
        """,
    )
    for _ in range(2):
        with pytest.raises(PolicyError) as info:
            events.call("spin")
        assert info.value.location == "init.lua:2"
        assert events.call("count") is True
        assert events.call("work", 10_000) == 48_893


@runaway
def test_a_runaway_in_init_fails_startup_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "init.lua"
    path.write_text(
        "kumo.on('init', function()\n  local n = 0\n  repeat n = n + 1 until false\nend)\n"
    )
    runtime = PolicyRuntime(path)
    with pytest.raises(PolicyError) as info:
        runtime.fire_init()
    assert info.value.location == "init.lua:3"
    assert str(info.value).startswith("init.lua:3: init: ")

    path.write_text("local x = 0\nwhile true do\n  x = x + 1\nend\n")
    with pytest.raises(PolicyError) as info:
        PolicyRuntime(path)
    assert info.value.location in ("init.lua:2", "init.lua:3")
    assert "loading init.lua" in str(info.value)


class SlowDns:
    """The zone-text resolver behind an MxCache, answering each lookup after ``delay``."""

    def __init__(self, delay: float) -> None:
        zone = "$ORIGIN test.\n$TTL 300\nslow MX 10 mx.slow.test.\n"
        self._cache = MxCache(TestResolver.from_zone_texts([zone]))
        self._delay = delay

    def peek(self, domain: str, now: float) -> MxResult | None:
        return None

    async def lookup_mx(self, domain: str, now: float) -> MxResult:
        await asyncio.sleep(self._delay)
        return await self._cache.lookup_mx(domain, now)


async def test_time_spent_waiting_for_dns_does_not_count(tmp_path: Path) -> None:
    events = load(
        tmp_path,
        """
        kumo.on('smtp_server_rcpt_to', function(addr, conn_meta)
          local hosts = {}
          for i = 1, 3 do hosts[i] = kumo.dns.lookup_mx(addr.domain).hosts[1] end
          conn_meta:set_meta('mx', table.concat(hosts, ' '))
        end)
        """,
    )
    events.runtime.waits.dns = SlowDns(BUDGET * 0.6)  # 1.8 budgets of waiting in all
    meta: dict[str, Any] = {}
    await events.smtp_server_rcpt_to(EnvelopeAddress.parse("a@slow.test"), meta)
    assert meta["mx"] == "mx.slow.test. mx.slow.test. mx.slow.test."


# -- memory ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("memory_only")
def test_a_growing_table_hits_the_memory_cap(tmp_path: Path) -> None:
    events = load(
        tmp_path,
        """
        kumo.on('hoard', function()
          local t = {}
          for i = 1, 3e7 do t[i] = i end
          return #t
        end)
        kumo.on('work', function(n)
          local t = {}
          for i = 1, n do t[i] = i end
          return #t
        end)
        """,
    )
    for _ in range(2):
        with pytest.raises(PolicyError) as info:
            events.call("hoard")
        assert_over_budget(info.value, "hoard", "init.lua:1", "memory limit of 32 MiB")
        assert "not enough memory" in str(info.value)
        assert "in the handler defined at init.lua:1" in str(info.value)
        # the garbage the runaway left is collected: room again for 1M entries (16 MiB)
        assert events.call("work", 1_000_000) == 1_000_000


def test_one_huge_allocation_hits_the_cap(tmp_path: Path) -> None:
    events = load(
        tmp_path,
        """
        kumo.on('rep', function() return #string.rep('x', 1 << 30) end)
        kumo.on('concat', function()
          local t = {}
          for i = 1, 40 do t[i] = string.rep('y', 1 << 20) end
          return #table.concat(t)
        end)
        kumo.on('caught', function()
          local ok, err = pcall(string.rep, 'x', 1 << 30)
          error(err)
        end)
        """,
    )
    for name, location in (
        ("rep", "init.lua:1"),
        ("concat", "init.lua:2"),
        ("caught", "init.lua:9"),
    ):
        with pytest.raises(PolicyError) as info:
            events.call(name)
        assert_over_budget(info.value, name, location, "memory limit")


@pytest.mark.usefixtures("memory_only")
def test_memory_filled_through_kumo_functions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lupa pushes Python values into Lua unprotected: hitting the cap there would abort the
    process or hang it, so kumoq keeps headroom and fails the call instead."""
    monkeypatch.setenv("KUMOQ_LUA_TIME_BUDGET", "60")  # memory runs out first
    events = load(
        tmp_path,
        """
        local function fill(f)
          local t = {}
          for i = 1, 1e9 do t[i] = f(i) end
        end
        kumo.on('data', function(msg) fill(function() return msg:get_data() end) end)
        kumo.on('meta', function(msg) fill(function() return msg:get_meta('big') end) end)
        kumo.on('headers', function(msg) fill(function() return { msg:get_all_headers() } end) end)
        kumo.on('json', function(msg)
          fill(function(i) return kumo.json_parse('[' .. i .. ',"x",{"a":[1,2]}]') end)
        end)
        kumo.on('sender', function(msg) fill(function() return msg:sender() end) end)
        kumo.on('ok', function(msg) return msg:get_meta('small') end)
        """,
    )
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 50) for i in range(200))
    msg = message(headers + b"\r\n" + b"x" * 200_000)
    msg.meta.update(big=["z" * 100] * 2000, small="s")
    for name in ("data", "meta", "headers", "json", "sender"):
        with pytest.raises(PolicyError) as info:
            events.call(name, msg)
        assert isinstance(info.value, RejectError), name
        assert info.value.code == 451, name
        assert "not enough memory" in str(info.value), name
        assert events.call("ok", msg) == "s"


@pytest.mark.usefixtures("memory_only")
def test_a_policy_that_keeps_its_memory_can_free_it(tmp_path: Path) -> None:
    events = load(
        tmp_path,
        """
        cache = {}
        kumo.on('hoard', function()
          for i = 1, 1e9 do cache[#cache + 1] = string.rep('y', 1000) .. i end
        end)
        kumo.on('reset', function() cache = {} end)
        kumo.on('ok', function() return 'ok' end)
        """,
    )
    with pytest.raises(PolicyError, match="not enough memory"):
        events.call("hoard")
    with pytest.raises(PolicyError, match="not enough memory"):
        events.call("ok")  # the state is full: no room to return even a short string
    assert events.call("reset") is None
    assert events.call("ok") == "ok"


# -- what stays the same --------------------------------------------------------------------


def test_handlers_under_budget_are_unaffected(tmp_path: Path) -> None:
    events = load(
        tmp_path,
        """
        kumo.on('smtp_server_message_received', function(msg, conn_meta)
          msg:set_meta('n', (msg:get_meta('n') or 0) + 1)
        end)
        kumo.on('sum', function(n)
          local x = 0
          for i = 1, n do x = x + i end
          return x
        end)
        kumo.on('gen', function()
          local gen = coroutine.wrap(function(a)
            local b = coroutine.yield(a + 1)
            return b * 2
          end)
          local co = coroutine.create(function(x) return coroutine.yield(x) + 1 end)
          local _, y = coroutine.resume(co, 10)
          local _, z = coroutine.resume(co, y)
          return { gen(1), gen(5), z, coroutine.status(co) }
        end)
        kumo.on('bad_wrap', function() local f = coroutine.wrap(42) return f end)
        kumo.on('wrap_error', function()
          local f = coroutine.wrap(function() error('inner') end)
          f()
        end)
        """,
    )
    msg = message()

    async def many() -> None:
        for _ in range(5000):
            await events.smtp_server_message_received(msg, {})

    asyncio.run(many())  # the hook on every call: each still works
    assert msg.meta["n"] == 5000
    assert events.call("sum", 1_000_000) == 500_000_500_000  # many hook firings, under budget
    assert events.call("gen") == [2, 10, 11, "dead"]
    with pytest.raises(PolicyError, match=r"^init.lua:19: bad argument #1 to 'wrap'"):
        events.call("bad_wrap")
    with pytest.raises(PolicyError, match=r"^init.lua:22: init.lua:21: inner"):
        events.call("wrap_error")


def test_the_sandbox_keeps_debug_away_and_refuses_finalizers(tmp_path: Path) -> None:
    events = load(
        tmp_path,
        """
        kumo.on('debug', function() return debug == nil and package.loaded.debug == nil end)
        kumo.on('gc', function() setmetatable({}, { __gc = function() end }) end)
        kumo.on('mt', function()
          local t = setmetatable({}, { __index = function(_, k) return k .. '!' end })
          return t.hi
        end)
        """,
    )
    assert events.call("debug") is True
    with pytest.raises(PolicyError, match=r"^init.lua:2: setmetatable: .*__gc"):
        events.call("gc")
    assert events.call("mt") == "hi!"


# -- settings -------------------------------------------------------------------------------


def test_limits_come_from_the_environment() -> None:
    from kumoq.lua.budget import LuaLimits, lua_limits

    assert lua_limits({}) == LuaLimits(time_budget=1.0, max_memory=256 * 2**20)
    assert lua_limits({"KUMOQ_LUA_TIME_BUDGET": "2.5"}).time_budget == 2.5
    assert lua_limits({"KUMOQ_LUA_TIME_BUDGET": "1500ms"}).time_budget == 1.5
    assert lua_limits({"KUMOQ_LUA_TIME_BUDGET": " "}).time_budget == 1.0
    assert lua_limits({"KUMOQ_LUA_MAX_MEMORY": "512 MiB"}).max_memory == 512 * 2**20
    off = lua_limits({"KUMOQ_LUA_TIME_BUDGET": "0", "KUMOQ_LUA_MAX_MEMORY": "0"})
    assert (off.time_budget, off.max_memory) == (0.0, 0)
    for env, name in (
        ({"KUMOQ_LUA_TIME_BUDGET": "soon"}, "KUMOQ_LUA_TIME_BUDGET"),
        ({"KUMOQ_LUA_TIME_BUDGET": "-1"}, "KUMOQ_LUA_TIME_BUDGET"),
        ({"KUMOQ_LUA_TIME_BUDGET": "inf"}, "KUMOQ_LUA_TIME_BUDGET"),
        ({"KUMOQ_LUA_MAX_MEMORY": "lots"}, "KUMOQ_LUA_MAX_MEMORY"),
        ({"KUMOQ_LUA_MAX_MEMORY": "1 MiB"}, "KUMOQ_LUA_MAX_MEMORY"),
    ):
        with pytest.raises(ConfigError, match=name):
            lua_limits(env)


def test_budgets_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUMOQ_LUA_TIME_BUDGET", "0")
    monkeypatch.setenv("KUMOQ_LUA_MAX_MEMORY", "0")
    events = load(
        tmp_path,
        """
        kumo.on('slow', function()
          local stop = os.clock() + 0.4
          local t = {}
          while os.clock() < stop do t[#t % 1000 + 1] = {} end
          return coroutine.wrap(function() return 'done' end)()
        end)
        kumo.on('big', function() return #string.rep('x', 48 << 20) end)
        """,
    )
    assert events.call("slow") == "done"  # longer than BUDGET
    assert events.call("big") == 48 << 20  # more than 32 MiB
