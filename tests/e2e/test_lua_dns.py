"""End to end: a policy that asks kumo.dns.lookup_mx, answered by the zone-text test resolver."""

from __future__ import annotations

import smtplib

import pytest

from tests.e2e.policies import policy

pytestmark = pytest.mark.integration

ZONES = """
$ORIGIN test.
$TTL 300
gmail      MX 5  gmail-smtp-in.l.google.com.
gmail      MX 10 alt1.gmail-smtp-in.l.google.com.
googlemail MX 5  gmail-smtp-in.l.google.com.
plain      A  127.0.0.1
"""

DNS_POLICY = """
kumo.on('smtp_server_rcpt_to', function(addr, conn_meta)
  local ok, err = pcall(kumo.dns.lookup_mx, addr.domain)
  if not ok then kumo.reject(550, '5.1.2 no mail exchanger for ' .. addr.domain) end
end)
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  msg:set_meta('site', kumo.dns.lookup_mx(msg:recipient().domain).site_name)
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local mx = kumo.dns.lookup_mx(domain)
  local dir = mx.is_mx and mx.hosts[1] or 'implicit'
  if os.getenv 'KUMOQ_TEST_HOLD' then
    return kumo.make_queue_config {
      retry_interval = '1s', protocol = { custom_lua = { constructor = 'make.hold' } },
    }
  end
  return kumo.make_queue_config {
    retry_interval = '1s', protocol = { maildir_path = './var/maildir/' .. dir },
  }
end)
kumo.on('make.hold', function(domain, tenant, campaign)
  return { send = function(self, msg) kumo.reject(451, '4.3.0 held for the test') end }
end)
"""


def dns_policy() -> str:
    return policy(DNS_POLICY).replace(
        "kumo.configure_local_logs {",
        f"kumo.dns.configure_test_resolver [[{ZONES}]]\n  kumo.configure_local_logs {{",
    )


def test_queue_config_and_rcpt_checks_use_the_mx_records(kumoq):
    daemon = kumoq(dns_policy())
    daemon.send("s@example.com", ["a@gmail.test", "b@googlemail.test", "c@plain.test"])
    deliveries = daemon.wait_for_records("Delivery", 3)
    sites = {d["recipient"]: d["meta"]["site"] for d in deliveries}
    assert sites == {
        "a@gmail.test": "alt1?.gmail-smtp-in.l.google.com",
        "b@googlemail.test": "gmail-smtp-in.l.google.com",
        "c@plain.test": "plain.test",
    }
    primary = daemon.workdir / "var/maildir/gmail-smtp-in.l.google.com./new"
    assert len(list(primary.iterdir())) == 2  # both domains' first MX host
    assert len(list((daemon.workdir / "var/maildir/implicit/new").iterdir())) == 1

    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        daemon.send("s@example.com", ["x@nowhere.test"])
    code, text = info.value.recipients["x@nowhere.test"]
    assert code == 550
    assert text == b"5.1.2 no mail exchanger for nowhere.test"


def test_spooled_messages_resolve_their_queue_after_a_restart(kumoq):
    """After a restart the MX cache is cold: enumeration waits for the answer that
    get_queue_config asks for, then queues and delivers the message."""
    daemon = kumoq(dns_policy(), env={"KUMOQ_TEST_HOLD": "1"})
    daemon.send("s@example.com", ["held@gmail.test"])
    (held,) = daemon.wait_for_records("TransientFailure", 1)
    assert held["response"]["content"] == "held for the test"
    daemon.stop()
    daemon.env = {}
    daemon.start()
    (delivery,) = daemon.wait_for_records("Delivery", 1, timeout=20)
    assert delivery["recipient"] == "held@gmail.test"
    primary = daemon.workdir / "var/maildir/gmail-smtp-in.l.google.com./new"
    assert len(list(primary.iterdir())) == 1
