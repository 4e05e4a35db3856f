"""kumoq.lua.message: every CORE Message method, addresses and conn_meta, seen from Lua."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime

import pytest

from kumoq.clock import FakeClock
from kumoq.errors import PolicyError
from kumoq.lua import ConnMeta, PolicyEvents, PolicyRuntime
from kumoq.lua.message import adjust_for_schedule, format_due, parse_scheduling
from kumoq.message import EnvelopeAddress, Message, new_spool_id

DATA = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
    b"X-Campaign-Id: spring\r\n"
    b"X-Tenant: blue\r\n"
    b"Received: one\r\n"
    b"Received: two\r\n"
    b"  folded\r\n"
    b"\r\n"
    b"Hello\r\n"
)
NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z, a Tuesday


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@pytest.fixture
def msg():
    return Message(
        id=new_spool_id(NOW),
        sender=EnvelopeAddress.parse("alice@example.com"),
        recipients=[EnvelopeAddress.parse("bob@example.net")],
        meta={"existing": {"nested": [1, 2]}},
        data=DATA,
    )


@pytest.fixture
def run(tmp_path):
    """run(body, msg, *more) executes ``body`` in Lua with ``msg`` bound; returns its result."""

    def runner(body, *args, clock=None):
        path = tmp_path / "init.lua"
        path.write_text(f"kumo.on('t', function(msg, extra)\n{textwrap.dedent(body)}\nend)\n")
        rt = PolicyRuntime(path, clock=clock or FakeClock(NOW))
        return PolicyEvents(rt).call("t", *args)

    return runner


def test_id(run, msg):
    assert run("return msg:id()", msg) == msg.id


def test_get_and_set_meta_any_json_value(run, msg):
    out = run(
        """
        msg:set_meta('s', 'text')
        msg:set_meta('n', 3)
        msg:set_meta('f', 1.5)
        msg:set_meta('b', false)
        msg:set_meta('t', {a = {1, 2}, e = {}})
        msg:set_meta('null', nil)
        msg:set_meta('priority', 2)
        return {msg:get_meta('existing'), msg:get_meta('s'), msg:get_meta('missing') == nil}
        """,
        msg,
    )
    assert out == [{"nested": [1, 2]}, "text", True]
    assert msg.meta == {
        "existing": {"nested": [1, 2]},
        "s": "text",
        "n": 3,
        "f": 1.5,
        "b": False,
        "t": {"a": [1, 2], "e": {}},
        "null": None,
        "priority": 2,
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("msg:set_meta(1, 'x')", "set_meta: meta key must be a string"),
        ("msg:set_meta('k', print)", "set_meta: cannot convert a Lua function"),
        ("msg:get_meta('\\xff')", "get_meta: string argument is not valid UTF-8"),
        ("msg:set_meta('k', '\\xff')", "set_meta: string argument is not valid UTF-8"),
        ("msg.get_meta('k')", "get_meta: expected a Message object"),
    ],
)
def test_meta_errors_name_the_policy_line(run, msg, body, message):
    with pytest.raises(PolicyError, match=message) as info:
        run(f"local x = 1\n{body}", msg)
    assert info.value.location == "init.lua:3"


def test_get_and_set_data(run, msg):
    assert run("return msg:get_data()", msg) == DATA.decode()
    run("msg:set_data('Subject: new\\r\\n\\r\\nbody')", msg)
    assert msg.data == b"Subject: new\r\n\r\nbody"


def test_set_data_keeps_arbitrary_bytes(run, msg):
    run("msg:set_data('X: \\xe9\\x00\\xff\\r\\n\\r\\n\\x80')", msg)
    assert msg.data == b"X: \xe9\x00\xff\r\n\r\n\x80"
    assert run("return #msg:get_data()", msg) == len(msg.data)


def test_data_not_loaded_is_an_error(run, msg):
    msg.data = None
    with pytest.raises(PolicyError, match="data is not loaded"):
        run("return msg:get_data()", msg)


def test_sender_and_recipients(run, msg):
    out = run(
        """
        local s = msg:sender()
        local r = msg:recipient()
        local list = msg:recipient_list()
        return {s.user, s.domain, s.email, tostring(s), r.email, #list, list[1].domain,
                getmetatable(s)}
        """,
        msg,
    )
    assert out == [
        "alice",
        "example.com",
        "alice@example.com",
        "alice@example.com",
        "bob@example.net",
        1,
        "example.net",
        "EnvelopeAddress",
    ]


def test_recipient_is_a_list_when_there_are_several(run, msg):
    msg.recipients.append(EnvelopeAddress.parse("carol@example.org"))
    out = run("local r = msg:recipient() return {#r, r[2].email}", msg)
    assert out == [2, "carol@example.org"]


def test_null_sender(run, msg):
    msg.sender = EnvelopeAddress.parse("<>")
    assert run("local s = msg:sender() return {s.email, tostring(s), s.user}", msg) == ["", "", ""]


def test_set_sender_and_set_recipient(run, msg):
    run(
        """
        msg:set_sender('new@sender.example')
        msg:set_recipient('one@rcpt.example')
        """,
        msg,
    )
    assert msg.sender == EnvelopeAddress("new", "sender.example")
    assert msg.recipients == [EnvelopeAddress("one", "rcpt.example")]
    run("msg:set_sender(msg:recipient()) msg:set_recipient({'a@x.example', msg:sender()})", msg)
    assert msg.sender == EnvelopeAddress("one", "rcpt.example")
    assert [r.email for r in msg.recipients] == ["a@x.example", "one@rcpt.example"]
    run("msg:set_recipient(msg:sender())", msg)
    assert msg.recipients == [EnvelopeAddress("one", "rcpt.example")]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("msg:set_sender('no-at-sign')", "set_sender: invalid address"),
        ("msg:set_recipient({})", "set_recipient: expected at least one recipient"),
        ("msg:set_recipient(5)", "set_recipient: address must be a string"),
    ],
)
def test_bad_addresses(run, msg, body, message):
    with pytest.raises(PolicyError, match=message) as info:
        run(body, msg)
    assert info.value.location == "init.lua:2"


def test_queue_name(run, msg):
    assert run("return msg:queue_name()", msg) == "example.net"
    assert (
        run(
            "msg:set_meta('tenant', 't1') msg:set_meta('campaign', 'c1') return msg:queue_name()",
            msg,
        )
        == "c1:t1@example.net"
    )
    assert run("msg:set_meta('queue', 'null') return msg:queue_name()", msg) == "null"


def test_num_attempts(run, msg):
    assert (
        run(
            "msg:increment_num_attempts() msg:increment_num_attempts() return msg:num_attempts()",
            msg,
        )
        == 2
    )
    assert msg.num_attempts == 2


def test_append_and_prepend_header(run, msg):
    run(
        """
        msg:append_header('X-Appended', 'last')
        msg:prepend_header('X-Prepended', 'first')
        msg:append_header('X-Encoded', 'Grüße', true)
        """,
        msg,
    )
    data = msg.data
    assert data is not None
    assert data.startswith(b"X-Prepended: first\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.endswith(b"X-Appended: last\r\nX-Encoded: =?utf-8?b?R3LDvMOfZQ==?=")
    assert body == b"Hello\r\n"
    assert run("return msg:get_first_named_header_value('x-encoded')", msg) == "Grüße"


def test_append_header_errors(run, msg):
    with pytest.raises(PolicyError, match="append_header: invalid header name") as info:
        run("msg:append_header('Bad Name', 'v')", msg)
    assert info.value.location == "init.lua:2"
    with pytest.raises(PolicyError, match="line breaks"):
        run("msg:append_header('X-A', 'v\\r\\nBcc: evil@example.com')", msg)


def test_header_lookups(run, msg):
    out = run(
        """
        return {
          msg:get_first_named_header_value('subject'),
          msg:get_first_named_header_value('RECEIVED'),
          msg:get_first_named_header_value('absent') == nil,
          msg:get_all_named_header_values('received'),
          #msg:get_all_named_header_values('absent'),
        }
        """,
        msg,
    )
    assert out == ["Grüße", "one", True, ["one", "two  folded"], 0]


def test_get_all_headers(run, msg):
    out = run("return msg:get_all_headers()", msg)
    assert out[0] == ["From", "Alice <alice@example.com>"]
    assert out[2] == ["Subject", "Grüße"]
    assert len(out) == 7


def test_remove_all_named_headers(run, msg):
    run("msg:remove_all_named_headers('received')", msg)
    assert msg.data == DATA.replace(b"Received: one\r\nReceived: two\r\n  folded\r\n", b"")


def test_import_x_headers(run, msg):
    run("msg:import_x_headers()", msg)
    assert msg.meta["x_campaign_id"] == "spring"
    assert msg.meta["x_tenant"] == "blue"
    run("msg:set_meta('x_tenant', 'old') msg:import_x_headers({'x-campaign-id', 'Subject'})", msg)
    assert msg.meta["x_tenant"] == "old"
    assert msg.meta["subject"] == "Grüße"


def test_remove_x_headers(run, msg):
    run("msg:remove_x_headers({'x-tenant'})", msg)
    assert msg.data is not None
    assert b"X-Tenant" not in msg.data
    assert b"X-Campaign-Id" in msg.data
    run("msg:remove_x_headers()", msg)
    assert b"X-Campaign-Id" not in msg.data


def test_set_scheduling_stores_normalized_schedule_and_returns_it(run, msg):
    out = run(
        """
        return msg:set_scheduling {
          dow = 'mon,Wednesday', tz = 'America/Phoenix', start = '09:00', ['end'] = '17:00:00',
          first_attempt = '2023-11-20T08:00:00-07:00', expires = '2023-12-01T00:00:00Z',
        }
        """,
        msg,
    )
    expected = {
        "dow": "Mon,Wed",
        "tz": "America/Phoenix",
        "start": "09:00:00",
        "end": "17:00:00",
        "first_attempt": "2023-11-20T08:00:00-07:00",
        "expires": "2023-12-01T00:00:00+00:00",
    }
    assert out == expected
    assert msg.schedule == expected
    # first_attempt is Monday 08:00 in Phoenix, before the 09:00 window opens.
    assert msg.due == ts("2023-11-20T09:00:00-07:00")
    run("msg:set_scheduling(nil)", msg)
    assert msg.schedule is None


def test_set_scheduling_without_constraints_leaves_due_alone(run, msg):
    assert run("return msg:set_scheduling { expires = '2030-01-01T00:00:00Z' }", msg) == {
        "expires": "2030-01-01T00:00:00+00:00"
    }
    assert msg.due is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            "{dow = 'Mon', tz = 'UTC'}",
            "dow, tz, start and end must be given together; missing start, end",
        ),
        (
            "{dow = 'Mon', tz = 'Mars/Olympus', start = '09:00', ['end'] = '10:00'}",
            "tz: unknown time zone",
        ),
        (
            "{dow = 'Sumday', tz = 'UTC', start = '09:00', ['end'] = '10:00'}",
            "dow: invalid day 'Sumday'",
        ),
        (
            "{dow = 'Mon', tz = 'UTC', start = '9am', ['end'] = '10:00'}",
            "start: expected a time of day",
        ),
        (
            "{dow = 'Mon', tz = 'UTC', start = '25:00', ['end'] = '10:00'}",
            "start: invalid time of day",
        ),
        (
            "{first_attempt = '2024-01-01T00:00:00'}",
            "first_attempt: RFC 3339 time .* needs a UTC offset",
        ),
        ("{expires = 'tomorrow'}", "expires: expected an RFC 3339 time"),
        ("{first = 'x'}", "set_scheduling: unknown key 'first'; allowed keys are: dow, end"),
    ],
)
def test_set_scheduling_validation(run, msg, table, message):
    with pytest.raises(PolicyError, match=message) as info:
        run(f"msg:set_scheduling {table}", msg)
    assert info.value.location == "init.lua:2"
    assert msg.schedule is None


def test_import_scheduling_header(run, msg):
    sched = {"first_attempt": "2023-11-15T00:00:00Z"}
    msg.data = b"X-Schedule: " + json.dumps(sched).encode() + b"\r\n" + DATA
    out = run("return msg:import_scheduling_header('X-Schedule', true)", msg)
    assert out == {"first_attempt": "2023-11-15T00:00:00+00:00"}
    assert msg.schedule == out
    assert msg.due == ts("2023-11-15T00:00:00+00:00")
    assert msg.data == DATA
    assert run("return msg:import_scheduling_header('X-Schedule', false)", msg) is None


def test_import_scheduling_header_with_bad_json(run, msg):
    msg.data = b"X-Schedule: {nope\r\n" + DATA
    with pytest.raises(PolicyError, match="from header X-Schedule is not a valid Scheduling"):
        run("msg:import_scheduling_header('X-Schedule', false)", msg)


def test_set_due(run, msg):
    assert run("return msg:set_due('2023-11-20T10:00:00+01:00')", msg) == "2023-11-20T09:00:00Z"
    assert msg.due == ts("2023-11-20T09:00:00+00:00")
    assert run("return msg:set_due(nil)", msg) is None
    assert msg.due is None
    with pytest.raises(PolicyError, match="set_due: expected an RFC 3339 time"):
        run("msg:set_due(5)", msg)


def test_set_due_respects_the_schedule(run, msg):
    msg.schedule = parse_scheduling(
        {"dow": "Mon", "tz": "UTC", "start": "09:00:00", "end": "17:00:00"}
    )
    # Tuesday 2023-11-14 -> next Monday 09:00 UTC
    assert run("return msg:set_due(nil)", msg) == "2023-11-20T09:00:00Z"


def test_adjust_for_schedule():
    sched = parse_scheduling(
        {"dow": "Mon,Fri", "tz": "America/Phoenix", "start": "09:00", "end": "17:00"}
    )
    monday_evening = ts("2023-03-27T18:00:00-07:00")
    assert adjust_for_schedule(sched, monday_evening) == ts("2023-03-31T09:00:00-07:00")
    inside = ts("2023-03-27T10:00:00-07:00")
    assert adjust_for_schedule(sched, inside) == inside
    assert format_due(ts("2023-03-31T09:00:00-07:00")) == "2023-03-31T16:00:00Z"
    assert datetime.fromtimestamp(adjust_for_schedule({}, NOW), UTC).timestamp() == NOW


def test_message_object_is_stale_after_its_event(tmp_path, msg):
    path = tmp_path / "init.lua"
    path.write_text(
        """
        kumo.on('keep', function(msg) kept = msg end)
        kumo.on('use', function() return kept:id() end)
        """
    )
    ev = PolicyEvents(PolicyRuntime(path))
    ev.call("keep", msg)
    with pytest.raises(PolicyError, match="no longer valid"):
        ev.call("use")
    assert ev.runtime.messages == {}
    assert ev.runtime.conns == {}


def test_message_object_shape(run, msg):
    out = run(
        """
        local ok, err = pcall(function() msg.field = 1 end)
        return {tostring(msg), getmetatable(msg), ok, type(msg.get_meta), msg.nothing == nil}
        """,
        msg,
    )
    assert out[0] == f"Message({msg.id})"
    assert out[1:] == ["Message", False, "function", True]


def test_conn_meta_changes_are_visible_in_python(run, msg):
    conn = ConnMeta(received_from="127.0.0.1:1234")
    out = run(
        """
        extra:set_meta('tenant', 'blue')
        extra:set_meta('list', {1, 2})
        return {extra:get_meta('received_from'), extra:get_meta('nope') == nil, tostring(extra)}
        """,
        msg,
        conn,
    )
    assert out == ["127.0.0.1:1234", True, "ConnectionMeta"]
    assert conn == {"received_from": "127.0.0.1:1234", "tenant": "blue", "list": [1, 2]}


def test_address_argument_from_python(run):
    out = run("return {msg.user, msg.domain, msg.email}", EnvelopeAddress.parse("u@d.example"))
    assert out == ["u", "d.example", "u@d.example"]
