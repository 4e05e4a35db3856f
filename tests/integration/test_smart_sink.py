"""The smart sink (kumoq.testing.sink) over real sockets on 127.0.0.1 with stdlib smtplib: its
answers by local part, the seeded random failures, the DATA delay, the counts, the maildir
and the stats file; and ``kumoq sink`` as a process, stopped by SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kumoq.testing import SinkOptions, SinkThread

pytestmark = pytest.mark.integration

BODY = b"From: <a@example.com>\r\nSubject: hello\r\n\r\nThe body.\r\n.a dotted line\r\n"


def send(
    sink: SinkThread, recipients: list[str], body: bytes = BODY
) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP(sink.host, sink.port, timeout=30) as client:
        return client.sendmail("a@example.com", recipients, body)


def test_accepts_any_mail_and_stores_one_file_per_recipient(smart_sink):
    assert send(smart_sink, ["b@one.test", "c@two.test"]) == {}
    assert send(smart_sink, ["d@three.test"]) == {}

    counts = smart_sink.counts
    assert counts["accepted"] == 3
    assert counts["transactions"] == 2
    assert counts["stored"] == 3
    assert counts["sessions"] == 2
    assert counts["tempfailed"] == counts["permfailed"] == 0
    assert counts["bytes"] == 2 * len(BODY)
    messages = smart_sink.messages()
    assert [m["Delivered-To"] for m in messages] == ["b@one.test", "c@two.test", "d@three.test"]
    assert {m["Return-Path"] for m in messages} == {"<a@example.com>"}
    assert messages[0]["Subject"] == "hello"
    assert messages[0].get_payload() == "The body.\r\n.a dotted line\r\n"  # stuffed, unstuffed
    # tmp/ -> new/: nothing is left behind in tmp/
    assert list((smart_sink.maildir / "tmp").iterdir()) == []
    assert len(smart_sink.message_files()) == 3


@pytest.mark.parametrize(
    ("local_part", "code", "text", "counter"),
    [
        ("tempfail", 400, b"4.0.0 tempfail requested", "tempfailed"),
        ("please-TEMPFAIL-me", 400, b"4.0.0 tempfail requested", "tempfailed"),
        ("xpermfailx", 500, b"5.0.0 permfail requested", "permfailed"),
        ("450-busy", 450, b"4.0.0 you said 450-busy", "tempfailed"),
        ("550-nobody", 550, b"5.0.0 you said 550-nobody", "permfailed"),
        ("552-full", 552, b"5.0.0 you said 552-full", "permfailed"),
    ],
)
def test_answers_by_local_part(smart_sink, local_part, code, text, counter):
    refused = send(smart_sink, [f"{local_part}@example.com", "fine@example.com"])
    assert refused == {f"{local_part}@example.com": (code, text)}
    counts = smart_sink.counts
    assert counts[counter] == 1
    assert counts["accepted"] == 1
    assert [m["Delivered-To"] for m in smart_sink.messages()] == ["fine@example.com"]


def test_421_prefix_answers_421_and_closes_the_connection(smart_sink):
    with smtplib.SMTP(smart_sink.host, smart_sink.port, timeout=30) as client:
        client.ehlo()
        assert client.mail("a@example.com")[0] == 250
        assert client.rcpt("421-go-away@example.com") == (421, b"4.0.0 you said 421-go-away")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.rcpt("b@example.com")
    counts = smart_sink.counts
    assert counts["tempfailed"] == 1
    assert counts["accepted"] == 0


@pytest.mark.parametrize("smart_sink", [{"permfail_percent": 100}], indirect=True)
def test_250_prefix_is_accepted_whatever_the_percentages(smart_sink):
    refused = send(smart_sink, ["250-keep@example.com", "any@example.com"])
    assert refused == {"any@example.com": (550, b"5.1.1 random permfail (permfail_percent)")}
    assert smart_sink.counts["accepted"] == 1


def _refused_set(options: SinkOptions, recipients: list[str]) -> dict[str, int]:
    with SinkThread(options) as sink:
        with smtplib.SMTP(sink.host, sink.port, timeout=30) as client:
            client.ehlo()
            client.mail("a@example.com")
            answers = {r: client.rcpt(r)[0] for r in recipients}
        counts = sink.counts
    assert counts["tempfailed"] == sum(1 for c in answers.values() if 400 <= c < 500)
    assert counts["permfailed"] == sum(1 for c in answers.values() if c >= 500)
    return {r: c for r, c in answers.items() if c != 250}


def test_random_failures_follow_the_percentages_and_repeat_with_a_seed():
    recipients = [f"user{i}@example.com" for i in range(400)]

    def options(seed: int) -> SinkOptions:
        return SinkOptions(listen="127.0.0.1:0", tempfail_percent=20, permfail_percent=10,
                           seed=seed)  # fmt: skip

    first = _refused_set(options(7), recipients)
    again = _refused_set(options(7), recipients)
    other = _refused_set(options(8), recipients)
    assert first == again
    assert first != other
    temp = sum(1 for c in first.values() if c == 451)
    perm = sum(1 for c in first.values() if c == 550)
    assert 50 <= temp <= 110  # 20% of 400 = 80
    assert 20 <= perm <= 60  # 10% of 400 = 40


@pytest.mark.parametrize("smart_sink", [{"refuse_window": (0.0, 3600.0)}], indirect=True)
def test_refuse_window_answers_new_sessions_421_and_counts_them(smart_sink):
    for _ in range(2):
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP(smart_sink.host, smart_sink.port, timeout=30)
        assert refused.value.smtp_code == 421
    counts = smart_sink.counts
    assert counts["refused_sessions"] == 2
    assert counts["sessions"] == counts["accepted"] == 0


@pytest.mark.parametrize("smart_sink", [{"refuse_window": (3600.0, 7200.0)}], indirect=True)
def test_sessions_before_the_refuse_window_are_served(smart_sink):
    assert send(smart_sink, ["b@one.test"]) == {}
    assert smart_sink.counts["refused_sessions"] == 0


@pytest.mark.parametrize("window", [(-1.0, 5.0), (5.0, 5.0), (6.0, 5.0)])
def test_refuse_window_must_be_from_before_until(window):
    with pytest.raises(ValueError, match="refuse_window"):
        SinkOptions(refuse_window=window)


@pytest.mark.parametrize("smart_sink", [{"delay": 0.4}], indirect=True)
def test_delay_holds_the_answer_to_data(smart_sink):
    with smtplib.SMTP(smart_sink.host, smart_sink.port, timeout=30) as client:
        client.ehlo()
        started = time.monotonic()
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        envelope_time = time.monotonic() - started
        started = time.monotonic()
        code, _ = client.data(BODY)
        data_time = time.monotonic() - started
    assert code == 250
    assert data_time >= 0.4
    assert envelope_time < data_time  # MAIL and RCPT are answered at once


@pytest.mark.parametrize("smart_sink", [{"maildir": None}], indirect=True)
def test_no_store_only_counts(smart_sink):
    assert send(smart_sink, ["b@example.com"]) == {}
    counts = smart_sink.counts
    assert counts["accepted"] == 1
    assert counts["stored"] == 0
    with pytest.raises(RuntimeError, match="does not store"):
        smart_sink.messages()


def test_counts_sessions_concurrency_and_messages_per_session(smart_sink):
    clients = [smtplib.SMTP(smart_sink.host, smart_sink.port, timeout=30) for _ in range(4)]
    try:
        for n, client in enumerate(clients):
            for _ in range(n):  # 0, 1, 2 and 3 messages
                client.sendmail("a@example.com", ["b@example.com"], BODY)
        counts = smart_sink.counts
        assert counts["sessions"] == 4
        assert counts["active_sessions"] == 4
        assert counts["peak_concurrency"] == 4
    finally:
        for client in clients:
            client.quit()
    deadline = time.monotonic() + 10
    while smart_sink.counts["active_sessions"] and time.monotonic() < deadline:
        time.sleep(0.02)
    counts = smart_sink.counts
    assert counts["active_sessions"] == 0
    assert counts["messages_per_session"] == {"min": 0, "mean": 1.5, "max": 3}


def test_stats_file_is_rewritten_while_running_and_at_the_end(tmp_path):
    stats = tmp_path / "stats.json"
    options = SinkOptions(listen="127.0.0.1:0", stats_file=stats)
    with SinkThread(options) as sink:
        send(sink, ["b@example.com"])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if stats.exists() and json.loads(stats.read_text())["accepted"] == 1:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"the stats file never showed the message: {stats.read_text()}")
        send(sink, ["c@example.com"])
    final = json.loads(stats.read_text())
    assert final["accepted"] == 2
    assert final["sessions"] == 2
    assert not stats.with_name("stats.json.tmp").exists()


def test_kumoq_sink_command_prints_its_counts_on_sigterm(tmp_path: Path):
    maildir = tmp_path / "md"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kumoq", "sink", "--listen", "127.0.0.1:0",
         "--maildir", str(maildir), "--json", "--tempfail-percent", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            m = re.search(r"kumoq sink: listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
        assert port is not None
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            refused = client.sendmail("a@example.com", ["b@example.com", "permfail@x.test"], BODY)
        assert refused == {"permfail@x.test": (500, b"5.0.0 permfail requested")}
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    counts = json.loads(out)
    assert counts["accepted"] == 1
    assert counts["permfailed"] == 1
    assert len(list((maildir / "new").iterdir())) == 1


@pytest.mark.parametrize(
    ("args", "says"),
    [(["--listen", "127.0.0.1:0"], "--maildir"),
     (["--listen", "nowhere", "--no-store"], "invalid listen address 'nowhere'"),
     (["--no-store", "--tempfail-percent", "60", "--permfail-percent", "50"], "more than 100"),
     (["--no-store", "--refuse-window", "20:10"], "expected FROM:UNTIL"),
     (["--no-store", "--refuse-window", "10"], "expected FROM:UNTIL")],
)  # fmt: skip
def test_kumoq_sink_command_usage_errors(args, says):
    done = subprocess.run(
        [sys.executable, "-m", "kumoq", "sink", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert says in done.stderr


def test_kumoq_sink_command_exits_1_when_the_port_is_taken():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "kumoq", "sink", "--listen", f"127.0.0.1:{port}", "--no-store"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1
    assert "address already in use" in done.stderr
