"""kumoq.header_values: RFC 5322 address lists and RFC 8601 Authentication-Results values."""

from __future__ import annotations

import pytest

from kumoq.header_values import (
    Group,
    Mailbox,
    encode_address_list,
    encode_authentication_results,
    mailbox_from_data,
    parse_address_list,
)
from kumoq.mime_headers import MimeError


@pytest.mark.parametrize(
    ("text", "entries"),
    [
        ("a@example.com", [Mailbox(None, "a", "example.com")]),
        (
            "John Smith <john.smith@example.com>",
            [Mailbox("John Smith", "john.smith", "example.com")],
        ),
        (
            'a@b.example, "Doe, Jane" <jane@c.example> (work)',
            [Mailbox(None, "a", "b.example"), Mailbox("Doe, Jane", "jane", "c.example")],
        ),
        ("=?utf-8?q?J=C3=B6rg?= <j@x.de>", [Mailbox("Jörg", "j", "x.de")]),
        ('"info@"@example.com', [Mailbox(None, "info@", "example.com")]),
        ("<@relay.example:user@example.org>", [Mailbox(None, "user", "example.org")]),
        ("undisclosed-recipients:;", [Group("undisclosed-recipients")]),
        (
            "The A Team: Bodie <bodie@example.com>, doyle@example.com;, x@y.example",
            [
                Group(
                    "The A Team",
                    (
                        Mailbox("Bodie", "bodie", "example.com"),
                        Mailbox(None, "doyle", "example.com"),
                    ),
                ),
                Mailbox(None, "x", "y.example"),
            ],
        ),
        ("a@[192.0.2.1]", [Mailbox(None, "a", "[192.0.2.1]")]),
    ],
)
def test_parse_address_list(text: str, entries: list[Mailbox | Group]) -> None:
    assert parse_address_list(text) == entries


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "no address"),
        ("nobody", "expected local@domain"),
        ("a@", "expected local@domain"),
        ("<a@b.example", "missing '>'"),
        ("a@b (unclosed", "unclosed comment"),
        ("a@b.example c@d.example", "expected local@domain"),
    ],
)
def test_what_is_not_an_address_list(text: str, match: str) -> None:
    with pytest.raises(MimeError, match=match):
        parse_address_list(text)


def test_email_quotes_a_local_part_that_needs_it() -> None:
    assert Mailbox(None, "info@", "example.com").email == '"info@"@example.com'
    assert Mailbox(None, "first.last", "example.com").email == "first.last@example.com"
    assert Mailbox(None, 'a "b"', "x").email == '"a \\"b\\""@x'


def test_encode_address_list_round_trips() -> None:
    text = 'Team: "Doe, J" <j@x.example>, k@x.example;, =?utf-8?q?J=C3=B6rg?= <j@y.de>'
    entries = parse_address_list(text)
    encoded = encode_address_list(entries, "To")
    assert encoded == (
        'Team: "Doe, J" <j@x.example>, k@x.example;,\r\n\t=?utf-8?b?SsO2cmc=?= <j@y.de>'
    )
    assert parse_address_list(encoded) == entries
    assert encode_address_list([Group("empty")]) == "empty:;"


def test_mailbox_from_lua_data() -> None:
    data = {"name": "Ann", "address": {"local_part": "ann", "domain": "example.com"}}
    assert mailbox_from_data(data) == Mailbox("Ann", "ann", "example.com")
    assert Mailbox("Ann", "ann", "example.com").to_data() == data
    with pytest.raises(MimeError, match="needs an address table"):
        mailbox_from_data({"name": "x"})


def test_authentication_results_as_kumomta_writes_them() -> None:
    value = encode_authentication_results(
        "mx.example.com",
        [
            {
                "method": "dkim",
                "result": "pass",
                "props": {
                    "header.s": "pf2023",
                    "header.d": "github.com",
                    "header.i": "@github.com",
                },
            },
            {"method": "spf", "method_version": 1, "result": "fail", "reason": "not permitted"},
        ],
    )
    assert value == (
        "mx.example.com;\r\n\tdkim=pass\r\n\theader.d=github.com\r\n\theader.i=@github.com"
        '\r\n\theader.s=pf2023;\r\n\tspf/1=fail reason="not permitted"'
    )
    assert encode_authentication_results("mx", []) == "mx; none"
    with pytest.raises(MimeError, match="unknown authentication result field"):
        encode_authentication_results("mx", [{"method": "x", "result": "y", "extra": 1}])
    with pytest.raises(MimeError, match="string method and result"):
        encode_authentication_results("mx", [{"method": "x"}])
