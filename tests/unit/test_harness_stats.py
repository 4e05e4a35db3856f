"""kumoq.testing.harness_stats and harness_report: the numbers a harness run reports, from log
records made up here, and the text and HTML they are shown in."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from kumoq.testing.harness_report import format_text, render_html
from kumoq.testing.harness_run import HarnessResult
from kumoq.testing.harness_stats import (
    Expectation,
    analyse,
    bucket_for,
    check_expectations,
    event_seconds,
    expectation_values,
)

T0 = 1_800_000_000.0
GMAIL = "unspecified->(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com@smtp_client"


def stamp(seconds: float) -> str:
    text = datetime.fromtimestamp(T0 + seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    return text + "123Z"  # nine fraction digits, as kumoq writes them


def rec(kind: str, msg_id: str, at: float, queue: str = "gmail.com", **fields):
    record = {"type": kind, "id": msg_id, "queue": queue, "site": "", "event_time": stamp(at)}
    record.update(fields)
    return record


def delayed(msg_id: str, at: float, reasons: str, wait: float, **fields):
    content = f"Context: {reasons}. Next due in {wait}s at {stamp(at + wait)}"
    return rec("Delayed", msg_id, at, response={"code": 400, "content": content}, **fields)


RECORDS = [
    rec("Reception", "a", 0.0),
    rec("Reception", "b", 0.1),
    rec("Reception", "c", 0.2, queue="yahoo.com"),
    rec("Reception", "d", 0.3, queue="null"),
    rec("Reception", "e", 0.4, queue="box"),
    delayed("c", 0.2, "Received, MessageRateThrottle", 2.0, queue="yahoo.com"),
    delayed("c", 2.2, "DueTimeWasReached, MessageRateThrottle", 1.0, queue="yahoo.com"),
    delayed("b", 0.5, "ConnectionRateThrottle", 4.0, site=GMAIL),
    rec("Delivery", "a", 0.5, site=GMAIL, delivery_protocol="ESMTP"),
    rec("TransientFailure", "b", 1.1, site=GMAIL, delivery_protocol="ESMTP"),
    rec("Delivery", "b", 5.1, site=GMAIL, delivery_protocol="ESMTP"),
    rec("Bounce", "c", 3.7, queue="yahoo.com", site="s->y@smtp_client"),
    rec("Delivery", "e", 0.6, queue="box", delivery_protocol="Maildir"),
]


def test_event_time_with_nine_fraction_digits():
    assert event_seconds(stamp(1.5)) == pytest.approx(T0 + 1.5, abs=1e-5)


def test_counts_by_type_queue_and_ready_queue():
    stats = analyse(RECORDS, started=T0)
    assert stats.counts == {
        "Bounce": 1, "Delayed": 3, "Delivery": 3, "Reception": 5, "TransientFailure": 1,
    }  # fmt: skip
    assert stats.by_scheduled_queue["gmail.com"] == {
        "Delayed": 1, "Delivery": 2, "Reception": 2, "TransientFailure": 1,
    }  # fmt: skip
    assert stats.by_scheduled_queue["null"] == {"Reception": 1}
    assert stats.by_ready_queue == {
        GMAIL: {"Delayed": 1, "Delivery": 2, "TransientFailure": 1},
        "maildir": {"Delivery": 1},
        "s->y@smtp_client": {"Bounce": 1},
    }
    # d went to the null queue: received, discarded, not unfinished.
    assert (stats.received, stats.finished, stats.discarded, stats.unfinished) == (5, 4, 1, 0)


def test_latency_throughput_and_series():
    stats = analyse(RECORDS, started=T0)
    assert stats.latency_ms["max"] == pytest.approx(5000.0, abs=1)  # b: 0.1 -> 5.1
    assert stats.latency_ms["p50"] == pytest.approx(500.0, abs=1)  # 200 (e), 500 (a), 5000
    assert stats.latency_ms_by_ready_queue[GMAIL]["p50"] == pytest.approx(500.0, abs=1)
    assert stats.elapsed == pytest.approx(5.1, abs=1e-3)
    assert stats.delivered_per_second == pytest.approx(3 / 5.1, rel=1e-3)
    assert stats.bucket_seconds == 0.1
    series = stats.deliveries_per_second[GMAIL]
    assert len(series) == 51
    assert sum(series) * stats.bucket_seconds == pytest.approx(2)


def test_delays_by_reason_where_and_how_long():
    stats = analyse(RECORDS, started=T0)
    rows = {(d.reason, d.where): d for d in stats.delays}
    rate = rows["MessageRateThrottle", "yahoo.com"]
    assert (rate.messages, rate.delays) == (1, 2)
    assert rate.total_seconds == pytest.approx(3.0, abs=1e-3)
    assert rate.max_seconds == pytest.approx(2.0, abs=1e-3)
    conn = rows["ConnectionRateThrottle", GMAIL]
    assert (conn.messages, conn.delays) == (1, 1)
    assert conn.max_seconds == pytest.approx(4.0, abs=1e-3)


def test_an_unfinished_message_is_counted():
    stats = analyse([*RECORDS, rec("Reception", "f", 6.0)], started=T0)
    assert stats.unfinished == 1


@pytest.mark.parametrize(
    ("elapsed", "bucket"),
    [(0.0, 0.1), (5.9, 0.1), (6.1, 0.2), (59, 1.0), (61, 2.0), (7200, 120.0), (10**6, 600.0)],
)
def test_plot_buckets(elapsed, bucket):
    assert bucket_for(elapsed) == bucket


@pytest.mark.parametrize(
    ("text", "ok"),
    [("delivered=3", True), ("delivered==3", True), ("Delivery=3", True), ("bounced=0", False),
     ("bounced>=1", True), ("unfinished<1", True), ("discarded!=1", False),
     ("transient_failure<=1", True), ("accepted>4", True), ("received=5", True)],
)  # fmt: skip
def test_expectations(text, ok):
    values = expectation_values(analyse(RECORDS, started=T0), {"accepted": 5})
    (result,) = check_expectations([Expectation.parse(text)], values)
    assert result["ok"] is ok, result


@pytest.mark.parametrize("text", ["delivered", "delivered=x", "deliverd=3", "=3", "delivered=-1"])
def test_a_bad_expectation_is_refused(text):
    with pytest.raises(ValueError, match="invalid expectation"):
        Expectation.parse(text)


def result() -> HarnessResult:
    stats = analyse(RECORDS, started=T0)
    expectations = check_expectations(
        [Expectation.parse("delivered=3"), Expectation.parse("bounced=0")],
        expectation_values(stats, {}),
    )
    traffic = {"accepted": 5, "tempfailed": 0, "permfailed": 0, "errors": 0, "connections": 1,
               "mode": "smtp", "rate": 50.0}  # fmt: skip
    return HarnessResult(
        policy="relay.lua", messages=5, started=T0, finished_in=6.0, timed_out=False,
        traffic=traffic, sink={"accepted": 3, "sessions": 1}, stats=stats,
        depth=[[0.0, 0, 0], [0.5, 2, 1], [1.0, 1, 3], [6.0, 0, 0]],
        delayed_metrics={"delayed_due_to_message_rate_throttle": {"yahoo.com": 2.0}},
        expectations=expectations, daemon_errors=["2026 ERROR kumoq.x: <boom>"],
    )  # fmt: skip


def test_the_text_report_names_every_section():
    text = format_text(result())
    needles = ["5 messages, finished", "by scheduled queue", "by ready queue", GMAIL,
               "MessageRateThrottle", "delayed_due_to_message_rate_throttle",
               "FAIL bounced=0 (got 1)", "ok   delivered=3 (got 3)", "daemon errors"]  # fmt: skip
    assert [n for n in needles if n not in text] == []


def test_the_html_report_is_self_contained_with_both_plots():
    page = render_html(result())
    assert page.startswith("<!DOCTYPE html>")
    # Nothing is fetched: no script, stylesheet link, image or URL but the SVG namespace.
    assert not re.search(r"<script|<link|<img|@import|url\(", page)
    assert set(re.findall(r"https?://[^\s\"']+", page)) == {"http://www.w3.org/2000/svg"}
    for chart in ("deliveries", "depth"):
        svg = re.search(rf'<svg class="plot" id="{chart}".*?</svg>', page, re.S)
        assert svg is not None
        assert svg.group(0).count('class="series"') >= 2
        assert svg.group(0).count('class="point"') >= 4
    assert "&lt;boom&gt;" in page  # escaped
    assert 'class="fail"' in page
