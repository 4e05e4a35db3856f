"""End to end: listener limits, policy rejections and policy errors answered over real SMTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from kumoq.testing import KumoqStartError
from tests.e2e.policies import MAILDIR_QUEUE, policy

pytestmark = pytest.mark.integration

LIMITS = """
    max_message_size = 2000,
    max_recipients_per_message = 2,
    line_length_hard_limit = 200,
    client_timeout = '1s',
"""


@pytest.fixture
def limited(kumoq):
    return kumoq(policy(MAILDIR_QUEUE, listener=LIMITS))


def _raw(daemon, *lines: bytes, read_banner: bool = True) -> list[bytes]:
    """Send raw lines (each already CRLF-terminated or not) and collect reply lines."""
    host, port = daemon.smtp_address
    with socket.create_connection((host, port), timeout=10) as sock:
        f = sock.makefile("rb")
        replies = []
        if read_banner:
            replies.append(f.readline())
        for line in lines:
            sock.sendall(line)
            while True:
                reply = f.readline()
                replies.append(reply)
                if not reply or reply[3:4] != b"-":
                    break
        return replies


def test_oversized_message_gets_552(limited):
    with limited.smtp_client() as client:
        client.ehlo("c.test")
        client.mail("s@example.com")
        client.rcpt("r@example.com")
        code, text = client.data(b"Subject: big\r\n\r\n" + (b"y" * 150 + b"\r\n") * 20)
    assert code == 552
    assert text.startswith(b"5.3.4")


def test_size_announced_at_mail_from_too_big_gets_552(limited):
    with limited.smtp_client() as client:
        client.ehlo("c.test")
        code, _text = client.mail("s@example.com", ["SIZE=5000"])
    assert code == 552


def test_too_many_recipients_gets_452(limited):
    with limited.smtp_client() as client:
        client.ehlo("c.test")
        client.mail("s@example.com")
        assert client.rcpt("a@example.com")[0] == 250
        assert client.rcpt("b@example.com")[0] == 250
        code, text = client.rcpt("c@example.com")
    assert code == 452
    assert text.startswith(b"4.5.3")


def test_line_over_hard_limit_is_rejected_with_5xx(limited):
    with limited.smtp_client() as client:
        client.ehlo("c.test")
        client.mail("s@example.com")
        client.rcpt("r@example.com")
        code, _text = client.data(b"Subject: long\r\n\r\n" + b"z" * 500 + b"\r\n")
    assert code == 500 or 550 <= code < 560


def test_bare_lf_denied_by_default(limited):
    replies = _raw(
        limited,
        b"EHLO c.test\r\n",
        b"MAIL FROM:<s@example.com>\r\n",
        b"RCPT TO:<r@example.com>\r\n",
        b"DATA\r\n",
        b"Subject: lf\r\n\r\nbare\nline\r\n.\r\n",
        b"QUIT\r\n",
    )
    data_reply = replies[-2]
    assert data_reply.startswith(b"552 5.6.0"), replies


def test_smuggled_end_of_data_is_not_an_end(limited):
    replies = _raw(
        limited,
        b"EHLO c.test\r\n",
        b"MAIL FROM:<s@example.com>\r\n",
        b"RCPT TO:<r@example.com>\r\n",
        b"DATA\r\n",
        b"Subject: smuggle\r\n\r\nhello\n.\nMAIL FROM:<evil@example.com>\r\n.\r\n",
        b"QUIT\r\n",
    )
    # Exactly one reply for the whole DATA: the smuggled MAIL FROM was never a command.
    after_354 = replies[[r[:3] for r in replies].index(b"354") + 1 :]
    assert len(after_354) == 2, replies
    assert after_354[0].startswith(b"552 5.6.0")  # the bare LFs are denied, as data
    assert after_354[1].startswith(b"221")


def test_bad_syntax_gets_501_and_bad_sequence_503(limited):
    replies = _raw(
        limited,
        b"EHLO c.test\r\n",
        b"MAIL FROM:not-an-address\r\n",
        b"RCPT TO:<r@example.com>\r\n",
        b"DATA\r\n",
        b"\xff\xfe garbage\r\n",
        b"NOOP\r\n",
    )
    codes = [r[:3] for r in replies]
    assert codes[-5] == b"501"  # MAIL syntax
    assert codes[-4] == b"503"  # RCPT before MAIL
    assert codes[-3] == b"503"  # DATA before RCPT
    assert codes[-2] == b"502"  # garbage: an unknown verb, "502 5.5.1 Command unimplemented"
    assert codes[-1] == b"250"  # the session survived


def test_idle_client_gets_421_after_client_timeout(limited):
    host, port = limited.smtp_address
    with socket.create_connection((host, port), timeout=10) as sock:
        f = sock.makefile("rb")
        assert f.readline().startswith(b"220")
        started = time.monotonic()
        reply = f.readline()
        waited = time.monotonic() - started
    assert reply.startswith(b"421 4.")
    assert 0.5 < waited < 8


@pytest.mark.parametrize(
    ("event", "command"),
    [
        ("smtp_server_ehlo", "EHLO"),
        ("smtp_server_mail_from", "MAIL"),
        ("smtp_server_rcpt_to", "RCPT"),
        ("smtp_server_message_received", "DATA"),
    ],
)
def test_kumo_reject_in_each_event_becomes_the_reply(kumoq, event, command):
    args = {
        "smtp_server_ehlo": "domain, conn_meta",
        "smtp_server_mail_from": "sender, conn_meta",
        "smtp_server_rcpt_to": "recipient, conn_meta",
        "smtp_server_message_received": "msg, conn_meta",
    }[event]
    handler = f"""
