"""msg:parse_mime() and its MimePart, HeaderMap and Header objects, seen from Lua."""

from __future__ import annotations

import textwrap

import pytest

from kumoq.clock import FakeClock
from kumoq.errors import PolicyError
from kumoq.lua import PolicyEvents, PolicyRuntime, message_mime
from kumoq.lua.message_mime import MAX_ROOTS
from kumoq.message import EnvelopeAddress, Message, new_spool_id
from kumoq.mime import MimePart
from tests.unit.test_mime import MULTI

NOW = 1_700_000_000.0


def make(data: bytes = MULTI) -> Message:
    return Message(
        id=new_spool_id(NOW),
        sender=EnvelopeAddress.parse("s@example.org"),
        recipients=[EnvelopeAddress.parse("r@example.net")],
        data=data,
    )


@pytest.fixture
def run(tmp_path):
    def runner(body, *args):
        path = tmp_path / "init.lua"
        path.write_text(f"kumo.on('t', function(msg, extra)\n{textwrap.dedent(body)}\nend)\n")
        return PolicyEvents(PolicyRuntime(path, clock=FakeClock(NOW))).call("t", *args)

    return runner


def test_parse_mime_round_trips_and_is_not_applied_until_set_data(run) -> None:
    msg = make()
    assert run("local m = msg:parse_mime()\nreturn tostring(m) == msg:get_data()", msg) is True
    run("msg:parse_mime():get_simple_structure().text_part.body = 'changed'", msg)
    assert msg.data == MULTI  # KumoMTA: changes reach the message only through set_data


def test_simple_structure(run) -> None:
    out = run(
        """
        local s = msg:parse_mime():get_simple_structure()
        local a = s.attachments[1]
        return {
          s.text_part.body, s.html_part.body, s.text_part.id, s.html_part.id, s.header_part.id,
          s.amp_html_part == nil, #s.attachments, a.file_name, a.inline, a.content_id,
          a.content_type, a.part.body, a.part.id,
        }
        """,
        make(),
    )
    assert out == [
        "café\r\n",
        "<p>café</p></body>\r\n",
        "0.0",
        "0.1",
        "",
        True,
        1,
        "résumé.pdf",
        False,
        "pdf@example.com",
        "application/pdf",
        "%PDF-",
        "1",
    ]


def test_changing_a_part_shows_in_the_root_and_in_set_data(run) -> None:
    msg = make()
    run(
        """
        local m = msg:parse_mime()
        local s = m:get_simple_structure()
        s.text_part.body = 'PREPENDED!\\r\\n' .. s.text_part.body
        s.html_part:replace_body('<b>new</b>', 'text/html')
        msg:set_data(tostring(m))
        """,
        msg,
    )
    assert msg.data is not None
    root = MimePart.parse(msg.data)
    assert root.resolve((0, 0)).body() == "PREPENDED!\r\ncafé\r\n"
    assert root.resolve((0, 1)).body() == "<b>new</b>\r\n"
    assert root.resolve((0, 1)).charset() == "us-ascii"
    assert root.resolve((1,)).raw_body == b"JVBERi0=\r\n"  # untouched


def test_binary_content_becomes_base64(run) -> None:
    out = run(
        """
        local m = msg:parse_mime()
        local pdf = m:get_simple_structure().attachments[1].part
        pdf.body = '\\x00\\xff\\x01'
        return {pdf.body == '\\x00\\xff\\x01', pdf.headers:content_transfer_encoding().value,
                pdf.headers:content_type().value}
        """,
        make(),
    )
    assert out == [True, "base64", "application/pdf"]


def test_headermap_accessors(run) -> None:
    out = run(
        """
        local h = msg:parse_mime().headers
        local to_before = h:to()
        h:set_subject('Grüße')
        h:set_to({ { name = 'Ann', address = { local_part = 'ann', domain = 'example.com' } } })
        h:append('X-One', '1')
        h:prepend('X-Zero', '0')
        h:remove_all_named('Date')
        local names = {}
        for hdr in h:iter() do names[#names + 1] = hdr.name end
        local ct = h:content_type()
        return {
          to_before == nil, h:subject(), h:to(), h:from(), h:message_id(), h:mime_version(),
          ct.value, ct.parameters.boundary, names, h:cc() == nil,
          tostring(h):sub(1, 11),
        }
        """,
        make(),
    )
    assert out == [
        True,
        "Grüße",
        [{"name": "Ann", "address": {"local_part": "ann", "domain": "example.com"}}],
        [{"address": {"local_part": "a", "domain": "example.com"}}],
        "one@example.com",
        "1.0",
        "multipart/mixed",
        "OUT",
        ["X-Zero", "From", "Message-ID", "Mime-Version", "Content-Type", "Subject", "To", "X-One"],
        True,
        "X-Zero: 0\r\n",
    ]


