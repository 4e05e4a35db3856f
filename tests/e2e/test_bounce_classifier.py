"""End to end: ``kumo.configure_bounce_classifier`` puts a rules file's class in the records."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

RULES = r"""
[rules]
InvalidRecipient = ["^(451|550) [45]\\.1\\.[1234] "]
QuotaIssues = ["^452 [45]\\.2\\.2 "]
"""

POLICY = """
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.start_esmtp_listener { listen = '127.0.0.1:0', hostname = 'mx.test' }
  kumo.define_spool { name = 'data', path = './var/spool/data' }
  kumo.define_spool { name = 'meta', path = './var/spool/meta' }
  kumo.configure_local_logs { log_dir = './var/log', max_segment_duration = '1s' }
  kumo.configure_bounce_classifier { files = { 'RULES_PATH' }, cache_size = 64 }
end)
kumo.on('smtp_server_rcpt_to', function(rcpt)
  if rcpt.user == 'refused' then kumo.reject(550, '5.1.2 no such domain') end
end)
kumo.on('make.sink', function(domain, tenant, campaign)
  local conn = {}
  function conn:send(msg)
    local user = msg:recipient().user
    if user == 'permfail' then kumo.reject(550, '5.1.1 no such user') end
    if user == 'full' then kumo.reject(452, '4.2.2 mailbox full') end
    if user == 'odd' then kumo.reject(554, 'something else') end
    return 'ok'
  end
  return conn
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    retry_interval = '1h', protocol = { custom_lua = { constructor = 'make.sink' } },
  }
end)
"""


def test_bounce_records_carry_the_class_from_the_rules_file(kumoq, tmp_path: Path):
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    daemon = kumoq(POLICY.replace("RULES_PATH", str(rules)))
    daemon.send("s@example.com", ["permfail@x.test", "full@x.test", "odd@x.test", "ok@x.test"])
    bounces = daemon.wait_for_records("Bounce", 2)
    by_rcpt = {b["recipient"]: b["bounce_classification"] for b in bounces}
    assert by_rcpt == {"permfail@x.test": "InvalidRecipient", "odd@x.test": "Uncategorized"}
    (transient,) = daemon.wait_for_records("TransientFailure", 1)
    assert transient["recipient"] == "full@x.test"
    assert transient["bounce_classification"] == "QuotaIssues"
    (delivery,) = daemon.wait_for_records("Delivery", 1)
    assert delivery["bounce_classification"] == "Uncategorized"  # never classified

    with pytest.raises(smtplib.SMTPRecipientsRefused):
        daemon.send("s@example.com", ["refused@x.test"])
    (rejection,) = daemon.wait_for_records("Rejection", 1)
    assert rejection["bounce_classification"] == "InvalidRecipient"
