-- kumoq benchmark policy: relay.lua with DKIM signing on, as KumoMTA's examples sign.
-- Used by `python -m bench.run --with-dkim`, which writes a 2048-bit RSA key into the run's
-- scratch directory and names it in KUMOQ_BENCH_DKIM_KEY.
-- The signer is asked for per message, as KumoMTA's dkim_sign helper does: kumo.dkim keeps it
-- (and its parsed key) for `ttl`, so the cost measured is the signing itself.
local kumo = require 'kumo'

local sink = os.getenv 'KUMOQ_BENCH_SINK' or '127.0.0.1:2526'
local key = os.getenv 'KUMOQ_BENCH_DKIM_KEY' or 'dkim.key'

kumo.on('init', require 'bench_init')  -- listener, spools, logs

kumo.on('smtp_server_message_received', function(msg)
  local signer = kumo.dkim.rsa_sha256_signer {
    domain = msg:sender().domain,
    selector = 'bench',
    headers = { 'From', 'To', 'Subject', 'Date', 'Message-ID' },
    key = key,
  }
  msg:dkim_sign(signer)
end)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    retry_interval = '1 minute',
    protocol = { smtp = { mx_list = { sink } } },
  }
end)

kumo.on('get_egress_path_config', function(routing_domain, source, site)
  return kumo.make_egress_path {
    prohibited_hosts = {},
    enable_tls = 'Disabled',
  }
end)
