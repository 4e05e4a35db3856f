"""kumoq.logs.records: field names, order and values of each record type (reference §5)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kumoq.config.logs import RECORD_TYPE_NAMES
from kumoq.logs.records import (
    FieldSelection,
    PeerAddress,
    RecordType,
    Response,
    SourceAddress,
    build_record,
    rfc3339,
)
from kumoq.message import EnvelopeAddress, Message, new_spool_id

NOW = 1_700_000_123.25
CREATED = 1_700_000_100.5
NODEID = "557f3ad4-2c8c-11ee-976e-782d7e12e173"

BASE_KEYS = [
    "type",
    "id",
    "sender",
    "recipient",
    "queue",
    "site",
    "size",
    "response",
    "peer_address",
    "timestamp",
    "event_time",
    "created",
    "created_time",
    "num_attempts",
    "bounce_classification",
    "egress_pool",
    "egress_source",
    "source_address",
    "feedback_report",
    "meta",
    "headers",
    "delivery_protocol",
    "reception_protocol",
    "nodeid",
]

DATA = (
    b"Subject: hello\r\n"
    b"X-Campaign: spring\r\n"
    b"x-tag: one\r\n"
    b"X-Tag: two\r\n"
    b"X-Folded: first\r\n  second\r\n"
    b"X-Encoded: =?utf-8?q?caf=C3=A9?=\r\n"
    b"Y-Other: no\r\n"
    b"From: a@example.com\r\n"
    b"\r\n"
    b"X-Not-A-Header: body\r\n"
)


def make_msg(*, recipients: tuple[str, ...] = ("rcpt@dest.example",), **kw: Any) -> Message:
    meta = {"reception_protocol": "ESMTP", "tenant": "acme", "campaign": "spring"}
    meta.update(kw.pop("meta", {}))
    return Message(
        id=new_spool_id(CREATED),
        sender=EnvelopeAddress.parse("sender@src.example"),
        recipients=[EnvelopeAddress.parse(r) for r in recipients],
        meta=meta,
        data=kw.pop("data", DATA),
        # explicit: new_spool_id never goes back in time, so after a test that made ids at
        # the real time, the id's own timestamp would be later than CREATED
        created=kw.pop("created", CREATED),
        **kw,
    )


def decode(line: bytes) -> tuple[list[str], dict[str, Any]]:
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    pairs = json.loads(line, object_pairs_hook=lambda p: p)
    return [k for k, _ in pairs], json.loads(line)


def test_record_type_names_match_config() -> None:
    assert tuple(t.value for t in RecordType) == RECORD_TYPE_NAMES


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5.7.1", (5, 7, 1)),
        ("2.0.0 OK", (2, 0, 0)),
        ("4.4.4\tlater", (4, 4, 4)),
        ("4.123.999 x", (4, 123, 999)),
        ("3.0.0 no such class", None),
        ("5.7 short", None),
        ("5.7.1x", None),
        ("OK", None),
        ("", None),
    ],
)
def test_parse_enhanced(text: str, expected: tuple[int, int, int] | None) -> None:
    assert Response.parse_enhanced(text) == expected


def test_response_from_reply_multiline_becomes_one_line() -> None:
    r = Response.from_reply(550, "5.7.1 first line\r\n5.7.1 second line", "RCPT TO")
    assert r == Response(550, (5, 7, 1), "first line second line", "RCPT TO")
    assert str(r) == "550 5.7.1 first line second line"
    assert Response.from_reply(250, ["OK ids=1"]) == Response(250, None, "OK ids=1", None)
    assert Response.from_reply(250, "") == Response(250, None, "", None)


def test_rfc3339_has_nanoseconds_and_z() -> None:
    assert rfc3339(1_678_069_691.5) == "2023-03-06T02:28:11.500000000Z"
    assert rfc3339(1_678_069_691.0) == "2023-03-06T02:28:11.000000000Z"


def test_reception_record() -> None:
    msg = make_msg()
    line = build_record(
        RecordType.Reception,
        msg,
        now=NOW,
        response=Response(250, None, "", None),
        nodeid=NODEID,
        peer_address=PeerAddress("client.example", "127.0.0.1"),
        session_id="9bcd689e-23d9-41b7-a015-63a1382f8b57",
    )
    keys, rec = decode(line)
    assert keys == [*BASE_KEYS, "session_id"]
    assert rec == {
        "type": "Reception",
        "id": msg.id,
        "sender": "sender@src.example",
        "recipient": "rcpt@dest.example",
        "queue": "spring:acme@dest.example",
        "site": "",
        "size": len(DATA),
        "response": {"code": 250, "enhanced_code": None, "content": "", "command": None},
        "peer_address": {"name": "client.example", "addr": "127.0.0.1"},
        "timestamp": 1_700_000_123,
        "event_time": "2023-11-14T22:15:23.250000000Z",
        "created": 1_700_000_100,
        "created_time": rfc3339(msg.created),
        "num_attempts": 0,
        "bounce_classification": "Uncategorized",
        "egress_pool": None,
        "egress_source": None,
        "source_address": None,
        "feedback_report": None,
        "meta": {},
        "headers": {},
        "delivery_protocol": None,
        "reception_protocol": "ESMTP",
        "nodeid": NODEID,
        "session_id": "9bcd689e-23d9-41b7-a015-63a1382f8b57",
    }
    assert rec["created_time"].startswith("2023-11-14T22:15:00.5")


def test_delivery_record_with_tls_and_source() -> None:
    msg = make_msg(num_attempts=2)
    line = build_record(
        RecordType.Delivery,
        msg,
        now=NOW,
        response=Response.from_reply(250, "2.0.0 OK ids=abc", "."),
        nodeid=NODEID,
        site="unspecified->mx.dest.example@smtp_client",
        queue="dest.example",
        peer_address=PeerAddress("mx.dest.example.", "10.0.0.1"),
        egress_pool="pool0",
        egress_source="source2",
        source_address=SourceAddress(
            "10.0.0.2:53210", server="192.168.1.1:5000", protocol="socks5"
        ),
        delivery_protocol="ESMTP",
        tls_cipher="TLS_AES_256_GCM_SHA384",
        tls_protocol_version="TLSv1.3",
        tls_peer_subject_name=["CN=mx.dest.example"],
        provider_name="dest",
        session_id="s-1",
    )
    keys, rec = decode(line)
    assert keys == [
        *BASE_KEYS,
        "tls_cipher",
        "tls_protocol_version",
        "tls_peer_subject_name",
        "provider_name",
        "session_id",
    ]
    assert rec["type"] == "Delivery"
    assert rec["queue"] == "dest.example"
    assert rec["site"] == "unspecified->mx.dest.example@smtp_client"
    assert rec["response"] == {
        "code": 250,
        "enhanced_code": {"class": 2, "subject": 0, "detail": 0},
        "content": "OK ids=abc",
        "command": ".",
    }
    source = json.loads(line, object_pairs_hook=lambda p: p)
    source_pairs = dict(source)["source_address"]
    assert [k for k, _ in source_pairs] == ["address", "server", "protocol"]
    assert rec["num_attempts"] == 2
    assert rec["egress_pool"] == "pool0"
    assert rec["egress_source"] == "source2"
    assert rec["delivery_protocol"] == "ESMTP"
    assert rec["tls_peer_subject_name"] == ["CN=mx.dest.example"]


def test_transient_failure_and_bounce() -> None:
    msg = make_msg(num_attempts=0)
    tf = build_record(
        RecordType.TransientFailure,
        msg,
        now=NOW,
        response=Response.from_reply(451, "4.4.4 KumoMTA internal: queue is suspended"),
        nodeid=NODEID,
        site="spring:acme@dest.example",
    )
    keys, rec = decode(tf)
    assert keys == BASE_KEYS
    assert rec["type"] == "TransientFailure"
    assert rec["num_attempts"] == 0
    assert rec["response"]["enhanced_code"] == {"class": 4, "subject": 4, "detail": 4}
    assert rec["response"]["content"] == "KumoMTA internal: queue is suspended"

    bounce = build_record(
        RecordType.Bounce,
        msg,
        now=NOW,
        response=Response(550, (5, 1, 1), "no such user", "RCPT TO"),
        nodeid=NODEID,
        num_attempts=3,
        delivery_protocol="ESMTP",
    )
    keys, rec = decode(bounce)
    assert keys == BASE_KEYS
    assert rec["type"] == "Bounce"
    assert rec["num_attempts"] == 3
    assert rec["response"]["command"] == "RCPT TO"


def test_rejection_record() -> None:
    line = build_record(
        RecordType.Rejection,
        None,
        now=NOW,
        response=Response(550, (5, 7, 1), "relaying not permitted", "RCPT TO"),
        nodeid=NODEID,
        site="ignored",
        sender="sender@src.example",
        recipient="rcpt@dest.example",
        meta={"conn": "c1", "other": 1},
        selection=FieldSelection(meta=("conn",), headers=("Subject",)),
        peer_address=PeerAddress("client.example", "127.0.0.1"),
        session_id="s-2",
    )
    keys, rec = decode(line)
    assert keys == [*BASE_KEYS, "session_id"]
    assert rec["type"] == "Rejection"
    assert (rec["id"], rec["queue"], rec["site"], rec["size"]) == ("", "", "", 0)
    assert rec["sender"] == "sender@src.example"
    assert rec["recipient"] == "rcpt@dest.example"
    assert rec["created"] == rec["timestamp"] == int(NOW)
    assert rec["created_time"] == rec["event_time"]
    assert rec["meta"] == {"conn": "c1"}
    assert rec["headers"] == {}
    assert rec["reception_protocol"] is None


def test_rejection_defaults_to_empty_envelope() -> None:
    _, rec = decode(
        build_record(
            RecordType.Rejection, None, now=NOW, response=Response(421, None, "bye"), nodeid="n"
        )
    )
    assert rec["sender"] == ""
    assert rec["recipient"] == ""


def test_several_recipients_make_a_list() -> None:
    msg = make_msg(recipients=("a@dest.example", "b@dest.example"))
    _, rec = decode(
        build_record(
            RecordType.Reception, msg, now=NOW, response=Response(250, None, ""), nodeid="n"
        )
    )
    assert rec["recipient"] == ["a@dest.example", "b@dest.example"]
    _, rec = decode(
        build_record(
            RecordType.Rejection,
            None,
            now=NOW,
            response=Response(550, None, "no"),
            nodeid="n",
            recipient=["only@x.example"],
        )
    )
    assert rec["recipient"] == "only@x.example"


def test_unresolvable_queue_name_is_logged_as_text() -> None:
    msg = make_msg(meta={"queue": 42})
    _, rec = decode(
        build_record(
            RecordType.Expiration, msg, now=NOW, response=Response(551, None, "x"), nodeid="n"
        )
    )
    assert "queue" in rec["queue"]
    assert "42" in rec["queue"]


def test_size_is_zero_without_resident_data() -> None:
    msg = make_msg(data=None)
    sel = FieldSelection(headers=("Subject",))
    _, rec = decode(
        build_record(
            RecordType.Delayed,
            msg,
            now=NOW,
            response=Response(451, None, "x"),
            nodeid="n",
            selection=sel,
        )
    )
    assert rec["size"] == 0
    assert rec["headers"] == {}


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        ((), {}),
        (("tenant",), {"tenant": "acme"}),
        (("tenant", "missing", "nothing"), {"tenant": "acme"}),
        (("x_*",), {"x_a": 1, "x_b": [1, 2]}),
        (("X_*",), {}),  # meta names are case-sensitive
        (("*",), {"reception_protocol": "ESMTP", "tenant": "acme", "campaign": "spring",
                  "x_a": 1, "x_b": [1, 2], "y": {"k": "v"}}),
        (("y", "campaign"), {"y": {"k": "v"}, "campaign": "spring"}),
    ],
)  # fmt: skip
def test_meta_selection(patterns: tuple[str, ...], expected: dict[str, Any]) -> None:
    msg = make_msg(meta={"x_a": 1, "x_b": [1, 2], "y": {"k": "v"}, "nothing": None, "x_n": None})
    line = build_record(
        RecordType.Delivery,
        msg,
        now=NOW,
        response=Response(250, None, "ok"),
        nodeid="n",
        selection=FieldSelection(meta=patterns),
    )
    _, rec = decode(line)
    assert rec["meta"] == expected


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        ((), {}),
        (("subject",), {"Subject": "hello"}),
        (("SUBJECT", "Missing"), {"Subject": "hello"}),
        (("X-Tag",), {"x-tag": ["one", "two"]}),
        (("X-Folded",), {"X-Folded": "first  second"}),
        (("x-encoded",), {"X-Encoded": "café"}),
        (("x-*",), {"X-Campaign": "spring", "x-tag": ["one", "two"],
                    "X-Folded": "first  second", "X-Encoded": "café"}),
        (("X-*", "Y-*", "Subject"), {"Subject": "hello", "X-Campaign": "spring",
                                     "x-tag": ["one", "two"], "X-Folded": "first  second",
                                     "X-Encoded": "café", "Y-Other": "no"}),
        (("X-Not-A-Header",), {}),  # the body is not searched
    ],
)  # fmt: skip
def test_header_selection(patterns: tuple[str, ...], expected: dict[str, Any]) -> None:
    line = build_record(
        RecordType.Reception,
        make_msg(),
        now=NOW,
        response=Response(250, None, ""),
        nodeid="n",
        selection=FieldSelection(headers=patterns),
    )
    _, rec = decode(line)
    assert rec["headers"] == expected


def test_headers_with_bare_lf_and_no_body() -> None:
    sel = FieldSelection(headers=("Subject",))
    assert sel.select_headers(b"Subject: lf only\nFrom: x\n\nbody") == {"Subject": "lf only"}
    assert sel.select_headers(b"Subject: no body") == {"Subject": "no body"}
    assert sel.select_headers(b"") == {}


def test_non_ascii_and_control_characters_stay_valid_json() -> None:
    msg = make_msg(meta={"note": 'quote " backslash \\ tab \t nl \n é'})
    line = build_record(
        RecordType.Bounce,
        msg,
        now=NOW,
        response=Response(550, None, 'bad "thing"\x00 ü'),
        nodeid="n",
        selection=FieldSelection(meta=("note",)),
    )
    _, rec = decode(line)
    assert rec["meta"]["note"] == 'quote " backslash \\ tab \t nl \n é'
    assert rec["response"]["content"] == 'bad "thing"\x00 ü'
    assert "é".encode() in line  # UTF-8 as serde_json writes it, not \\u escapes


def test_lone_surrogate_does_not_break_the_line() -> None:
    line = build_record(
        RecordType.Rejection, None, now=NOW, response=Response(550, None, "x\ud800y"), nodeid="n"
    )
    _, rec = decode(line)
    assert rec["response"]["content"].startswith("x")


@given(
    sender=st.text(),
    content=st.text(),
    meta=st.dictionaries(
        st.text(min_size=1),
        st.one_of(st.text(), st.integers(), st.booleans(), st.lists(st.text())),
        max_size=4,
    ),
)
def test_any_text_round_trips(sender: str, content: str, meta: dict[str, Any]) -> None:
    msg = make_msg(meta=meta)
    line = build_record(
        RecordType.Delivery,
        msg,
        now=NOW,
        response=Response(250, None, content),
        nodeid="n",
        sender=sender,
        selection=FieldSelection(meta=("*",)),
    )
    _, rec = decode(line)  # hypothesis text() has no lone surrogates
    assert rec["response"]["content"] == content
    assert rec["sender"] == sender
    assert rec["meta"] == {k: v for k, v in msg.meta.items() if v is not None}


def test_peer_address_may_be_a_mapping() -> None:
    line = build_record(
        RecordType.Reception,
        make_msg(),
        now=NOW,
        response=Response(250, None, ""),
        nodeid="n",
        peer_address={"name": "ehlo.example", "addr": "127.0.0.1"},
    )
    pairs = dict(json.loads(line, object_pairs_hook=lambda p: p))
    assert pairs["peer_address"] == [("name", "ehlo.example"), ("addr", "127.0.0.1")]
