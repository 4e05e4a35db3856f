"""factor_names and MailExchanger (reference §1.7)."""

from __future__ import annotations

import dataclasses

import pytest

from kumoq.dns.site_name import MailExchanger, factor_names, fully_qualified, normalize_host

GMAIL = [
    (5, "gmail-smtp-in.l.google.com."),
    (10, "alt1.gmail-smtp-in.l.google.com."),
    (20, "alt2.gmail-smtp-in.l.google.com."),
    (30, "alt3.gmail-smtp-in.l.google.com."),
    (40, "alt4.gmail-smtp-in.l.google.com."),
]


@pytest.mark.parametrize(
    ("hosts", "expected"),
    [
        # The three examples of §1.7.
        (
            ["mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net", "mta7.am0.yahoodns.net"],
            "(mta5|mta6|mta7).am0.yahoodns.net",
        ),
        ([host for _, host in GMAIL], "(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com"),
        (
            [
                "mta5.am0.yahoodns.net:123",
                "mta6.am0.yahoodns.net:456",
                "mta7.am0.yahoodns.net:123",
            ],
            "(mta5|mta6|mta7).am0.yahoodns.(net:123|net:456)",
        ),
        # More.
        (["mx.example.com"], "mx.example.com"),
        (["MX.Example.COM."], "mx.example.com"),
        (["mx.example.com", "mx.example.com"], "mx.example.com"),
        (["a.example.com", "example.com"], "a?.example.com"),
        (["example.com", "a.b.example.com"], "a?.b?.example.com"),
        (["a.x.com", "b.y.org"], "(a|b).(x|y).(com|org)"),
        (["b.example.com", "a.example.com"], "(b|a).example.com"),  # first-seen order
        (["a.example.com", "x.a.example.com", "y.b.example.com"], "(x|y)?.(a|b).example.com"),
        (["localhost"], "localhost"),
        ([], ""),
    ],
)
def test_factor_names(hosts: list[str], expected: str) -> None:
    assert factor_names(hosts) == expected


def test_factor_names_is_not_sorted_by_itself() -> None:
    # Ordering is the caller's job (MailExchanger sorts); factor_names keeps first-seen order.
    assert factor_names(["z.e.com", "a.e.com"]) != factor_names(["a.e.com", "z.e.com"])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("MX.Example.com.", "mx.example.com"),
        ("mx.example.com", "mx.example.com"),
        ("mx.example.com.:2525", "mx.example.com:2525"),
        ("mx.example.com:2525", "mx.example.com:2525"),
        (".", "."),
    ],
)
def test_normalize_host(name: str, expected: str) -> None:
    assert normalize_host(name) == expected


def test_gmail_exchanger_orders_by_preference() -> None:
    mx = MailExchanger.from_records("Gmail.com", list(reversed(GMAIL)))
    assert mx.domain == "gmail.com"
    assert list(mx.by_pref) == [5, 10, 20, 30, 40]
    assert mx.hosts[0] == "gmail-smtp-in.l.google.com"
    assert mx.hosts[-1] == "alt4.gmail-smtp-in.l.google.com"
    assert mx.site_name == "(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com"
    assert not mx.is_null_mx
    assert not mx.is_domain_literal
    assert not mx.is_implicit_mx
    assert not mx.is_secure


def test_hosts_sorted_alphabetically_within_a_preference_and_lowercased() -> None:
    mx = MailExchanger.from_records(
        "yahoo.com",
        [
            (1, "MTA7.am0.yahoodns.net."),
            (1, "mta5.am0.yahoodns.net."),
            (1, "mta6.am0.yahoodns.net."),
            (1, "mta5.am0.yahoodns.net."),  # duplicate
            (0, "primary.yahoodns.net."),
        ],
    )
    assert mx.by_pref == {
        0: ("primary.yahoodns.net",),
        1: ("mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net", "mta7.am0.yahoodns.net"),
    }
    assert mx.hosts == (
        "primary.yahoodns.net",
        "mta5.am0.yahoodns.net",
        "mta6.am0.yahoodns.net",
        "mta7.am0.yahoodns.net",
    )
    assert mx.site_name == "(mta5|mta6|mta7)?.(primary|am0).yahoodns.net"


def test_yahoo_site_name() -> None:
    mx = MailExchanger.from_records(
        "yahoo.com",
        [
            (1, "mta6.am0.yahoodns.net."),
            (1, "mta7.am0.yahoodns.net."),
            (1, "mta5.am0.yahoodns.net."),
        ],
    )
    assert mx.site_name == "(mta5|mta6|mta7).am0.yahoodns.net"


def test_implicit_mx_is_the_domain_at_preference_1() -> None:
    mx = MailExchanger.from_records("Example.COM.", [])
    assert mx.by_pref == {1: ("example.com",)}
    assert mx.hosts == ("example.com",)
    assert mx.site_name == "example.com"
    assert mx.is_implicit_mx
    assert not mx.is_null_mx


def test_null_mx() -> None:
    mx = MailExchanger.from_records("nomail.example", [(0, ".")])
    assert mx.is_null_mx
    assert mx.hosts == (".",)
    assert mx.site_name == ""


def test_dot_among_other_mx_is_not_null_mx() -> None:
    mx = MailExchanger.from_records("odd.example", [(0, "."), (10, "mx.odd.example.")])
    assert not mx.is_null_mx


@pytest.mark.parametrize(
    ("domain", "literal"),
    [("[1.2.3.4]", "1.2.3.4"), ("[IPv6:2001:db8::1]", "2001:db8::1"), ("[127.0.0.1]", "127.0.0.1")],
)
def test_domain_literal(domain: str, literal: str) -> None:
    mx = MailExchanger.from_records(domain, [(10, "ignored.example.")])
    assert mx.is_domain_literal
    assert mx.site_name == literal
    assert mx.hosts == (literal,)
    assert mx.by_pref == {1: (literal,)}


def test_exchanger_is_frozen_and_hashable() -> None:
    mx = MailExchanger.from_records("example.com", [(10, "mx.example.com.")])
    with pytest.raises(dataclasses.FrozenInstanceError):
        mx.site_name = "x"  # type: ignore[misc]
    assert hash(mx) == hash(MailExchanger.from_records("example.com", [(10, "mx.example.com")]))


def test_to_plain_for_lua() -> None:
    """KumoMTA's MailExchanger: host names with the trailing dot, the site name without."""
    mx = MailExchanger.from_records("example.com", [(20, "b.example.com."), (10, "a.example.com")])
    assert mx.to_plain() == {
        "domain_name": "example.com.",
        "site_name": "(a|b).example.com",
        "hosts": ["a.example.com.", "b.example.com."],
        "by_pref": {10: ["a.example.com."], 20: ["b.example.com."]},
        "is_secure": False,
        "is_domain_literal": False,
        "is_mx": True,
    }


def test_to_plain_of_a_literal_and_of_a_null_mx() -> None:
    literal = MailExchanger.from_records("[192.0.2.1]", []).to_plain()
    assert (literal["domain_name"], literal["hosts"]) == ("[192.0.2.1]", ["192.0.2.1"])
    null = MailExchanger.from_records("example.com", [(0, ".")]).to_plain()
    assert (null["domain_name"], null["hosts"], null["site_name"]) == ("example.com.", ["."], "")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mx.example.com", "mx.example.com."),
        ("mx.example.com.", "mx.example.com."),
        ("a.b.net:2525", "a.b.net.:2525"),
        (".", "."),
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8::1", "2001:db8::1"),
    ],
)
def test_fully_qualified(name: str, expected: str) -> None:
    assert fully_qualified(name) == expected
