-- kumoq benchmark policy: SMTP -> spool (fsync on, group commit) -> SMTP out to smtp-sink.
-- Used by `python -m bench.run --only relay`, which starts smtp-sink on 127.0.0.1 and runs
-- this in a scratch directory.
-- The listener, spools and logs come from bench_init.lua (its KUMOQ_BENCH_* variables).
-- KUMOQ_BENCH_SINK     the smtp-sink address every message is relayed to (127.0.0.1:PORT)
local kumo = require 'kumo'

local sink = os.getenv 'KUMOQ_BENCH_SINK' or '127.0.0.1:2526'

kumo.on('init', require 'bench_init')  -- listener, spools, logs

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