kumo.on('{event}', function({args})
  kumo.reject(554, '5.7.9 go away from {event}')
end)
"""
    daemon = kumoq(policy(handler, MAILDIR_QUEUE))
    replies = _raw(
        daemon,
        b"EHLO c.test\r\n",
        b"MAIL FROM:<s@example.com>\r\n",
        b"RCPT TO:<r@example.com>\r\n",
        b"DATA\r\n",
        b"Subject: x\r\n\r\nbody\r\n.\r\n",
    )
    rejected = [r for r in replies if r.startswith(b"554")]
    assert rejected, replies
    assert rejected[0].rstrip() == f"554 5.7.9 go away from {event}".encode()
    daemon.stop()
    if event != "smtp_server_ehlo":  # as in KumoMTA, MAIL does not require a successful EHLO
        assert daemon.maildir_files() == []
        assert daemon.records("Reception") == []
    assert any(r["response"]["code"] == 554 for r in daemon.records("Rejection"))


def test_policy_syntax_error_stops_startup_naming_file_and_line(kumoq):
    daemon = kumoq(
        "local kumo = require 'kumo'\nkumo.on('init', function()\n  x = = 1\nend)\n", start=False
    )
    with pytest.raises(KumoqStartError) as info:
        daemon.start()
    assert "init.lua:3" in str(info.value)
    assert daemon.stop() == 1 or daemon.returncode == 1


def test_unknown_config_key_names_key_allowed_keys_and_line(tmp_path):
    path = tmp_path / "init.lua"
    path.write_text(
        "local kumo = require 'kumo'\n"
        "kumo.on('init', function()\n"
        "  kumo.start_esmtp_listener { listen = '127.0.0.1:0', relay_host = {} }\n"
        "end)\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "kumoq", "validate", "--policy", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "init.lua:3" in result.stderr
    assert "relay_host" in result.stderr
    assert "relay_hosts" in result.stderr  # the allowed keys are named


def test_validate_accepts_every_example(tmp_path):
    from pathlib import Path

    examples = sorted(Path(__file__).parents[2].joinpath("examples").glob("*.lua"))
    examples.append(Path(__file__).parents[2] / "policy" / "init.lua")
    assert len(examples) >= 3
    for example in examples:
        result = subprocess.run(
            [sys.executable, "-m", "kumoq", "validate", "--policy", str(example)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=tmp_path,
        )
        assert result.returncode == 0, (example, result.stderr)


def test_kumo_disconnect_closes_after_the_reply(kumoq):
    handler = """
kumo.on('smtp_server_mail_from', function(sender, conn_meta)
  kumo.disconnect(550, '5.7.1 not from you')
end)
"""
    daemon = kumoq(policy(handler, MAILDIR_QUEUE))
    host, port = daemon.smtp_address
    with socket.create_connection((host, port), timeout=10) as sock:
        f = sock.makefile("rb")
        f.readline()
        sock.sendall(b"HELO c.test\r\nMAIL FROM:<s@example.com>\r\n")
        assert f.readline().startswith(b"250")
        assert f.readline().rstrip() == b"550 5.7.1 not from you"
        assert f.readline() == b""  # closed by the server
