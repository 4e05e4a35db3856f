"""Policy texts shared by the end-to-end tests (all bind port 0 and live under ./var)."""

from __future__ import annotations

BASE_INIT = """
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.start_esmtp_listener {{
    listen = '127.0.0.1:0',
    hostname = 'mx.test',
    {listener}
  }}
  kumo.define_spool {{ name = 'data', path = './var/spool/data', kind = '{kind}' }}
  kumo.define_spool {{ name = 'meta', path = './var/spool/meta', kind = '{kind}' }}
  kumo.configure_local_logs {{
    log_dir = './var/log', max_segment_duration = '1s', meta = {{ '*' }},
  }}
end)
"""

MAILDIR_QUEUE = """
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    retry_interval = '1s',
    protocol = { maildir_path = './var/maildir' },
  }
end)
"""

TENANT_FROM_HEADERS = """
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  local tenant = msg:get_first_named_header_value 'X-Tenant'
  if tenant then msg:set_meta('tenant', tenant) end
  local campaign = msg:get_first_named_header_value 'X-Campaign'
  if campaign then msg:set_meta('campaign', campaign) end
  if msg:recipient().domain == 'blackhole.test' then msg:set_meta('queue', 'null') end
end)
"""


def policy(*parts: str, listener: str = "", kind: str = "LocalDisk") -> str:
    """The base init (listener extras spliced in) followed by the given event handlers."""
    return BASE_INIT.format(listener=listener, kind=kind) + "\n".join(parts)
