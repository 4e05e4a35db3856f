"""The content msg: methods seen from Lua: address headers, import_headers,
check_fix_conformance, append_text_*, add_authentication_results, parse_rfc3464, the spool
hints and the DKIM/ARC stubs. Each runs through a real lupa runtime."""

from __future__ import annotations

import json
import textwrap

import pytest

from kumoq.clock import FakeClock
from kumoq.errors import PolicyError
from kumoq.lua import PolicyEvents, PolicyRuntime
from kumoq.message import EnvelopeAddress, Message, new_spool_id
from kumoq.mime import MimePart
from tests.unit.test_dsn import REPORT

NOW = 1_700_000_000.0
DATA = (
    b'From: "Doe, Jane" <jane@example.com>\r\n'
    b"To: a@example.net, Team: b@example.net, c@example.net;\r\n"
    b"Cc: =?utf-8?q?J=C3=B6rg?= <j@example.de>\r\n"
    b"Subject: hello\r\n"
    b"X-Campaign-Id: spring\r\n"
    b"X-Tenant: blue\r\n"
    b"Received: one\r\n"
    b"Received: two\r\n"
    b"\r\n"
    b"Hello\r\n"
)


def make(data: bytes = DATA, **kw) -> Message:
    return Message(
        id=new_spool_id(NOW),
        sender=EnvelopeAddress.parse("s@example.org"),
        recipients=[EnvelopeAddress.parse("r@example.net")],
        data=data,
        **kw,
    )


@pytest.fixture
def run(tmp_path):
    """run(body, msg) executes ``body`` in Lua with ``msg`` bound; returns its result."""

    def runner(body, *args):
        path = tmp_path / "init.lua"
        path.write_text(f"kumo.on('t', function(msg, extra)\n{textwrap.dedent(body)}\nend)\n")
        return PolicyEvents(PolicyRuntime(path, clock=FakeClock(NOW))).call("t", *args)

    return runner


def test_from_header_is_a_single_address(run) -> None:
    out = run(
        "local f = msg:from_header()\n"
        "return {f.user, f.domain, f.name, f.email, tostring(f), #f.list, tostring(f.list[1])}",
        make(),
    )
    assert out == [
        "jane",
        "example.com",
        "Doe, Jane",
        "jane@example.com",
        '[{"Address":{"name":"Doe, Jane","address":"jane@example.com"}}]',
        1,
        '{"name":"Doe, Jane","address":"jane@example.com"}',
    ]


def test_to_header_with_a_group_lists_every_address_and_refuses_single_fields(run) -> None:
    out = run(
        """
        local t = msg:to_header()
        local emails = {}
        for _, a in ipairs(t.list) do emails[#emails + 1] = a.email end
        local ok, err = pcall(function() return t.user end)
        return {emails, err, tostring(t)}
        """,
        make(),
    )
    assert out[0] == ["a@example.net", "b@example.net", "c@example.net"]
    assert out[1].endswith("addressheader.user: is not a simple single address")
    assert json.loads(out[2]) == [
        {"Address": {"name": None, "address": "a@example.net"}},
        {
            "Group": {
                "name": "Team",
                "addresses": [
                    {"name": None, "address": "b@example.net"},
                    {"name": None, "address": "c@example.net"},
                ],
            }
        },
    ]


def test_get_address_header_decodes_names_and_is_nil_when_absent(run) -> None:
    out = run(
        "local c = msg:get_address_header('cc')\n"
        "return {c.name, c.email, msg:get_address_header('Reply-To') == nil}",
        make(),
    )
    assert out == ["Jörg", "j@example.de", True]


def test_an_address_header_that_does_not_parse_is_an_error(run) -> None:
    with pytest.raises(PolicyError, match=r"init\.lua:2: from_header: invalid address list"):
        run("local f = msg:from_header()", make(b"From: nobody\r\n\r\nx\r\n"))


def test_import_headers_specs(run) -> None:
    msg = make()
    run(
        """
        msg:import_headers {
          { name = 'X-Campaign-Id', target = 'campaign' },
          { name = 'X-*', transform = 'camel_case', remove = true },
          { name = 'Received', match = 'all' },
          { name = 'received', match = 'first', target = 'never' },
          { name = 'Subject', transform = 'pascal_case' },
          { name = 'X-Nothing' },
        }
        """,
        msg,
    )
    assert msg.meta == {
        "campaign": "spring",
        "xTenant": "blue",
        "received": ["one", "two"],
        "Subject": "hello",
    }
    assert msg.data is not None
    assert b"X-Campaign-Id" in msg.data  # matched by the exact spec, which does not remove
    assert b"X-Tenant" not in msg.data


@pytest.mark.parametrize(
    ("specs", "match"),
    [
        ("{ { name = '*' } }", "bare `\\*` patterns are not supported"),
        ("{ { name = 'X-*-Id' } }", "only a single trailing"),
        ("{ { name = 'X-*', target = 'x' } }", "`target` cannot be used with wildcard"),
        ("{ { name = 'A', match = 'some' } }", "match must be one of"),
        ("{ { name = 'A', color = 'red' } }", "unknown spec field"),
        ("'X-*'", "expected an array of spec tables"),
    ],
)
def test_import_headers_errors(run, specs: str, match: str) -> None:
    with pytest.raises(PolicyError, match=match):
        run(f"msg:import_headers({specs})", make())


