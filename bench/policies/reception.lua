-- kumoq benchmark policy, reception only: SMTP -> spool (fsync on, group commit), no delivery.
-- Every message is accepted, made durable and queued exactly as in e2e.lua, but its first
-- attempt is scheduled one hour after the policy loaded, so nothing is delivered during a run:
-- the figure is what reception alone costs. Stopping the daemon leaves the messages spooled.
-- KUMOQ_BENCH_LISTEN   listen address (default 127.0.0.1:0, the port is read from stderr)
-- KUMOQ_BENCH_SPOOL    spool kind: SQLite (default) or LocalDisk
local kumo = require 'kumo'

-- Computed once: one os.date per message would add work that e2e.lua does not do.
local FIRST_ATTEMPT = os.date('!%Y-%m-%dT%H:%M:%SZ', os.time() + 3600)

kumo.on('init', function()
  kumo.start_esmtp_listener {
    listen = os.getenv 'KUMOQ_BENCH_LISTEN' or '127.0.0.1:0',
    hostname = 'kumoq-bench.localdomain',
    relay_hosts = { '127.0.0.1' },
  }
  local kind = os.getenv 'KUMOQ_BENCH_SPOOL' or 'SQLite'
  kumo.define_spool { name = 'data', path = './var/spool/data', kind = kind }
  kumo.define_spool { name = 'meta', path = './var/spool/meta', kind = kind }
  kumo.configure_local_logs { log_dir = './var/log', max_segment_duration = '1 minute' }
end)

kumo.on('smtp_server_message_received', function(msg, conn_meta)
  msg:set_scheduling { first_attempt = FIRST_ATTEMPT }
end)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    retry_interval = '1 minute',
    protocol = { maildir_path = './var/maildir' },
  }
end)