def test_header_objects(run) -> None:
    out = run(
        """
        local h = msg:parse_mime().headers
        local from = h:get_first_named('from')
        local ct = h:get_first_named('Content-Type')
        local mid = h:get_first_named('Message-ID')
        local count = 0
        for _ in h:iter('content-type') do count = count + 1 end
        return {
          from.name, from.raw_value, from.unstructured, from.mailbox_list, from.value,
          ct.mime_params.value, mid.message_id, count, tostring(mid),
          h:get_first_named('X-Missing') == nil,
        }
        """,
        make(),
    )
    mailbox = [{"address": {"local_part": "a", "domain": "example.com"}}]
    assert out == [
        "From", "a@example.com", "a@example.com", mailbox, mailbox,
        "multipart/mixed", "one@example.com", 1, "Message-ID: <one@example.com>", True,
    ]  # fmt: skip


def test_rebuild_parts_and_append_part(run) -> None:
    msg = make()
    out = run(
        """
        local m = msg:parse_mime()
        local rebuilt = m:rebuild()
        local parts = m.parts
        local inner = parts[1].parts
        local other = msg:parse_mime()
        m:append_part(other:get_simple_structure().text_part)
        msg:set_data(tostring(m))
        return {#parts, parts[1].id, inner[2].id, tostring(rebuilt) ~= tostring(m),
                #m.parts, m.parts[3].body}
        """,
        msg,
    )
    assert out == [2, "0", "0.1", True, 3, "café\r\n"]
    assert msg.data is not None
    assert len(MimePart.parse(msg.data).parts) == 3


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("local m = msg:parse_mime()\nm.nope = 1", "init.lua:3: cannot set field nope"),
        ("local x = msg.parse_mime({})", "parse_mime: expected a Message object"),
        ("local h = msg:parse_mime().headers\nh:set_to('not an address')", "set_to: .*invalid"),
        ("local h = msg:parse_mime().headers\nh:append('Bad Name', 'x')", "invalid header name"),
        ("local h = msg:parse_mime().headers\nlocal x = h.get_first_named({}, 'a')", "HeaderMap"),
        ("local p = msg:parse_mime()\nlocal x = p.append_part(p, {})", "expected a MimePart"),
    ],
)
def test_errors(run, body: str, match: str) -> None:
    with pytest.raises(PolicyError, match=match):
        run(body, make())


def test_a_part_that_cannot_be_decoded_is_an_error(run) -> None:
    data = b"Content-Type: text/plain; charset=no-such\r\n\r\nx\r\n"
    with pytest.raises(PolicyError, match="body: parsing body: unsupported charset no-such"):
        run("local b = msg:parse_mime().body", make(data))
    with pytest.raises(PolicyError, match="parse_mime: invalid header: lone CR"):
        run("local m = msg:parse_mime()", make(b"A: 1\r\n\rB\r\n"))


def test_trees_nobody_refers_to_are_freed(run) -> None:
    """More parses than MAX_ROOTS in one event: the unreferenced trees are collected, the one
    still referred to stays valid."""
    out = run(
        f"""
        local keep = msg:parse_mime()
        for i = 1, {MAX_ROOTS + 50} do
          local part = msg:parse_mime()
        end
        return keep:get_simple_structure().text_part.body
        """,
        make(b"Subject: x\r\n\r\nhi\r\n"),
    )
    assert out == "hi\r\n"


def test_the_bytes_of_live_trees_are_bounded(run, monkeypatch) -> None:
    monkeypatch.setattr(message_mime, "MAX_ROOT_BYTES", 100)
    msg = make(b"Subject: x\r\n\r\n" + b"y" * 60 + b"\r\n")
    body = "for i = 1, 20 do local m = msg:parse_mime() end\nreturn 'ok'"
    assert run(body, msg) == "ok"  # one at a time: the others are collected
    with pytest.raises(PolicyError, match="parse_mime: too many MimePart trees alive"):
        run("local a = msg:parse_mime()\nlocal b = msg:parse_mime()\nreturn tostring(a)", msg)
