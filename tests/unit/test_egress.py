"""Weighted round robin source selection (§1.6c) and ready queue / site names (§1.7)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kumoq.config.egress import UNSPECIFIED_POOL, EgressPool
from kumoq.config.queue import CustomLuaProtocol, MaildirProtocol, NullProtocol, SmtpProtocol
from kumoq.egress.names import (
    mx_list_label,
    mx_list_site_name,
    protocol_name,
    ready_queue_name,
    static_site_name,
)
from kumoq.egress.round_robin import WeightedRoundRobin
from kumoq.errors import ConfigError


def picks(wrr: WeightedRoundRobin, n: int, exclude: frozenset[str] = frozenset()) -> list[str]:
    out = []
    for _ in range(n):
        name = wrr.next(exclude)
        assert name is not None
        out.append(name)
    return out


def lvs_reference(weights: list[tuple[str, int]], n: int) -> list[str]:
    """The LVS algorithm written literally, one index step at a time."""
    ws = [w for _, w in weights]
    positive = [w for w in ws if w > 0]
    from math import gcd

    g = gcd(*positive)
    mx = max(positive)
    i, cw = -1, 0
    out: list[str] = []
    while len(out) < n:
        i = (i + 1) % len(ws)
        if i == 0:
            cw -= g
            if cw <= 0:
                cw = mx
        if ws[i] >= cw and ws[i] > 0:
            out.append(weights[i][0])
    return out


# --- weighted round robin ------------------------------------------------------------------


def test_wrr_sequence_matches_lvs():
    wrr = WeightedRoundRobin([("a", 1), ("b", 2), ("c", 3)])
    # Levels 3, 2, 1: c | b c | a b c
    assert picks(wrr, 6) == ["c", "b", "c", "a", "b", "c"]
    assert picks(wrr, 6) == ["c", "b", "c", "a", "b", "c"]


def test_wrr_exact_proportion_over_full_cycles():
    wrr = WeightedRoundRobin([("a", 1), ("b", 2), ("c", 3)])
    assert Counter(picks(wrr, 6 * 50)) == {"a": 50, "b": 100, "c": 150}


def test_wrr_gcd_levels():
    wrr = WeightedRoundRobin([("a", 2), ("b", 4)])
    # gcd 2: levels 4, 2 -> b | a b
    assert picks(wrr, 6) == ["b", "a", "b", "b", "a", "b"]


def test_wrr_weight_zero_never_chosen():
    wrr = WeightedRoundRobin([("a", 0), ("b", 1)])
    assert picks(wrr, 5) == ["b"] * 5
    assert wrr.candidates() == ("b",)


def test_wrr_all_zero_or_empty_gives_none():
    assert WeightedRoundRobin([("a", 0), ("b", 0)]).next() is None
    assert WeightedRoundRobin([]).next() is None


def test_wrr_negative_weight_rejected():
    with pytest.raises(ConfigError, match="at least 0"):
        WeightedRoundRobin([("a", -1)])


def test_wrr_exclusion_falls_back_to_others():
    wrr = WeightedRoundRobin([("a", 1), ("b", 2), ("c", 3)])
    assert picks(wrr, 6, frozenset({"c"})) == ["b", "a", "b"] * 2
    assert wrr.next(frozenset({"a", "b", "c"})) is None
    assert wrr.next(frozenset({"a", "b"})) == "c"


def test_wrr_exclusion_is_per_call():
    wrr = WeightedRoundRobin([("a", 1), ("b", 1)])
    assert wrr.next() == "a"
    assert wrr.next(frozenset({"b"})) == "a"
    assert wrr.next() == "b"
    assert wrr.next() == "a"


def test_wrr_exclusion_equals_lvs_over_remaining_with_big_weights():
    # Skipping levels arithmetically must give what step-by-step LVS gives, and be quick.
    wrr = WeightedRoundRobin([("a", 1), ("b", 1_000_000)])
    assert picks(wrr, 3, frozenset({"b"})) == ["a", "a", "a"]
    assert wrr.next() == "b"


def test_wrr_from_pool_and_entries():
    wrr = WeightedRoundRobin.from_pool(
        EgressPool.from_mapping({"name": "p", "entries": [{"name": "x", "weight": 2}]})
    )
    assert wrr.entries == (("x", 2),)
    assert WeightedRoundRobin.from_pool(UNSPECIFIED_POOL).next() == "unspecified"
    assert WeightedRoundRobin.from_pool(EgressPool(name="empty")).next() is None


weights_st = st.lists(st.integers(min_value=0, max_value=12), min_size=1, max_size=6).filter(
    lambda ws: any(ws)
)


@given(weights_st, st.integers(min_value=1, max_value=3))
def test_wrr_property_exact_counts(weights, k):
    entries = [(f"s{i}", w) for i, w in enumerate(weights)]
    wrr = WeightedRoundRobin(entries)
    counts = Counter(picks(wrr, k * sum(weights)))
    assert counts == {name: k * w for name, w in entries if w > 0}


@given(weights_st)
def test_wrr_property_matches_literal_lvs(weights):
    entries = [(f"s{i}", w) for i, w in enumerate(weights)]
    n = 2 * sum(weights) + 3
    assert picks(WeightedRoundRobin(entries), n) == lvs_reference(entries, n)


@given(weights_st, st.sets(st.integers(min_value=0, max_value=5)))
def test_wrr_property_exclusion_never_returns_excluded(weights, excluded_idx):
    entries = [(f"s{i}", w) for i, w in enumerate(weights)]
    exclude = frozenset(f"s{i}" for i in excluded_idx)
    eligible = {n for n, w in entries if w > 0 and n not in exclude}
    wrr = WeightedRoundRobin(entries)
    for _ in range(sum(weights) + 2):
        got = wrr.next(exclude)
        if not eligible:
            assert got is None
        else:
            assert got in eligible


# --- names ---------------------------------------------------------------------------------


def test_ready_queue_names():
    assert (
        ready_queue_name("unspecified", "(alt1|alt2)?.gmail-smtp-in.l.google.com", "smtp_client")
        == "unspecified->(alt1|alt2)?.gmail-smtp-in.l.google.com@smtp_client"
    )
    assert ready_queue_name("ip-1", "example.com", "lua:make.webhook") == (
        "ip-1->example.com@lua:make.webhook"
    )


def test_protocol_names():
    assert protocol_name(SmtpProtocol()) == "smtp_client"
    assert protocol_name(CustomLuaProtocol(constructor="make.hook")) == "lua:make.hook"
    assert protocol_name(MaildirProtocol(maildir_path="/m")) == "maildir:/m"
    assert protocol_name(NullProtocol()) == "null"


def test_mx_list_site_name_labels():
    entries: list[str | dict[str, str]] = [
        "mx1.example.com",
        "[10.0.0.1]",
        "mx2.example.com:2525",
        {"name": "mx3.example.com", "addr": "10.0.0.3"},
        {"name": "v6.example.com", "addr": "2001:DB8::0001"},
    ]
    assert mx_list_site_name(entries) == (
        "mx_list:mx1.example.com,[10.0.0.1],mx2.example.com:2525,10.0.0.3,2001:db8::1"
    )
    assert mx_list_label({"name": "n", "addr": "not-an-ip"}) == "not-an-ip"


def test_static_site_name():
    assert static_site_name(SmtpProtocol(), "example.com") is None
    assert static_site_name(SmtpProtocol(mx_list=("127.0.0.1",)), "x.com") == "mx_list:127.0.0.1"
    assert static_site_name(CustomLuaProtocol(constructor="c"), "x.com") == "x.com"
