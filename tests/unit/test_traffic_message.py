"""The traffic generator's pure parts: the messages it makes (kumoq.testing.traffic_message)
and its books (kumoq.testing.traffic_run: claiming, settling, percentiles)."""

from __future__ import annotations

import email
import email.policy
from collections import Counter

import pytest

from kumoq.testing.traffic import TrafficOptions, parse_target
from kumoq.testing.traffic_http import inject_url
from kumoq.testing.traffic_message import (
    MessageFactory,
    MessageSpec,
    parse_header,
    parse_weighted,
)
from kumoq.testing.traffic_run import Pacer, TrafficRun, percentile

DATE = "Mon, 1 Jun 2026 12:00:00 +0000"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("gmail.com:67", ("gmail.com", 67)), ("yahoo.com", ("yahoo.com", 1)),
     ("x.test:0", ("x.test", 0))],
)  # fmt: skip
def test_parse_weighted(text, expected):
    assert parse_weighted(text) == expected


@pytest.mark.parametrize("text", ["gmail.com:lots", ":5", "a@b.com:1", "gmail.com:-1"])
def test_parse_weighted_rejects(text):
    with pytest.raises(ValueError, match="invalid"):
        parse_weighted(text)


def test_parse_header():
    assert parse_header("X-Tenant:acme") == ("X-Tenant", "acme")
    assert parse_header("X-Two: a b ") == ("X-Two", "a b")
    for bad in ("no colon", "Bad Name:x", ":x"):
        with pytest.raises(ValueError, match="invalid header"):
            parse_header(bad)


def test_domains_come_in_the_exact_proportions_of_their_weights():
    factory = MessageFactory(MessageSpec(domains=(("a.test", 67), ("b.test", 6), ("c.test", 0))))
    domains = Counter(factory.recipient(i).partition("@")[2] for i in range(730))
    assert domains == {"a.test": 670, "b.test": 60}
    assert factory.recipient(5) == "user5@" + factory.recipient(5).partition("@")[2]


def test_every_domain_of_weight_zero_is_an_error():
    with pytest.raises(ValueError, match="weight 0"):
        MessageFactory(MessageSpec(domains=(("a.test", 0),)))


@pytest.mark.parametrize("size", [300, 2000, 10_000, 100_000])
def test_a_message_has_about_the_size_asked_for(size):
    msg = MessageFactory(MessageSpec(size=size)).message(12, DATE)
    wire = len(msg.body) - len(b".\r\n")
    assert abs(wire - size) <= 10


def test_a_message_on_the_wire():
    spec = MessageSpec(sender="s@x.test", headers=(("X-Tenant", "acme"), (".Dot", "stuffed")),
                       campaign="spring", run_id="r1", size=500)  # fmt: skip
    msg = MessageFactory(spec).message(3, DATE)
    assert msg.recipient == "user3@example.com"
    assert msg.envelope == b"MAIL FROM:<s@x.test>\r\nRCPT TO:<user3@example.com>\r\nDATA\r\n"
    assert msg.body.endswith(b"\r\n.\r\n")
    assert b"\r\n..Dot: stuffed\r\n" in msg.body  # a line starting with a dot is stuffed
    lines = msg.body.split(b"\r\n")
    assert not any(line.startswith(b".") and not line.startswith(b"..") for line in lines[:-2])
    parsed = email.message_from_bytes(msg.body[:-3], policy=email.policy.compat32)
    assert parsed["To"] == "<user3@example.com>"
    assert parsed["X-Tenant"] == "acme"
    assert parsed["X-Campaign"] == "spring"
    assert parsed["Message-ID"] == "<r1.3@traffic-gen.kumoq>"
    assert parsed["Date"] == DATE


def test_inject_content_templates_the_recipient():
    text = MessageFactory(MessageSpec(campaign="c")).inject_content(DATE)
    assert "To: <{{ email }}>\r\n" in text
    assert "X-Campaign: c\r\n" in text
    assert "Message-ID" not in text
    assert not text.endswith(".\r\n")


@pytest.mark.parametrize(
    ("url", "expected"),
    [("http://h:8000", "http://h:8000/api/inject/v1"), ("h:8000/", "http://h:8000/api/inject/v1"),
     ("https://u:p@h/api/inject/v1", "https://u:p@h/api/inject/v1")],
)  # fmt: skip
def test_inject_url(url, expected):
    assert inject_url(url) == expected


def test_targets_and_options_are_checked():
    assert parse_target("127.0.0.1:25") == ("127.0.0.1", 25)
    assert parse_target("[::1]:2025") == ("::1", 2025)
    for bad in ("localhost", "h:0", "h:x", ":25"):
        with pytest.raises(ValueError, match="invalid target"):
            parse_target(bad)
    with pytest.raises(ValueError, match="either a target"):
        TrafficOptions()
    with pytest.raises(ValueError, match="count must be at least 1"):
        TrafficOptions(target="h:25", count=0)


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([3.0], 0.9) == 3.0
    assert percentile([], 0.5) == 0.0


def test_every_message_is_settled_once_and_unsent_ones_are_errors():
    run = TrafficRun(10, MessageFactory(MessageSpec()), Pacer(None), "t:25")
    first = run.claim(4)
    assert first == [0, 1, 2, 3]
    run.give_back([2, 3])
    assert run.claim(3) == [2, 3, 4]
    run.sent += 5
    for code in (250, 250, 451, 550):  # a second 451 "text" would not be sampled again
        run.settle(code, "text", 0.01)
    run.failed(1, "broke")
    assert run.claim(100) == [5, 6, 7, 8, 9]
    summary = run.summary("smtp", 1.0)
    assert (summary.accepted, summary.tempfailed, summary.permfailed) == (2, 1, 1)
    assert summary.errors == 6  # one broke, five never sent
    assert summary.accepted + summary.tempfailed + summary.permfailed + summary.errors == 10
    assert summary.reply_samples == ["451 text", "550 text"]
    assert summary.error_samples == ["broke"]
    assert summary.rate == 4.0


def test_the_target_is_unreachable_only_if_nothing_ever_connected():
    run = TrafficRun(10, MessageFactory(MessageSpec()), Pacer(None), "t:25")
    assert not run.cannot_connect("refused", 1)
    assert run.cannot_connect("refused", 3)
    assert run.unreachable == "refused"
    assert run.claim(1) == []
    other = TrafficRun(10, MessageFactory(MessageSpec()), Pacer(None), "t:25")
    other.connected()
    assert not other.cannot_connect("refused", 9)
    assert other.cannot_connect("refused", 10)  # this sender gives up
    assert other.unreachable is None
