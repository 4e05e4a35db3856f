"""The events of issue 14, end to end: a real ``kumoq serve`` (the harness fixture) under real
Lua policies, smtplib as the client, the smart sink as the peer, and the records on disk.

- ``get_listener_domain`` decides relaying at RCPT TO (and again at DATA) with
  ``kumo.make_listener_domain``, beside ``relay_hosts``; once per domain and connection;
- ``smtp_server_data`` runs once per transaction, before the split and
  ``smtp_server_message_received``;
- ``requeue_message`` rebinds, caps attempts and varies the retry by error class;
- ``validate_config`` runs at start and at reload, and stops a policy that fails it;
- a handler kumoq never calls is reported at load with its line.
"""

from __future__ import annotations

import re
import smtplib
import subprocess
import sys

import pytest

from kumoq.testing.harness import KumoqStartError
from tests.e2e.policies import MAILDIR_QUEUE, policy

pytestmark = pytest.mark.integration


def line_of(text: str, needle: str) -> int:
    (number,) = [n for n, line in enumerate(text.splitlines(), 1) if needle in line]
    return number


def stderr_count(daemon, pattern: str) -> int:
    return sum(1 for line in daemon.stderr_lines if re.search(pattern, line))


def spooled(daemon) -> list[str]:
    """The messages left in the (LocalDisk) meta spool."""
    root = daemon.workdir / "var" / "spool" / "meta" / "data"
    return [p.name for p in root.rglob("*") if p.is_file()]


# -- get_listener_domain -----------------------------------------------------------------------

LISTENER_DOMAINS = """
kumo.on('get_listener_domain', function(domain, listener, conn_meta)
  kumo.log_info('listener-domain-asked', domain, listener, conn_meta:get_meta 'received_from')
  if domain == 'relay.test' or domain == 'once.test' then
    return kumo.make_listener_domain { relay_to = true }
  elseif domain == 'bounces.test' then
    return kumo.make_listener_domain { log_oob = 'LogThenDrop' }
  elseif domain == 'lan.test' then
    return kumo.make_listener_domain { relay_from = { '127.0.0.0/8' } }
  elseif domain == 'broken.test' then
    error('no listener domains today')
  end
end)
kumo.on('smtp_server_rcpt_to', function(recipient, conn_meta)
  kumo.log_info('rcpt-event', recipient.domain)
end)
"""
# Nobody is in relay_hosts: only the listener domains let mail through.
UNTRUSTED = "relay_hosts = {},"


@pytest.fixture
def listener_domains(kumoq):
    return kumoq(policy(LISTENER_DOMAINS, MAILDIR_QUEUE, listener=UNTRUSTED))


def test_listener_domains_decide_relaying_at_rcpt(listener_domains):
    daemon = listener_domains
    with daemon.smtp_client() as client:
        port = client.sock.getsockname()[1]
        client.ehlo("client.test")
        # relay_to: anyone may send to relay.test; the other recipient is refused.
        refused = client.sendmail("s@example.com", ["a@relay.test", "b@other.test"], b"x\r\n")
        assert refused == {
            "b@other.test": (550, f"5.7.1 relaying not permitted for 127.0.0.1:{port}".encode())
        }
        # relay_from: a sender in lan.test may send anywhere from 127.0.0.0/8.
        assert client.sendmail("s@lan.test", ["c@other.test"], b"x\r\n") == {}
        # No listener domain says yes: refused, and the rcpt event is not fired for it.
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("s@example.com", ["d@other.test"], b"x\r\n")
    daemon.wait_for_maildir_count(2)
    deliveries = daemon.wait_for_records("Delivery", 2)
    assert sorted(r["recipient"] for r in deliveries) == ["a@relay.test", "c@other.test"]
    rejections = daemon.wait_for_records("Rejection", 2)
    assert {r["response"]["code"] for r in rejections} == {550}
    # The relay check comes before smtp_server_rcpt_to, as in KumoMTA.
    assert stderr_count(daemon, r"rcpt-event other\.test") == 1  # c@other.test only
    listener = f"127.0.0.1:{daemon.smtp_address[1]}"
    assert stderr_count(daemon, rf"listener-domain-asked relay\.test {listener} 127\.0\.0\.1") == 1


