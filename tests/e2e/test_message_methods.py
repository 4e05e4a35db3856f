"""End to end: a helper module in the style of KumoMTA's policy-extras that uses the new msg:
methods on every received message, KumoMTA's SMTP reply texts seen by smtplib, and
kumo.disconnect(..., 'FollowWith421'), all against a real daemon."""

from __future__ import annotations

import email
import email.policy
import smtplib
import socket
import subprocess
import sys

import pytest

from tests.e2e.policies import policy

pytestmark = pytest.mark.integration

# A helper as KumoMTA ships them (assets/policy-extras): a module table whose setup() takes an
# options table and registers the handlers it needs.
HELPER = """
local kumo = require 'kumo'
local mod = {}

local DEFAULT_FIXES = 'LINE_TOO_LONG|NAME_ENDS_WITH_SPACE|NEEDS_TRANSFER_ENCODING|'
  .. 'NON_CANONICAL_LINE_ENDINGS|MISSING_DATE_HEADER|MISSING_MESSAGE_ID_HEADER|'
  .. 'MISSING_MIME_VERSION'

function mod:setup(options)
  options = options or {}
  local hostname = options.hostname or 'mx.test'
  kumo.on('smtp_server_message_received', function(msg, conn_meta)
    local failed = msg:check_fix_conformance(
      options.check or 'MISSING_COLON_VALUE',
      options.fix or DEFAULT_FIXES
    )
    if failed then
      kumo.reject(552, string.format('5.6.0 %s', failed))
    end
    local from = msg:from_header()
    if from then
      msg:set_meta('from_domain', from.domain)
      msg:set_meta('from_name', from.name)
    end
    msg:import_headers {
      { name = 'X-Campaign-Id', target = 'campaign', remove = true },
      { name = 'X-*' },
    }
    local report = msg:parse_rfc3464()
    if report then
      msg:set_meta('dsn_action', report.per_recipient[1].action)
    end
    local structure = msg:parse_mime():get_simple_structure()
    msg:set_meta('attachments', #structure.attachments)
    if options.footer then
      msg:append_text_plain(options.footer)
    end
    msg:add_authentication_results(hostname, {
      { method = 'x-kumoq-test', result = 'pass', props = { ['header.from'] = from.domain } },
    })
    msg:save()
  end)
end

return mod
"""

POLICY = """
local checks = require 'message_checks'
checks:setup { footer = '-- sent through kumoq' }

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain == 'broken-queue.test' then
    error 'the queue secret'
  end
  return kumo.make_queue_config {
    retry_interval = '1s',
    protocol = { maildir_path = './var/maildir' },
  }
end)

kumo.on('smtp_server_mail_from', function(sender)
  if sender.user == 'follow' then
    kumo.disconnect(451, '4.7.1 no thank you', 'FollowWith421')
  end
  if sender.user == 'broken' then
    error 'the mail_from secret'
  end
end)
"""


@pytest.fixture
def daemon(kumoq):
    d = kumoq(policy(POLICY), start=False, name="methods")
    (d.workdir / "message_checks.lua").write_text(HELPER)
    return d.start()


def test_the_helper_rewrites_and_annotates_each_message(daemon) -> None:
    body = (
        b"From: Ann Example <ann@example.com>\r\n"
        b"To: r@example.net\r\n"
        b"Subject: quarterly report\r\n"
        b"X-Campaign-Id: q3\r\n"
        b"X-Tenant-Note: blue\r\n"
        b"\r\n"
        b"Numbers inside.\r\n"
    )
    with daemon.smtp_client() as client:
        client.sendmail("ann@example.com", ["r@example.net"], body)
    (delivery,) = daemon.wait_for_records("Delivery", 1)
    meta = delivery["meta"]
    assert (meta["from_domain"], meta["from_name"]) == ("example.com", "Ann Example")
    assert (meta["campaign"], meta["x_tenant_note"], meta["attachments"]) == ("q3", "blue", 0)
    assert "dsn_action" not in meta
    (path,) = daemon.maildir_files()
    data = path.read_bytes()
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg["Authentication-Results"].startswith("mx.test;")
    assert "x-kumoq-test=pass" in msg["Authentication-Results"]
    assert msg["Date"] is not None
    assert msg["Message-ID"].endswith("@example.com>")  # <spool id>@<sender domain>
    assert msg["Mime-Version"] == "1.0"
    assert "X-Campaign-Id" not in msg
    assert msg["X-Tenant-Note"] == "blue"
    assert msg.get_content().replace("\r\n", "\n") == "Numbers inside.\n\n-- sent through kumoq\n"


def test_a_conformance_problem_to_check_is_rejected(daemon) -> None:
    with daemon.smtp_client() as client, pytest.raises(smtplib.SMTPDataError) as info:
        client.sendmail("a@example.com", ["r@example.net"], b"Subject\r\nFrom: a@b.c\r\n\r\nx\r\n")
    assert info.value.smtp_code == 552
    assert info.value.smtp_error == b"5.6.0 Message has conformance issues: MISSING_COLON_VALUE"


def test_kumomta_reply_texts(daemon) -> None:
    with daemon.smtp_client() as client:
        code, text = client.ehlo("client.example")
        assert code == 250
        assert text.splitlines()[0] == b"mx.test Aloha client.example"
        assert client.has_extn("starttls")
        assert not client.has_extn("size")
        assert client.mail("s@example.com") == (250, b"2.1.0 OK <s@example.com>")
        assert client.rcpt("r@example.net") == (250, b"2.1.5 OK <r@example.net>")
        assert client.rset() == (250, b"2.0.0 Reset state")
        assert client.noop() == (250, b"2.0.0 the goggles do nothing")
        assert client.mail("") == (250, b"2.1.0 OK <>")
        assert client.docmd("FROB") == (502, b"5.5.1 Command unimplemented")
        assert client.helo("old.example") == (250, b"Hello old.example!")
        assert client.quit() == (221, b"2.0.0 So long, and thanks for all the fish!")


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_follow_with_421_and_policy_errors_that_do_not_leak(daemon) -> None:
    with socket.create_connection(daemon.smtp_address, timeout=10) as sock:
        sock.recv(4096)  # the banner
        sock.sendall(b"EHLO c.example\r\n")
        sock.recv(4096)
        sock.sendall(b"MAIL FROM:<follow@example.com>\r\n")
        assert read_until_closed(sock) == (
            b"451 4.7.1 no thank you\r\n421 4.3.0 mx.test disconnecting due to previous error\r\n"
        )
    with daemon.smtp_client() as client:
        client.ehlo("c.example")
        assert client.mail("broken@example.com") == (451, b"4.3.0 mx.test technical difficulties")
        assert client.noop()[0] == 250  # the session goes on
    with daemon.smtp_client() as client, pytest.raises(smtplib.SMTPDataError) as info:
        client.sendmail("a@example.com", ["r@broken-queue.test"], b"From: a@b.c\r\n\r\nx\r\n")
    assert (info.value.smtp_code, info.value.smtp_error) == (
        451,
        b"4.3.0 mx.test technical difficulties",
    )
    log = "\n".join(daemon.stderr_lines)
    assert "the mail_from secret" in log
    assert "the queue secret" in log


def test_the_policy_and_its_helper_pass_kumoq_validate(tmp_path) -> None:
    (tmp_path / "message_checks.lua").write_text(HELPER)
    (tmp_path / "init.lua").write_text(policy(POLICY))
    result = subprocess.run(
        [sys.executable, "-m", "kumoq", "validate", "--policy", str(tmp_path / "init.lua")],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
