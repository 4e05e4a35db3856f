-- kumoq benchmark policy: SMTP -> spool (fsync on, group commit) -> maildir.
-- Used by `python -m bench.run` (make bench), which runs it in a scratch directory.
-- KUMOQ_BENCH_LISTEN   listen address (default 127.0.0.1:0, the port is read from stderr)
-- KUMOQ_BENCH_SPOOL    spool kind: SQLite (default) or LocalDisk
local kumo = require 'kumo'

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

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    retry_interval = '1 minute',
    protocol = { maildir_path = './var/maildir' },
  }
end)