def test_a_peer_in_relay_hosts_relays_whatever_the_listener_domains_say(kumoq):
    daemon = kumoq(policy(LISTENER_DOMAINS, MAILDIR_QUEUE))  # relay_hosts: 127.0.0.1, ::1
    assert daemon.send("s@example.com", ["a@other.test", "b@bounces.test"]) == {}
    daemon.wait_for_maildir_count(2)
    # The event still runs (log_oob and log_arf would apply), once per domain.
    assert stderr_count(daemon, r"listener-domain-asked other\.test") == 1
    assert stderr_count(daemon, r"listener-domain-asked bounces\.test") == 1


def test_each_domain_is_asked_once_per_connection(listener_domains):
    daemon = listener_domains
    for _ in range(2):
        with daemon.smtp_client() as client:
            for i in range(3):
                client.sendmail("s@example.com", [f"r{i}@once.test"], b"x\r\n")
    daemon.wait_for_maildir_count(6)
    assert stderr_count(daemon, r"listener-domain-asked once\.test") == 2
    assert stderr_count(daemon, r"listener-domain-asked example\.com") == 2  # the sender's


def test_a_log_oob_domain_takes_the_rcpt_but_nothing_is_relayed(listener_domains):
    """``log_oob`` lets RCPT TO through; kumoq does not parse reports yet, and relay_to is
    false, so at DATA the message is received (a Reception record) but not relayed:
    ``550 5.7.1 relaying not permitted``, as KumoMTA answers a message that is no report."""
    daemon = listener_domains
    with daemon.smtp_client() as client:
        client.ehlo("client.test")
        assert client.mail("s@example.com")[0] == 250
        assert client.rcpt("postmaster@bounces.test")[0] == 250
        code, text = client.data(b"Subject: not a report\r\n\r\nhello\r\n")
    assert (code, text) == (550, b"5.7.1 relaying not permitted")
    (reception,) = daemon.wait_for_records("Reception", 1)
    assert reception["recipient"] == "postmaster@bounces.test"
    daemon.stop()
    assert daemon.records("Delivery") == []
    assert daemon.maildir_files() == []
    assert spooled(daemon) == []


def test_an_error_in_get_listener_domain_is_technical_difficulties(listener_domains):
    daemon = listener_domains
    with daemon.smtp_client() as client:
        client.ehlo("client.test")
        client.mail("s@example.com")
        code, text = client.rcpt("r@broken.test")
        assert client.rcpt("r@relay.test")[0] == 250  # only that recipient was refused
    assert (code, text) == (451, b"4.3.0 mx.test technical difficulties")
    assert b"no listener domains today" not in text  # the Lua error stays in the log
    assert stderr_count(daemon, r"init\.lua:\d+: no listener domains today") >= 1


# -- smtp_server_data ------------------------------------------------------------------------

DATA_EVENT = """
kumo.on('smtp_server_data', function(msg, conn_meta)
  local data = msg:get_data()
  kumo.log_info('data-event', #msg:recipient_list(), tostring(data:find('Received:', 1, true)))
  if msg:get_first_named_header_value 'Subject' == 'reject me' then
    kumo.reject(552, '5.7.0 content refused')
  end
  local rcpts = {}
  for _, r in ipairs(msg:recipient_list()) do
    if r.user == 'team' then
      table.insert(rcpts, 'ann@example.com')
      table.insert(rcpts, 'bob@example.com')
    else
      table.insert(rcpts, tostring(r))
    end
  end
  msg:set_recipient(rcpts)
  msg:set_meta('seen_by_data', 'yes')
  msg:append_header('X-Data-Event', 'once')
end)
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  kumo.log_info('received-event', msg:recipient().user, msg:get_meta 'seen_by_data')
end)
"""


