"""End to end: SMTP in -> spool -> maildir, through a real ``kumoq serve`` process."""

from __future__ import annotations

import smtplib

import pytest

from tests.e2e.policies import MAILDIR_QUEUE, TENANT_FROM_HEADERS, policy

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("kind", ["LocalDisk", "SQLite"])
def test_delivers_to_maildir_with_tenant_and_campaign_queue(kumoq, kind):
    daemon = kumoq(policy(TENANT_FROM_HEADERS, MAILDIR_QUEUE, kind=kind))
    daemon.send(
        "sender@example.com",
        ["Recip@Example.COM"],
        headers={"X-Tenant": "acme", "X-Campaign": "spring"},
    )
    files = daemon.wait_for_maildir_count(1)
    content = files[0].read_bytes()
    assert content.startswith(b"Received: from ")
    assert b"This is the body." in content

    (reception,) = daemon.wait_for_records("Reception", 1)
    (delivery,) = daemon.wait_for_records("Delivery", 1)
    assert reception["queue"] == "spring:acme@example.com"
    assert reception["sender"] == "sender@example.com"
    assert reception["recipient"] == "Recip@Example.COM"
    assert reception["reception_protocol"] == "ESMTP"
    assert reception["meta"]["tenant"] == "acme"
    assert delivery["id"] == reception["id"]
    assert delivery["delivery_protocol"] == "Maildir"
    assert delivery["response"]["code"] == 200
    assert "wrote to maildir" in delivery["response"]["content"]


def test_each_recipient_becomes_its_own_message(kumoq):
    daemon = kumoq(policy(TENANT_FROM_HEADERS, MAILDIR_QUEUE))
    daemon.send("s@example.com", ["a@one.test", "b@two.test", "c@two.test"])
    daemon.wait_for_maildir_count(3)
    receptions = daemon.wait_for_records("Reception", 3)
    assert len({r["id"] for r in receptions}) == 3
    assert sorted(r["recipient"] for r in receptions) == ["a@one.test", "b@two.test", "c@two.test"]
    assert sorted(r["queue"] for r in receptions) == ["one.test", "two.test", "two.test"]
    daemon.wait_for_records("Delivery", 3)


def test_reply_lists_one_id_per_recipient(kumoq):
    daemon = kumoq(policy(MAILDIR_QUEUE))
    with daemon.smtp_client() as client:
        client.ehlo("client.test")
        client.mail("s@example.com")
        client.rcpt("a@example.com")
        client.rcpt("b@example.com")
        code, text = client.data(b"Subject: x\r\n\r\nbody\r\n")
    assert code == 250
    ids = text.decode().split("ids=")[1].split()
    assert len(ids) == 2
    assert all(len(i) == 32 for i in ids)


def test_null_queue_is_accepted_logged_and_never_stored(kumoq):
    daemon = kumoq(policy(TENANT_FROM_HEADERS, MAILDIR_QUEUE))
    daemon.send("s@example.com", ["gone@blackhole.test", "kept@example.com"])
    daemon.wait_for_maildir_count(1)
    receptions = daemon.wait_for_records("Reception", 2)
    assert sorted(r["queue"] for r in receptions) == ["example.com", "null"]
    daemon.wait_for_records("Delivery", 1)
    daemon.stop()
    # Only the real message was ever delivered; the null one never reached the maildir.
    assert len(daemon.maildir_files()) == 1
    assert len(daemon.records("Delivery")) == 1


def test_relay_denied_for_peers_outside_relay_hosts(kumoq):
    daemon = kumoq(policy(MAILDIR_QUEUE, listener="relay_hosts = { '10.0.0.0/8' },"))
    with daemon.smtp_client() as client:
        client.ehlo("client.test")
        client.mail("s@example.com")
        code, text = client.rcpt("r@example.com")
    assert code == 550
    assert text.startswith(b"5.7.1 ")
    assert b"relaying not permitted" in text
    (rejection,) = daemon.wait_for_records("Rejection", 1)
    assert rejection["response"]["code"] == 550
    assert rejection["id"] == ""


def test_get_queue_config_error_answers_4xx_and_stores_nothing(kumoq):
    broken = """
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  error('queue config is broken')
end)
"""
    daemon = kumoq(policy(broken))
    with pytest.raises(smtplib.SMTPDataError) as info:
        daemon.send("s@example.com", ["r@example.com"])
    assert 400 <= info.value.smtp_code < 500
    daemon.stop()
    assert daemon.records("Reception") == []
    spooled = [p for p in (daemon.workdir / "var/spool").rglob("*") if p.is_file()]
    assert not any(len(p.name) >= 24 for p in spooled), spooled


def test_delivery_failure_keeps_message_spooled_and_retries(kumoq, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the maildir should be")
    failing = f"""
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    retry_interval = '1s',
    protocol = {{ maildir_path = '{blocker}/maildir' }},
  }}
end)
"""
    daemon = kumoq(policy(failing))
    daemon.send("s@example.com", ["r@example.com"])
    failures = daemon.wait_for_records("TransientFailure", 2, timeout=15)
    assert failures[0]["num_attempts"] == 0
    assert failures[1]["num_attempts"] == 1
    assert "failed to write to maildir" in failures[0]["response"]["content"]
    assert daemon.records("Delivery") == []


def test_received_header_can_be_turned_off_per_listener(kumoq):
    daemon = kumoq(policy(MAILDIR_QUEUE, listener="trace_headers = { received_header = false },"))
    daemon.send("s@example.com", ["r@example.com"])
    (path,) = daemon.wait_for_maildir_count(1)
    assert path.read_bytes().startswith(b"From: <s@example.com>")
