"""The traffic generator (kumoq.testing.traffic) against the smart sink over real sockets on
127.0.0.1: counts, connection reuse and pipelining, weighted domains, headers, refusals and
421s, pacing, a server without PIPELINING (aiosmtpd), an unreachable target, and
``kumoq traffic-gen`` as a process."""

from __future__ import annotations

import json
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from kumoq.testing import TargetUnreachable, TrafficOptions, run_traffic

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_message_is_counted_on_both_sides(smart_sink, traffic):
    summary = traffic(smart_sink, count=300, concurrency=3, per_connection=50)
    assert (summary.sent, summary.accepted, summary.tempfailed, summary.permfailed,
            summary.errors) == (300, 300, 0, 0, 0)  # fmt: skip
    assert summary.connections == 6
    assert summary.unreachable is None
    assert summary.rate > 0
    assert 0 < summary.latency_ms["p50"] <= summary.latency_ms["p90"] <= summary.latency_ms["p99"]
    counts = smart_sink.counts
    assert counts["accepted"] == 300
    assert counts["sessions"] == 6
    # Connection reuse: each session carried its 50 messages.
    assert counts["messages_per_session"] == {"min": 50, "mean": 50.0, "max": 50}
    # At most 3 at once, plus a closing connection per sender not yet gone on the sink's side.
    assert counts["peak_concurrency"] <= 6
    recipients = sorted(m["Delivered-To"] for m in smart_sink.messages())
    assert recipients == sorted(f"user{i}@example.com" for i in range(300))


def test_domains_follow_their_weights_exactly(smart_sink, traffic):
    summary = traffic(smart_sink, count=730, concurrency=4,
                      domains=["gmail.com:67", "yahoo.com:6"])  # fmt: skip
    assert summary.accepted == 730
    domains = [m["Delivered-To"].partition("@")[2] for m in smart_sink.messages()]
    assert domains.count("gmail.com") == 670
    assert domains.count("yahoo.com") == 60


def test_headers_campaign_sender_and_size(smart_sink, traffic):
    summary = traffic(
        smart_sink, count=20, size="4KB", headers=["X-Tenant:acme", "X-Other: two words"],
        campaign="spring", sender="news@sender.test",
    )  # fmt: skip
    assert summary.accepted == 20
    messages = smart_sink.messages()
    assert len(messages) == 20
    for msg in messages:
        assert msg["X-Tenant"] == "acme"
        assert msg["X-Other"] == "two words"
        assert msg["X-Campaign"] == "spring"
        assert msg["From"] == "<news@sender.test>"
        assert msg["Return-Path"] == "<news@sender.test>"
        assert msg["To"] == f"<{msg['Delivered-To']}>"
    sizes = [p.stat().st_size for p in smart_sink.message_files()]
    prefix = len("Return-Path: <news@sender.test>\r\nDelivered-To: user10@example.com\r\n")
    assert all(abs(size - prefix - 4000) < 100 for size in sizes), sizes


@pytest.mark.parametrize(
    ("local_part", "field", "code"),
    [("tempfail", "tempfailed", 400), ("permfail", "permfailed", 500), ("450-", "tempfailed", 450)],
)
def test_refusals_are_counted_and_the_connection_carries_on(
    smart_sink, traffic, local_part, field, code
):
    summary = traffic(smart_sink, count=40, concurrency=2, per_connection=20,
                      local_part=local_part)  # fmt: skip
    assert getattr(summary, field) == 40
    assert summary.accepted == summary.errors == 0
    assert summary.connections == 2  # a refusal is followed by RSET, not a new connection
    assert summary.reply_samples[0].startswith(f"{code} ")
    counts = smart_sink.counts
    assert counts[field] == 40
    assert counts["sessions"] == 2


def test_a_421_closes_the_connection_and_the_rest_goes_on_a_new_one(smart_sink, traffic):
    summary = traffic(smart_sink, count=10, concurrency=1, per_connection=10, local_part="421-")
    assert summary.tempfailed == 10
    assert summary.errors == 0
    assert summary.connections == 10
    assert smart_sink.counts["sessions"] == 10


@pytest.mark.parametrize(
    "smart_sink", [{"tempfail_percent": 20, "permfail_percent": 10, "seed": 3}], indirect=True
)
def test_random_failures_match_on_both_sides(smart_sink, traffic):
    summary = traffic(smart_sink, count=500, concurrency=5)
    counts = smart_sink.counts
    assert summary.accepted + summary.tempfailed + summary.permfailed == 500
    assert (summary.accepted, summary.tempfailed, summary.permfailed) == (
        counts["accepted"], counts["tempfailed"], counts["permfailed"],
    )  # fmt: skip
    assert 60 <= summary.tempfailed <= 140
    assert 25 <= summary.permfailed <= 80


@pytest.mark.parametrize("smart_sink", [{"delay": 0.2}], indirect=True)
def test_latency_includes_the_sinks_delay(smart_sink, traffic):
    summary = traffic(smart_sink, count=10, concurrency=5, per_connection=2)
    assert summary.accepted == 10
    assert summary.latency_ms["p50"] >= 200


def test_rate_paces_the_messages(smart_sink, traffic):
    summary = traffic(smart_sink, count=30, concurrency=5, rate=60)
    assert summary.accepted == 30
    assert summary.elapsed >= 0.45  # 30 messages 1/60 s apart


