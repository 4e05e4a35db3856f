-- kq-extras/queue: tenants, campaigns and per-domain queue settings from
-- data files, in the style of KumoMTA's policy-extras/queue.lua (kumoq's own
-- code, written for kumoq's tests).
--
-- Usage:
--   local queue_module = require 'kq-extras.queue'
--   local queue_helper = queue_module:setup { '/opt/kumomta/etc/policy/queue.toml' }
--   kumo.on('smtp_server_message_received', function(msg)
--     queue_helper:apply(msg)
--   end)
--
-- Data file keys: tenant_header, remove_tenant_header, campaign_header,
-- default_tenant, [tenant.NAME] and [queue.DOMAIN] (wildcards allowed, with
-- [queue.default] under them) holding kumo.make_queue_config keys.
local mod = {}
local kumo = require 'kumo'

local QUEUE_KEYS = { 'egress_pool', 'max_age', 'retry_interval', 'max_retry_interval' }

local function merge_into(dest, src)
  for k, v in pairs(src or {}) do
    dest[k] = v
  end
end

local function load_data(files)
  local data = { tenant = {}, queue = {} }
  for _, file in ipairs(files) do
    local part = kumo.serde.toml_load(file)
    for k, v in pairs(part) do
      if k == 'tenant' or k == 'queue' then
        merge_into(data[k], v)
      else
        data[k] = v
      end
    end
  end
  local domains = {}
  for domain, params in pairs(data.queue) do
    if domain ~= 'default' then
      domains[domain] = params
    end
  end
  data.domains = kumo.domain_map.new(domains)
  return data
end

function mod:setup(files)
  if mod.CONFIGURED then
    error 'queue helper has already been configured'
  end
  local cached_load_data = kumo.memoize(load_data, {
    name = 'kq_queue_data',
    ttl = '5 minutes',
    capacity = 10,
  })
  local function get_data()
    return cached_load_data(files)
  end

  local helper = {}
  function helper:apply(msg)
    local data = get_data()
    local tenant = data.tenant_header
      and msg:get_first_named_header_value(data.tenant_header)
    if tenant and data.remove_tenant_header then
      msg:remove_all_named_headers(data.tenant_header)
    end
    tenant = tenant or data.default_tenant
    if tenant then
      if not data.tenant[tenant] then
        kumo.reject(550, '5.7.1 unknown tenant ' .. tenant)
      end
      msg:set_meta('tenant', tenant)
    end
    local campaign = data.campaign_header
      and msg:get_first_named_header_value(data.campaign_header)
    if campaign then
      msg:set_meta('campaign', campaign)
    end
  end

  kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
    local data = get_data()
    local params = {}
    merge_into(params, data.queue.default)
    merge_into(params, data.domains[domain])
    local tenant_params = data.tenant[tenant] or {}
    for _, key in ipairs(QUEUE_KEYS) do
      if tenant_params[key] ~= nil then
        params[key] = tenant_params[key]
      end
    end
    return kumo.make_queue_config(params)
  end)

  mod.CONFIGURED = { files = files, get_data = get_data, helper = helper }
  return helper
end

kumo.on('validate_config', function()
  if not mod.CONFIGURED then
    return
  end
  -- Each data file must be one the configuration monitor covers ...
  local monitored = {}
  for _, path in ipairs(kumo.eval_config_monitor_globs()) do
    monitored[path] = true
  end
  for _, file in ipairs(mod.CONFIGURED.files) do
    if not monitored[file] then
      print('queue: ' .. file .. ' is not covered by kumo.set_config_monitor_globs')
      kumo.validation_failed()
    end
  end
  -- ... each tenant's pool must be one the sources helper defines ...
  local sources = package.loaded['kq-extras.sources']
  local data = mod.CONFIGURED.get_data()
  if sources and sources.CONFIGURED then
    local pools = sources.CONFIGURED.get_data().pool
    for name, tenant in pairs(data.tenant) do
      if tenant.egress_pool and not pools[tenant.egress_pool] then
        print('queue: tenant ' .. name .. ' uses an undefined pool ' .. tenant.egress_pool)
        kumo.validation_failed()
      end
    end
  end
  -- ... and this helper must be the last to handle get_queue_config.
  local regs = kumo.get_event_registrars 'get_queue_config'
  local mine = kumo.traceback(1)[1].short_src .. ':'
  if regs[#regs][1]:sub(1, #mine) ~= mine then
    print 'queue: another get_queue_config handler was registered after this helper'
    kumo.validation_failed()
  end
  -- A sample message through apply(): it gets the default tenant.
  local msg = kumo.make_message(
    'sender@example.com',
    'rcpt@example.com',
    'Subject: validate\r\n\r\nbody\r\n'
  )
  mod.CONFIGURED.helper:apply(msg)
  if msg:get_meta 'tenant' ~= data.default_tenant then
    print 'queue: a message without a tenant header does not get the default tenant'
    kumo.validation_failed()
  end
end)

return mod
