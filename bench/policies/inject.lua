-- kumoq benchmark policy: HTTP injection (POST /api/inject/v1) -> spool (fsync on) -> maildir.
-- Used by `python -m bench.run --with-inject` (kumoq-inject-<kind>), driven by
-- `kumoq traffic-gen --http`. The ESMTP listener, spools and logs come from bench_init.lua;
-- the HTTP listener's port is read from the daemon's `http listener on` line on stderr.
-- KUMOQ_BENCH_HTTP   HTTP listen address (default 127.0.0.1:0)
local kumo = require 'kumo'
local bench_init = require 'bench_init'

kumo.on('init', function()
  bench_init()  -- listener, spools, logs
  kumo.start_http_listener {
    listen = os.getenv 'KUMOQ_BENCH_HTTP' or '127.0.0.1:0',
  }
end)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    retry_interval = '1 minute',
    protocol = { maildir_path = './var/maildir' },
  }
end)