def test_smtp_server_data_runs_once_before_the_split(kumoq):
    daemon = kumoq(policy(DATA_EVENT, MAILDIR_QUEUE))
    daemon.send("s@example.com", ["team@alias.test", "carl@example.com"])
    daemon.wait_for_maildir_count(3)
    messages = daemon.maildir_messages()
    assert len(messages) == 3
    for m in messages:
        assert m.get_all("X-Data-Event") == ["once"]
        assert len(m.get_all("Received")) == 1  # its own trace header, added after the event
    receptions = daemon.wait_for_records("Reception", 3)
    assert sorted(r["recipient"] for r in receptions) == [
        "ann@example.com", "bob@example.com", "carl@example.com",
    ]  # fmt: skip
    assert {r["meta"]["seen_by_data"] for r in receptions} == {"yes"}
    events = [line for line in daemon.stderr_lines if "-event" in line]
    assert "data-event 2 nil" in events[0]  # both recipients; no Received: header yet
    assert [e.rsplit(" ", 2)[-2:] for e in events[1:]] == [
        ["ann", "yes"], ["bob", "yes"], ["carl", "yes"],
    ]  # fmt: skip


def test_a_reject_in_smtp_server_data_rejects_the_transaction(kumoq):
    daemon = kumoq(policy(DATA_EVENT, MAILDIR_QUEUE))
    with pytest.raises(smtplib.SMTPDataError) as info:
        daemon.send("s@example.com", ["a@example.com", "b@example.com"], subject="reject me")
    assert (info.value.smtp_code, info.value.smtp_error) == (552, b"5.7.0 content refused")
    assert stderr_count(daemon, "received-event") == 0
    (rejection,) = daemon.wait_for_records("Rejection", 1)
    assert rejection["response"]["code"] == 552
    assert daemon.records("Reception") == []


# -- requeue_message ---------------------------------------------------------------------------


def requeue_policy(sink_port: int) -> str:
    return policy(
        f"""
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain == 'fallback.test' then
    return kumo.make_queue_config {{ protocol = {{ maildir_path = './var/maildir' }} }}
  end
  return kumo.make_queue_config {{
    retry_interval = '1s',
    protocol = {{ smtp = {{ mx_list = {{ '127.0.0.1:{sink_port}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function(routing_domain, source, site)
  return kumo.make_egress_path {{ enable_tls = 'Disabled', prohibited_hosts = {{}} }}
end)
kumo.on('requeue_message', function(msg, response, context, increment, delay)
  kumo.log_info('requeue', msg:recipient().user, response, table.concat(context, ','),
    tostring(increment), tostring(delay), msg:num_attempts())
  if response:find('greylist', 1, true) then
    msg:set_meta('queue', 'fallback.test')  -- rebind: due now, one more attempt
    return
  end
  if response:find('full', 1, true) then
    msg:increment_num_attempts()  -- a longer backoff from here on
  end
  if msg:num_attempts() >= 2 then
    kumo.reject(550, '5.4.7 gave up after ' .. msg:num_attempts() .. ' attempts')
  end
end)
"""
    )


def test_requeue_message_rebinds_caps_attempts_and_varies_the_retry(kumoq, smart_sink):
    daemon = kumoq(requeue_policy(smart_sink.port))
    daemon.send("s@example.com", ["450-greylist@dest.test"])
    daemon.send("s@example.com", ["451-busy@dest.test"])
    daemon.send("s@example.com", ["452-full@dest.test"])

    # Rebound at the first transient failure into a maildir queue, and delivered at once.
    (delivery,) = daemon.wait_for_records("Delivery", 1, timeout=20)
    assert (delivery["recipient"], delivery["queue"]) == ("450-greylist@dest.test", "fallback.test")
    assert delivery["num_attempts"] == 1
    assert len(daemon.maildir_files()) == 1

    bounces = {r["recipient"]: r for r in daemon.wait_for_records("Bounce", 2, timeout=30)}
    busy, full = bounces["451-busy@dest.test"], bounces["452-full@dest.test"]
    # kumo.reject in requeue_message: a Bounce with its code and text, no enhanced code.
    assert busy["response"] == {
        "code": 550, "enhanced_code": None, "content": "5.4.7 gave up after 2 attempts",
        "command": None,
    }  # fmt: skip
    assert full["response"]["content"] == "5.4.7 gave up after 3 attempts"
    failures = daemon.records("TransientFailure")
    tries = {
        user: [r["num_attempts"] for r in failures if r["recipient"].startswith(user)]
        for user in ("450", "451", "452")
    }
    # The busy one is tried three times; the full one twice, each failure counting double.
    assert tries == {"450": [0], "451": [0, 1, 2], "452": [0, 2]}
    asked = [line.split("requeue ", 1)[1] for line in daemon.stderr_lines if "requeue 45" in line]
    assert "450-greylist 450 4.0.0 you said 450-greylist LoggedTransientFailure true nil 0" in (
        asked
    )
    assert sum(1 for a in asked if a.startswith("451-busy")) == 3
    daemon.stop()
    assert spooled(daemon) == []  # bounced and delivered: nothing stays


