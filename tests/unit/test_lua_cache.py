"""kumo.memoize (a TTL and LRU cache keyed by the arguments) and kumo.domain_map (wildcard
domain lookups); both hand out copy-on-write views, so a caller's changes never reach them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from kumoq.clock import FakeClock
from kumoq.errors import PolicyError
from kumoq.lua import PolicyEvents
from tests.unit.lua_kumo_support import call, load

COUNTING = """
calls = 0
function load_data(n, ...)
  calls = calls + 1
  return { n = n, calls = calls, list = { 1, 2, 3 }, nested = { deep = { x = 1 } } }, ...
end
cached = kumo.memoize(load_data, { name = 'data', ttl = '{ttl}', capacity = {capacity} })
kumo.on('get', function(...) return { cached(...).calls, calls } end)
"""


def counting(
    tmp_path: Path, ttl: str = "5 minutes", capacity: int = 10, clock: FakeClock | None = None
) -> Callable[..., tuple[int, int]]:
    rt = load(tmp_path, COUNTING.replace("{ttl}", ttl).replace("{capacity}", str(capacity)),
              clock=clock)  # fmt: skip
    events = PolicyEvents(rt)

    def get(*args: object) -> tuple[int, int]:
        value_calls, calls = events.call("get", *args)
        return int(value_calls), int(calls)

    return get


def test_a_hit_returns_the_cached_value(tmp_path):
    get = counting(tmp_path)
    assert get(1) == (1, 1)
    assert get(1) == (1, 1)
    assert get(2) == (2, 2)
    assert get(1) == (1, 2)


def test_entries_expire_after_the_ttl(tmp_path):
    clock = FakeClock()
    get = counting(tmp_path, ttl="10 seconds", clock=clock)
    assert get(1) == (1, 1)
    clock.advance(9.9)
    assert get(1) == (1, 1)
    clock.advance(0.2)
    assert get(1) == (2, 2)


def test_the_least_recently_used_entry_is_dropped_at_capacity(tmp_path):
    get = counting(tmp_path, capacity=2)
    get(1)
    get(2)
    get(1)  # 2 is now the least recently used
    get(3)
    assert get(1)[0] == 1
    assert get(2) == (4, 4)


def test_capacity_zero_caches_nothing(tmp_path):
    get = counting(tmp_path, capacity=0)
    assert get(1) == (1, 1)
    assert get(1) == (2, 2)


def test_the_key_is_the_arguments_with_their_types(tmp_path):
    got = call(
        tmp_path,
        """
        local n = 0
        local f = kumo.memoize(function(...) n = n + 1 return n end,
          { name = 'k', ttl = 60, capacity = 100 })
        return {
          f(1), f(1), f(1.0), f('1'), f(), f(nil), f(true),
          f({ a = 1, b = { 2, 3 } }), f({ b = { 2, 3 }, a = 1 }), f({ a = 1 }),
          f(1, 2), f(1, 2),
        }
        """,
    )
    assert got == [1, 1, 2, 3, 4, 5, 6, 7, 7, 8, 9, 9]


def test_results_are_views_a_caller_cannot_change(tmp_path):
    got = call(
        tmp_path,
        """
        local f = kumo.memoize(function()
          return { name = 'x', list = { 1, 2 }, nested = { deep = { x = 1 } } }
        end, { name = 'v', ttl = '1m', capacity = 1 })
        local a = f()
        a.name = 'changed'
        a.nested.deep.x = 2
        a.added = true
        table.insert(a.list, 3)
        a.list[1] = nil
        local keys = {}
        for k in pairs(a) do keys[#keys + 1] = k end
        table.sort(keys)
        local b = f()
        return {
          a = { a.name, a.nested.deep.x, a.added, #a.list, kumo.json_encode(a.list) },
          keys = keys,
          b = kumo.json_encode(b),
          type = type(b), next = next(b) == nil,
        }
        """,
    )
    assert got["a"] == ["changed", 2, True, 3, '{"2":2,"3":3}']
    assert got["keys"] == ["added", "list", "name", "nested"]
    assert json.loads(got["b"]) == {"list": [1, 2], "name": "x", "nested": {"deep": {"x": 1}}}
    assert got["type"] == "table"
    assert got["next"] is True  # a view has no fields of its own


def test_multiple_results_and_nil_are_cached(tmp_path):
    got = call(
        tmp_path,
        """
        local n = 0
        local f = kumo.memoize(function() n = n + 1 if n == 1 then return nil end return 1 end,
          { name = 'nil', ttl = 60, capacity = 1 })
        local g = kumo.memoize(function() return 'a', 'b' end,
          { name = 'multi', ttl = 60, capacity = 1 })
        local x, y = g()
        return { f() == nil, f() == nil, n, x, y }
        """,
    )
    assert got == [True, True, 1, "a", "b"]


def test_errors_are_not_cached(tmp_path):
    got = call(
        tmp_path,
        """
        local n = 0
        local f = kumo.memoize(function()
          n = n + 1
          if n == 1 then error('flaky') end
          return n
        end, { name = 'err', ttl = 60, capacity = 1 })
        local ok, e = pcall(f)
        return { ok, e:match 'flaky' ~= nil, f(), f() }
        """,
    )
    assert got == [False, True, 2, 2]


def test_a_name_shares_its_cache_and_changed_parameters_replace_it(tmp_path):
    got = call(
        tmp_path,
        """
        local p = { name = 'shared', ttl = 60, capacity = 5 }
        local a = kumo.memoize(function() return 'a' end, p)
        local b = kumo.memoize(function() return 'b' end, p)
        local first = { a(), b() }
        local c = kumo.memoize(function() return 'c' end,
          { name = 'shared', ttl = 60, capacity = 6 })
        return { first[1], first[2], c(), a() }
        """,
    )
    assert got == ["a", "a", "c", "c"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("{ ttl = 60, capacity = 1 }", "memoize: missing required key 'name'"),
        ("{ name = 'x', capacity = 1 }", "memoize: missing required key 'ttl'"),
        ("{ name = 'x', ttl = 60 }", "memoize: missing required key 'capacity'"),
        (
            "{ name = 'x', ttl = 60, capacity = 1, size = 1 }",
            "memoize: unknown key 'size'; allowed keys are: allow_stale_reads, capacity",
        ),
        ("{ name = 'x', ttl = 'soon', capacity = 1 }", "memoize: invalid duration 'soon'"),
        ("{ name = 'x', ttl = 60, capacity = -1 }", "memoize: capacity must be an integer >= 0"),
        (
            "{ name = 'x', ttl = 60, capacity = 1, invalidate_with_epoch = 'yes' }",
            "invalidate_with_epoch must be a boolean",
        ),
        ("nil", "memoize: expected a parameter table, got nil"),
    ],
)
def test_memoize_parameters_are_checked(tmp_path, params, message):
    with pytest.raises(PolicyError, match=message) as info:
        load(tmp_path, f"local x = 1\nlocal f = kumo.memoize(print, {params})\n")
    assert info.value.location == "init.lua:2"


def test_all_documented_parameters_are_accepted(tmp_path):
    load(
        tmp_path,
        """
        local f = kumo.memoize(function() return 1 end, {
          name = 'all', ttl = '5 minutes', capacity = 10, invalidate_with_epoch = true,
          populate_timeout = '2s', retry_on_populate_timeout = false, allow_stale_reads = false,
        })
        assert(f() == 1)
        """,
    )


def test_arguments_that_cannot_be_a_key(tmp_path):
    with pytest.raises(
        PolicyError, match="memoize: a function value cannot be part of a cache key"
    ):
        call(
            tmp_path,
            "local f = kumo.memoize(print, { name = 'x', ttl = 1, capacity = 1 })\nf(print)",
        )


# -- domain_map ----------------------------------------------------------------------------------


def test_the_documented_domain_map_examples(tmp_path):
    load(
        tmp_path,
        """
        local dmap = kumo.domain_map.new()
        dmap['foo'] = 'bar'
        assert(dmap['foo'] == 'bar')
        assert(dmap['not.set'] == nil)

        dmap = kumo.domain_map.new()
        dmap['*.example.com'] = 'wildcard'
        assert(dmap['example.com'] == nil)
        assert(dmap['foo.example.com'] == 'wildcard')
        dmap['explicit.example.com'] = 'explicit'
        assert(dmap['explicit.example.com'] == 'explicit')

        dmap = kumo.domain_map.new {
          ['*.woot.com'] = 123,
          ['example.com'] = 24,
        }
        dmap['*.example.com'] = 42
        assert(dmap['lemon.example.com'] == 42)
        assert(dmap['example.com'] == 24)
        assert(dmap['woot.com'] == nil)
        assert(dmap['aa.woot.com'] == 123)
        """,
    )


def test_lookups_follow_kumomta_rules(tmp_path):
    got = call(
        tmp_path,
        """
        local map = kumo.domain_map.new {
          ['*.example.com'] = 42,
          ['example.com'] = 24,
          ['omg.wtf.woot.example.com'] = 128,
        }
        local out = {}
        for _, name in ipairs { 'foo.com', 'example.com', 'lemon.example.com',
          'lemon.cake.example.com', 'woot.example.com', 'wtf.woot.example.com',
          'omg.wtf.woot.example.com', 'EXAMPLE.com' } do
          out[#out + 1] = map[name] or false
        end
        local entries = {}
        for k, v in pairs(map) do entries[k] = v end
        return { out = out, entries = entries, json = kumo.json_encode(map) }
        """,
    )
    # a node made on the way to a longer name hides the wildcard, as in KumoMTA
    assert got["out"] == [False, 24, 42, 42, False, False, 128, False]
    expected = {"*.example.com": 42, "example.com": 24, "omg.wtf.woot.example.com": 128}
    assert got["entries"] == expected
    assert json.loads(got["json"]) == expected


def test_looked_up_tables_are_copies_on_write(tmp_path):
    got = call(
        tmp_path,
        """
        local map = kumo.domain_map.new {
          ['*.example.com'] = { relay_to = true, relay_from_authz = { 'john' } },
        }
        local first = map['a.example.com']
        first.relay_from_authz = nil
        local again = map['a.example.com']
        return { first.relay_from_authz == nil, again.relay_from_authz[1], again.relay_to }
        """,
    )
    assert got == [True, "john", True]


def test_a_memoized_domain_map(tmp_path):
    got = call(
        tmp_path,
        """
        local n = 0
        local load = kumo.memoize(function()
          n = n + 1
          return { queues = kumo.domain_map.new { ['*.example.com'] = { max_age = '1h' } } }
        end, { name = 'dm', ttl = 60, capacity = 1 })
        local data = load()
        data.queues['*.example.com'] = { max_age = '2h' }
        local changed = data.queues['x.example.com'].max_age
        local fresh = load().queues['x.example.com'].max_age
        return { n, changed, fresh }
        """,
    )
    assert got == [1, "2h", "1h"]


def test_domain_map_errors(tmp_path):
    with pytest.raises(PolicyError, match=r"kumo.domain_map.new: keys are domain names"):
        call(tmp_path, "local x = 1\nlocal m = kumo.domain_map.new { 'a' }")
    with pytest.raises(PolicyError, match=r"kumo.domain_map.new: expected a table"):
        call(tmp_path, "local x = 1\nlocal m = kumo.domain_map.new 'a'")


VIEWS_LEAVING_LUA = """
cached = kumo.memoize(function() return { tier = 'gold', limits = { rate = '10/s' } } end,
                      { name = 'tiers', ttl = '1 minute', capacity = 4 })
domains = kumo.domain_map.new({ ['example.com'] = { pool = 'a' } })
kumo.on('get', function() return cached() end)
kumo.on('get_mapped', function() return domains['example.com'] end)
kumo.on('tag', function(msg) msg:set_meta('tier', cached()) end)
"""


def test_views_returned_by_a_handler_or_set_as_meta_arrive_whole(tmp_path):
    """A memoized view or a domain-map entry leaving Lua (a handler's result, msg:set_meta)
    is copied plain on the way, not read as an empty table."""
    from kumoq.message import EnvelopeAddress, Message

    events = PolicyEvents(load(tmp_path, VIEWS_LEAVING_LUA))
    assert events.call("get") == {"tier": "gold", "limits": {"rate": "10/s"}}
    assert events.call("get_mapped") == {"pool": "a"}
    msg = Message(id="0" * 32, sender=EnvelopeAddress.parse("s@example.com"),
                  recipients=[EnvelopeAddress.parse("r@example.com")])  # fmt: skip
    events.call("tag", msg)
    assert msg.meta["tier"] == {"tier": "gold", "limits": {"rate": "10/s"}}
