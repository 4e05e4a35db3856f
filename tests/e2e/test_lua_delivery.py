"""End to end: protocol = {custom_lua = {constructor = ...}} delivers through policy code."""

from __future__ import annotations

import pytest

from tests.e2e.policies import policy

pytestmark = pytest.mark.integration

WEBHOOK = """
kumo.on('make.webhook', function(domain, tenant, campaign)
  local conn = { sent = 0 }
  function conn:send(msg)
    local user = msg:recipient().user
    if user == 'tempfail' then kumo.reject(450, '4.2.0 try later') end
    if user == 'permfail' then kumo.reject(550, '5.1.1 no such user') end
    if user == 'boom' then error('webhook exploded') end
    self.sent = self.sent + 1
    return 'posted to ' .. domain .. ' (#' .. self.sent .. ' on this connection)'
  end
  return conn
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    retry_interval = '1s', protocol = { custom_lua = { constructor = 'make.webhook' } },
  }
end)
"""


def test_custom_lua_delivery_success_reject_and_error(kumoq):
    daemon = kumoq(policy(WEBHOOK))
    daemon.send("s@example.com", ["a@hook.test", "b@hook.test"])
    deliveries = daemon.wait_for_records("Delivery", 2)
    contents = sorted(d["response"]["content"] for d in deliveries)
    # One connection served both messages.
    assert contents == [
        "posted to hook.test (#1 on this connection)",
        "posted to hook.test (#2 on this connection)",
    ]
    first = deliveries[0]
    assert first["response"]["code"] == 200
    assert first["delivery_protocol"] == "Lua"
    assert first["site"] == "unspecified->hook.test@lua:make.webhook"
    assert first["peer_address"] == {"name": "Lua via make.webhook", "addr": "0.0.0.0"}

    daemon.send("s@example.com", ["tempfail@hook.test", "permfail@hook.test", "boom@hook.test"])
    (bounce,) = daemon.wait_for_records("Bounce", 1)
    assert bounce["recipient"] == "permfail@hook.test"
    assert bounce["response"]["code"] == 550
    assert bounce["response"]["content"] == "no such user"
    failures = daemon.wait_for_records("TransientFailure", 4, timeout=15)
    by_rcpt: dict[str, list[dict]] = {}
    for f in failures:
        by_rcpt.setdefault(f["recipient"], []).append(f["response"])
    assert by_rcpt["tempfail@hook.test"][0]["code"] == 450
    boom = by_rcpt["boom@hook.test"][0]
    assert boom["code"] == 400
    assert "error in deliver_message" in boom["content"]
    assert "webhook exploded" in boom["content"]