# -- validate_config at start and reload; handlers never called --------------------------------

CHECKS = """
kumo.on('validate_config', function()
  kumo.log_info('validated', 'ok')
end)
kumo.on('spool_message_enumerated', function(msg) end)
kumo.on('smtp_server_message_recieved', function(msg) end)
kumo.on('make.webhook', function(domain, tenant, campaign) end)
"""
FAILS_VALIDATION = """
kumo.on('validate_config', function()
  print('the relay table lists no pool')
  kumo.validation_failed()
end)
"""
RAISES_IN_VALIDATION = """
kumo.on('validate_config', function()
  error('the sources file is missing')
end)
"""


def test_validate_config_runs_at_start_and_unfired_handlers_are_reported(kumoq, tmp_path):
    text = policy(CHECKS, MAILDIR_QUEUE)
    daemon = kumoq(text)
    assert stderr_count(daemon, "validated ok") == 1
    enumerated = line_of(text, "spool_message_enumerated")
    typo = line_of(text, "smtp_server_message_recieved")
    assert (
        stderr_count(
            daemon,
            rf"init\.lua:{enumerated}: kumo\.on\('spool_message_enumerated'\): not yet supported",
        )
        == 1
    )
    assert (
        stderr_count(
            daemon,
            rf"init\.lua:{typo}: kumo\.on\('smtp_server_message_recieved'\): unknown event "
            r"\(did you mean 'smtp_server_message_received'\?\)",
        )
        == 1
    )
    assert stderr_count(daemon, "make.webhook") == 0  # a custom_lua constructor, by its dot
    # A reload runs validate_config again; one that fails keeps the running policy.
    answer = daemon.reload(policy(FAILS_VALIDATION, MAILDIR_QUEUE))
    assert "the running policy stays" in answer
    assert "called kumo.validation_failed()" in answer
    daemon.send("s@example.com", ["r@example.com"])  # still running, on the first policy
    daemon.wait_for_maildir_count(1)

    # kumoq validate reports the same handlers as warnings, and passes.
    path = tmp_path / "check.lua"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "kumoq", "validate", "--policy", str(path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"check.lua:{enumerated}: warning: kumo.on('spool_message_enumerated')" in (
        result.stderr
    )
    assert f"check.lua:{typo}: warning: kumo.on('smtp_server_message_recieved')" in result.stderr


@pytest.mark.parametrize(
    ("handlers", "needle", "message"),
    [
        (
            FAILS_VALIDATION,
            "kumo.validation_failed()",
            "validate_config: the policy called kumo.validation_failed() to report a failure",
        ),
        (RAISES_IN_VALIDATION, "error(", "the sources file is missing"),
        (  # a handler before it looked up DNS under pcall (kumoq validate says the same)
            "kumo.on('validate_config', function()\n"
            "  pcall(kumo.dns.lookup_mx, 'comcast.net')\n"
            "end)\n" + FAILS_VALIDATION,
            "kumo.validation_failed()",
            "validate_config: the policy called kumo.validation_failed() to report a failure",
        ),
    ],
)
def test_a_policy_failing_validate_config_does_not_start(kumoq, handlers, needle, message):
    text = policy(handlers, MAILDIR_QUEUE)
    daemon = kumoq(text, start=False)
    with pytest.raises(KumoqStartError):
        daemon.start()
    assert daemon.returncode != 0 or daemon.stop() != 0
    where = f"init.lua:{line_of(text, needle)}: "
    assert any(where in line and message in line for line in daemon.stderr_lines), (
        daemon.stderr_lines
    )
