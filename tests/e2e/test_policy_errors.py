"""A Lua error in an SMTP event, end to end (issue 14): a real ``kumoq serve`` (the ``kumoq``
fixture) and smtplib as the client.

The client gets a generic ``451 4.3.0 <host> technical difficulties`` for the command whose
event failed, never the Lua error text; the log has the error with its ``init.lua:<line>``;
and the session goes on (KumoMTA answers 421 and hangs up: docs/deviations.md#reception).
"""

from __future__ import annotations

import re
import smtplib

import pytest

from tests.e2e.policies import MAILDIR_QUEUE, policy

pytestmark = pytest.mark.integration

GENERIC = (451, b"4.3.0 mx.test technical difficulties")

FAILING_EVENTS = """
kumo.on('smtp_server_ehlo', function(domain, conn_meta)
  if domain == 'broken.test' then error('the ehlo secret') end
end)
kumo.on('smtp_server_mail_from', function(sender, conn_meta)
  if sender.domain == 'broken.test' then error('the mail_from secret') end
end)
kumo.on('smtp_server_rcpt_to', function(recipient, conn_meta)
  if recipient.domain == 'broken.test' then error('the rcpt_to secret') end
end)
kumo.on('smtp_server_data', function(msg, conn_meta)
  if msg:get_first_named_header_value('X-Break') == 'data' then error('the data secret') end
end)
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  if msg:get_first_named_header_value('X-Break') == 'received' then
    error('the message_received secret')
  end
end)
"""


@pytest.fixture
def failing(kumoq):
    return kumoq(policy(FAILING_EVENTS, MAILDIR_QUEUE))


def logged(daemon, secret: str) -> bool:
    """The error is in the log with the policy file and line that raised it."""
    pattern = rf"init\.lua:\d+: {secret}"
    return any(re.search(pattern, line) for line in daemon.stderr_lines)


def test_an_error_in_ehlo_mail_or_rcpt_refuses_that_command_only(failing) -> None:
    daemon = failing
    with daemon.smtp_client() as client:
        assert client.ehlo("broken.test") == GENERIC
        assert client.ehlo("client.test")[0] == 250
        assert client.mail("s@broken.test") == GENERIC
        assert client.mail("s@example.com")[0] == 250
        assert client.rcpt("r@broken.test") == GENERIC
        assert client.rcpt("r@example.com")[0] == 250
        assert client.data(b"Subject: still here\r\n\r\nhello\r\n")[0] == 250
    daemon.wait_for_maildir_count(1)
    for event in ("ehlo", "mail_from", "rcpt_to"):
        assert logged(daemon, f"the {event} secret")
    rejections = daemon.wait_for_records("Rejection", 3)
    assert {r["response"]["code"] for r in rejections} == {451}
    assert not any("secret" in str(r) for r in rejections)


@pytest.mark.parametrize("where", ["data", "received"])
def test_an_error_at_data_refuses_the_message_and_the_session_goes_on(failing, where) -> None:
    daemon = failing
    with daemon.smtp_client() as client:
        client.ehlo("client.test")
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("s@example.com", ["r@example.com"], f"X-Break: {where}\r\n\r\nx\r\n")
        assert (info.value.smtp_code, info.value.smtp_error) == GENERIC
        # The same connection takes the next message.
        assert (
            client.sendmail("s@example.com", ["r@example.com"], b"Subject: ok\r\n\r\nx\r\n") == {}
        )
    (stored,) = daemon.wait_for_maildir_count(1)  # only the second one: nothing of the first
    assert b"X-Break" not in stored.read_bytes()
    secret = "data" if where == "data" else "message_received"
    assert logged(daemon, f"the {secret} secret")
