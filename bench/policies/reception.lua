-- kumoq benchmark policy, reception only: SMTP -> spool (fsync on, group commit), no delivery.
-- Every message is accepted, made durable and queued exactly as in e2e.lua, but its first
-- attempt is scheduled one hour after the policy loaded, so nothing is delivered during a run:
-- the figure is what reception alone costs. Stopping the daemon leaves the messages spooled.
-- The listener, spools and logs come from bench_init.lua (its KUMOQ_BENCH_* variables).
local kumo = require 'kumo'

-- Computed once: one os.date per message would add work that e2e.lua does not do.
local FIRST_ATTEMPT = os.date('!%Y-%m-%dT%H:%M:%SZ', os.time() + 3600)

kumo.on('init', require 'bench_init')  -- listener, spools, logs

kumo.on('smtp_server_message_received', function(msg, conn_meta)
  msg:set_scheduling { first_attempt = FIRST_ATTEMPT }
end)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    retry_interval = '1 minute',
    protocol = { maildir_path = './var/maildir' },
  }
end)
