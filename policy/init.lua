-- kumoq's shipped policy: receive on 127.0.0.1:2025 (SMTP) and 127.0.0.1:8000 (HTTP:
-- injection, liveness, metrics) and deliver every message into ./var/maildir, keeping the
-- spool and the logs under ./var as well. The environment variables KUMOQ_SMTP_LISTEN
-- and KUMOQ_HTTP_LISTEN ('host:port', '[::1]:port') move the listeners.
-- It is KumoMTA's policy API: this file would run under kumod unchanged.
local kumo = require 'kumo'

-- The environment variable `name`, or `default` when it is unset or empty.
local function env(name, default)
  local value = os.getenv(name)
  if value == nil or value == '' then
    return default
  end
  return value
end

kumo.on('init', function()
  kumo.start_esmtp_listener {
    listen = env('KUMOQ_SMTP_LISTEN', '127.0.0.1:2025'),
    hostname = 'localhost',
    relay_hosts = { '127.0.0.1', '::1' },
  }
  -- Peers on 127.0.0.1 and ::1 (trusted_hosts' default) need no credentials.
  kumo.start_http_listener { listen = env('KUMOQ_HTTP_LISTEN', '127.0.0.1:8000') }
  -- SQLite (a kumoq extension; WAL, group commit) stores ~28x faster than KumoMTA's
  -- LocalDisk layout and makes SMTP->maildir ~2.2x faster end to end on our test machine
  -- (docs/benchmarks.md). Use kind = 'LocalDisk' for KumoMTA's on-disk layout.
  kumo.define_spool { name = 'data', path = './var/spool', kind = 'SQLite' }
  kumo.define_spool { name = 'meta', path = './var/spool', kind = 'SQLite' }
  kumo.configure_local_logs {
    log_dir = './var/log',
    max_segment_duration = '1 minute',
    meta = { 'tenant', 'campaign' },
  }
end)

-- Tenants and campaigns come from the X-Tenant and X-Campaign headers, if present.
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  local tenant = msg:get_first_named_header_value 'X-Tenant'
  if tenant then
    msg:set_meta('tenant', tenant)
  end
  local campaign = msg:get_first_named_header_value 'X-Campaign'
  if campaign then
    msg:set_meta('campaign', campaign)
  end
end)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    retry_interval = '1 minute',
    protocol = { maildir_path = './var/maildir' },
  }
end)
