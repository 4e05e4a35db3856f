-- Per-tenant throttles: each tenant (the X-Tenant header) may hand over
-- TENANT_RATE messages; past it, reception answers 451 with the wait, so the
-- tenant's own sender backs off (KumoMTA's kumo.make_throttle, whose name is
-- one throttle however many connections use it). A tenant on the PATIENT list
-- is slowed down instead: its session waits until the throttle admits.
--
-- Egress: every path to a destination shares one message rate and one
-- connection limit across sources and tenants
-- (additional_message_rate_throttles and additional_connection_limits: the
-- name is the shared key), so a destination sees one sender however the
-- traffic is split.
--
-- Try it against the smart sink:
--   kumoq sink --listen 127.0.0.1:2026
--   KUMOQ_RELAY_HOST=127.0.0.1:2026 \
--     kumoq serve --policy examples/tenant-throttles.lua
local kumo = require 'kumo'

local TENANT_RATE = '1,000/min'
local PATIENT = { ['newsletters'] = '10/s' }
local DESTINATION_RATE = '1000/min'
local DESTINATION_CONNECTIONS = 20

local function env(name, default)
  local value = os.getenv(name)
  if value == nil or value == '' then
    return default
  end
  return value
end

local RELAY_HOST = env('KUMOQ_RELAY_HOST', nil)

kumo.on('init', function()
  kumo.start_esmtp_listener {
    listen = env('KUMOQ_SMTP_LISTEN', '127.0.0.1:2025'),
  }
  kumo.define_spool { name = 'data', path = './var/spool/data' }
  kumo.define_spool { name = 'meta', path = './var/spool/meta' }
  kumo.configure_local_logs { log_dir = './var/log', meta = { 'tenant' } }
end)

kumo.on('smtp_server_message_received', function(msg, conn_meta)
  local tenant = msg:get_first_named_header_value 'X-Tenant' or 'default'
  msg:set_meta('tenant', tenant)
  local patient = PATIENT[tenant]
  if patient then
    kumo.make_throttle('reception-' .. tenant, patient):sleep_if_throttled()
    return
  end
  local result =
    kumo.make_throttle('reception-' .. tenant, TENANT_RATE):throttle()
  if result.throttled then
    kumo.reject(
      451,
      string.format(
        '4.4.5 tenant %s is over its rate; try again in %d seconds',
        tenant,
        result.retry_after.secs
      )
    )
  end
end)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local smtp = {}
  if RELAY_HOST then
    smtp.mx_list = { RELAY_HOST }
  end
  return kumo.make_queue_config {
    retry_interval = '1 minute',
    max_age = '1 day',
    protocol = { smtp = smtp },
  }
end)

kumo.on('get_egress_path_config', function(routing_domain, source, site_name)
  local path = {
    additional_message_rate_throttles = {
      ['destination-rate-' .. site_name] = DESTINATION_RATE,
    },
    additional_connection_limits = {
      ['destination-connections-' .. site_name] = DESTINATION_CONNECTIONS,
    },
  }
  if RELAY_HOST then
    path.enable_tls = 'Disabled'
    path.prohibited_hosts = {}
  end
  return kumo.make_egress_path(path)
end)