def test_check_fix_conformance_returns_the_problem_or_fixes(run) -> None:
    msg = make(b"Subject: x\r\nX-Long: " + b"y" * 90 + b"\r\n\r\nhi\r\n")
    out = run(
        """
        local failed = msg:check_fix_conformance('LINE_TOO_LONG', '')
        local fixed = msg:check_fix_conformance(
          'MISSING_COLON_VALUE',
          'MISSING_DATE_HEADER|MISSING_MESSAGE_ID_HEADER'
        )
        return {failed, fixed == nil}
        """,
        msg,
    )
    assert out == ["Message has conformance issues: LINE_TOO_LONG", True]
    assert msg.data is not None
    assert b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n" in msg.data
    assert f"Message-ID: <{msg.id}@example.org>\r\n".encode() in msg.data


def test_check_fix_conformance_rejects_unknown_labels(run) -> None:
    with pytest.raises(PolicyError, match="invalid MessageConformance flag 'SPOON'"):
        run("msg:check_fix_conformance('SPOON', '')", make())
    with pytest.raises(PolicyError, match="unknown field"):
        run("msg:check_fix_conformance('', '', { detect = true })", make())


def test_a_fix_gives_a_shared_body_message_its_own_data(run) -> None:
    """Copy on write: the other recipients of the transaction keep the shared body."""
    body = b"Subject: hi\r\n\r\nhello\r\n"
    mine = make(b"Received: a\r\n", shared_body=body)
    other = make(b"Received: b\r\n", shared_body=body)
    run("msg:check_fix_conformance('', 'MISSING_DATE_HEADER')", mine)
    assert not mine.shares_body
    assert mine.data is not None
    assert b"Date:" in mine.data
    assert other.shares_body
    assert other.data == b"Received: b\r\n" + body
    run("return msg:from_header()", other)  # reading headers keeps the body shared
    assert other.shares_body


MULTI = (
    b"Subject: hi\r\n"
    b"Content-Type: multipart/alternative; boundary=B\r\n\r\n"
    b"--B\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    b"--B\r\nContent-Type: text/html\r\n\r\n<p>hi</p></BODY>\r\n"
    b"--B--\r\n"
)


def test_append_text_plain_and_html(run) -> None:
    msg = make(MULTI)
    out = run(
        "return {msg:append_text_plain('-- footer'), msg:append_text_html('<img src=x>')}", msg
    )
    assert out == [True, True]
    assert msg.data is not None
    root = MimePart.parse(msg.data)
    assert root.resolve((0,)).body() == "hello\r\n\r\n-- footer\r\n"
    assert root.resolve((1,)).body() == "<p>hi</p>\r\n<img src=x></BODY>\r\n"


def test_append_text_html_without_an_html_part_is_false(run) -> None:
    msg = make(b"Subject: x\r\n\r\nplain\r\n")
    assert run("return {msg:append_text_html('x'), msg:append_text_plain('more')}", msg) == [
        False,
        True,
    ]
    assert (
        msg.data
        == b"Subject: x\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nplain\r\n\r\nmore\r\n"
    )


def test_add_authentication_results_prepends_the_header(run) -> None:
    msg = make()
    run(
        """
        msg:add_authentication_results('mx.example.com', {
          { method = 'spf', result = 'pass', props = { ['smtp.mailfrom'] = 'example.org' } },
        })
        """,
        msg,
    )
    assert msg.data is not None
    assert msg.data.startswith(
        b"Authentication-Results: mx.example.com;\r\n\tspf=pass\r\n\tsmtp.mailfrom=example.org\r\n"
        b'From: "Doe, Jane"'
    )
    with pytest.raises(PolicyError, match="string method and result"):
        run("msg:add_authentication_results('mx', { { method = 'spf' } })", make())


def test_parse_rfc3464(run) -> None:
    out = run(
        """
        local r = msg:parse_rfc3464()
        local first = r.per_recipient[1]
        return {r.per_message.reporting_mta.name, first.status.class, first.action,
                first.last_attempt_date, first.remote_mta.name,
                r.per_recipient[2].remote_mta == nil}
        """,
        make(REPORT),
    )
    assert out == ["mx.example.org", 5, "failed", "2024-05-06T14:05:00Z", "mail.example.net", True]
    assert run("return msg:parse_rfc3464()", make()) is None
    broken = REPORT.replace(b"Action: delayed", b"Action: exploded")
    with pytest.raises(PolicyError, match=r"parse_rfc3464: .*invalid action type"):
        run("return msg:parse_rfc3464()", make(broken))


def test_spool_hints_are_accepted(run) -> None:
    msg = make()
    out = run(
        "msg:save()\nmsg:set_force_sync(true)\nmsg:set_force_sync(false)\n"
        "return {msg:shrink(), msg:shrink_data()}",
        msg,
    )
    assert out == [False, False]
    assert msg.data == DATA  # nothing released during the event
    with pytest.raises(PolicyError, match="set_force_sync: expected a boolean"):
        run("msg:set_force_sync('yes')", make())


def test_dkim_and_arc_verify_an_unsigned_message_without_dns(run) -> None:
    # Signed messages: tests/unit/test_dkim_verify.py.
    assert run("return msg:dkim_verify()", make()) in ({}, [])
    assert run("return msg:arc_verify().result", make()) == "none"
    with pytest.raises(PolicyError, match=r"init\.lua:2: arc_seal: expected a signer"):
        run("msg:arc_seal({}, 'mx', {})", make())


def test_methods_check_their_object_and_strings(run) -> None:
    with pytest.raises(PolicyError, match="expected a Message object"):
        run("return msg.import_headers({}, {})", make())
    with pytest.raises(PolicyError, match="not valid UTF-8"):
        run("return msg:append_text_plain('\\xff')", make())
