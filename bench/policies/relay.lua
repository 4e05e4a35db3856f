-- kumoq benchmark policy: SMTP -> spool (fsync on, group commit) -> SMTP out to smtp-sink.
-- Used by `python -m bench.run --only relay`, which starts smtp-sink on 127.0.0.1 and runs
-- this in a scratch directory.
-- KUMOQ_BENCH_LISTEN   listen address (default 127.0.0.1:0, the port is read from stderr)
-- KUMOQ_BENCH_SPOOL    spool kind: SQLite (default) or LocalDisk
-- KUMOQ_BENCH_SINK     the smtp-sink address every message is relayed to (127.0.0.1:PORT)
local kumo = require 'kumo'

local sink = os.getenv 'KUMOQ_BENCH_SINK' or '127.0.0.1:2526'

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
    protocol = { smtp = { mx_list = { sink } } },
  }
end)

kumo.on('get_egress_path_config', function(routing_domain, source, site)
  -- The sink is on loopback, which KumoMTA prohibits by default; no TLS on loopback.
  -- connection_limit (32) and max_deliveries_per_connection stay at their defaults.
  return kumo.make_egress_path {
    prohibited_hosts = {},
    enable_tls = 'Disabled',
  }
end)
