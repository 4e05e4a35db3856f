-- kumoq benchmark policy: SMTP -> spool (fsync on, group commit) -> maildir.
-- Used by `python -m bench.run` (make bench), which runs it in a scratch directory.
-- The listener, spools and logs come from bench_init.lua (its KUMOQ_BENCH_* variables).
local kumo = require 'kumo'

kumo.on('init', require 'bench_init')  -- listener, spools, logs

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    retry_interval = '1 minute',
    protocol = { maildir_path = './var/maildir' },
  }
end)