class _Recorder:
    def __init__(self) -> None:
        self.recipients: list[str] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.recipients += envelope.rcpt_tos
        return "250 OK"


def test_a_server_without_pipelining_gets_one_command_at_a_time(traffic):
    handler = _Recorder()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        summary = traffic(f"127.0.0.1:{controller.port}", count=30, concurrency=2,
                          per_connection=10, local_part="x")  # fmt: skip
    finally:
        controller.stop()
    assert summary.accepted == 30
    assert sorted(handler.recipients) == sorted(f"x{i}@example.com" for i in range(30))


class _RawSmtp(socketserver.BaseRequestHandler):
    """Just enough SMTP; every chunk received is kept, to see what the client pipelined."""

    server: _RawServer

    def handle(self) -> None:
        sock = self.request
        sock.sendall(b"220 raw ready\r\n")
        buf, in_data = b"", False
        while chunk := sock.recv(65536):
            self.server.chunks.append(chunk)
            buf += chunk
            out = []
            while True:
                if in_data:
                    end = buf.find(b"\r\n.\r\n")
                    if end < 0:
                        break
                    buf, in_data = buf[end + 5 :], False
                    out.append(b"250 2.0.0 ok\r\n")
                    continue
                line, sep, buf = buf.partition(b"\r\n")
                if not sep:
                    buf = line
                    break
                verb = line[:4].upper()
                if verb == b"EHLO":
                    offer = b"250-PIPELINING\r\n" if self.server.pipelining else b""
                    out.append(b"250-raw\r\n" + offer + b"250 8BITMIME\r\n")
                elif verb == b"DATA":
                    out.append(b"354 go on\r\n")
                    in_data = True
                elif verb == b"QUIT":
                    sock.sendall(b"".join([*out, b"221 bye\r\n"]))
                    return
                else:
                    out.append(b"250 ok\r\n")
            if out:
                sock.sendall(b"".join(out))


class _RawServer(socketserver.ThreadingTCPServer):
    daemon_threads = True

    def __init__(self, pipelining: bool) -> None:
        super().__init__(("127.0.0.1", 0), _RawSmtp)
        self.pipelining = pipelining
        self.chunks: list[bytes] = []


@pytest.fixture
def raw_server(request) -> Iterator[_RawServer]:
    server = _RawServer(request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("raw_server", [True], indirect=True)
def test_pipelining_sends_one_group_per_message(raw_server, traffic):
    summary = traffic(f"127.0.0.1:{raw_server.server_address[1]}", count=20, concurrency=1,
                      per_connection=20)  # fmt: skip
    assert summary.accepted == 20
    chunks = raw_server.chunks
    # The first envelope in one write, then each body with the next envelope behind it.
    first = b"RCPT TO:<user0@example.com>\r\nDATA\r\n"
    assert any(c.startswith(b"MAIL FROM:") and c.endswith(first) for c in chunks)
    behind_body = [c for c in chunks if b"\r\n.\r\nMAIL FROM:" in c]
    assert len(behind_body) == 19
    assert len(chunks) <= 2 + 2 * 20  # EHLO, QUIT and at most two writes per message


@pytest.mark.parametrize("raw_server", [False], indirect=True)
def test_without_pipelining_each_command_waits_for_its_reply(raw_server, traffic):
    summary = traffic(f"127.0.0.1:{raw_server.server_address[1]}", count=5, concurrency=1)
    assert summary.accepted == 5
    commands = [c for c in raw_server.chunks if c[:4] in (b"MAIL", b"RCPT", b"DATA")]
    assert len(commands) == 15
    assert all(c.count(b"\r\n") == 1 for c in commands)


def test_an_unreachable_target_raises_and_sends_nothing():
    port = free_port()
    with pytest.raises(TargetUnreachable, match=f"cannot connect to 127.0.0.1:{port}") as info:
        run_traffic(TrafficOptions(target=f"127.0.0.1:{port}", count=10))
    assert info.value.summary.sent == 0
    assert info.value.summary.errors == 10


def test_traffic_gen_command_prints_json(smart_sink):
    done = subprocess.run(
        [sys.executable, "-m", "kumoq", "traffic-gen", "--target", smart_sink.target,
         "--count", "50", "--concurrency", "2", "--size", "1KB", "--domain", "a.test:1",
         "--header", "X-Tenant:acme", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["accepted"] == 50
    assert summary["mode"] == "smtp"
    assert set(summary["latency_ms"]) == {"p50", "p90", "p99", "max"}
    assert smart_sink.counts["accepted"] == 50


def test_traffic_gen_command_exits_3_when_the_target_is_unreachable():
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "kumoq", "traffic-gen", "--target", f"127.0.0.1:{port}",
         "--count", "5"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 3
    assert f"nothing sent: cannot connect to 127.0.0.1:{port}" in done.stderr
    assert done.stdout == ""


def test_traffic_gen_command_rejects_bad_options():
    done = subprocess.run(
        [sys.executable, "-m", "kumoq", "traffic-gen", "--target", "127.0.0.1:25",
         "--domain", "gmail.com:lots"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "invalid weight" in done.stderr
