-- A relay for bulk mail: one pool of two egress sources (weighted 3:1, the second one
-- warming up), a connection limit and a message rate per destination, and a retry schedule
-- that gives up after two days. Tenants and campaigns come from the X-Tenant and X-Campaign
-- headers. `kumoq simulate --scenario examples/what-if.toml` forecasts a campaign through it.
local kumo = require 'kumo'

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
    relay_hosts = { '127.0.0.1', '::1' },
  }
  kumo.define_spool { name = 'data', path = './var/spool/data' }
  kumo.define_spool { name = 'meta', path = './var/spool/meta' }
  kumo.configure_local_logs {
    log_dir = './var/log',
    meta = { 'tenant', 'campaign' },
  }
end)

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
    egress_pool = 'bulk',
    retry_interval = '10 minutes',
    max_retry_interval = '4 hours',
    max_age = '2 days',
    protocol = { smtp = {} },
  }
end)

kumo.on('get_egress_pool', function(name)
  return kumo.make_egress_pool {
    name = name,
    entries = {
      { name = 'ip-1', weight = 3 },
      { name = 'ip-2', weight = 1 },
    },
  }
end)

kumo.on('get_egress_source', function(name)
  return kumo.make_egress_source {
    name = name,
    ehlo_domain = name .. '.mta.example.com',
  }
end)

-- What each destination takes from one source: the big mailbox providers publish limits
-- (here by routing domain; a site name such as '(alt1|alt2)...' could be matched as well).
local PATHS = {
  ['gmail.com'] = { connection_limit = 20, max_deliveries_per_connection = 100 },
  ['yahoo.com'] = {
    connection_limit = 8,
    max_message_rate = '6000/h',
    max_deliveries_per_connection = 20,
  },
  ['outlook.com'] = { connection_limit = 10, max_message_rate = '10000/h' },
}

kumo.on('get_egress_path_config', function(routing_domain, source, site_name)
  local path = PATHS[routing_domain] or { connection_limit = 10 }
  return kumo.make_egress_path(path)
end)
