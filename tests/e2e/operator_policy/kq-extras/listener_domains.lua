-- kq-extras/listener_domains: who may relay to which domain, and which
-- domains take bounces and feedback reports, from data files, in the style
-- of KumoMTA's policy-extras/listener_domains.lua (kumoq's own code, written
-- for kumoq's tests).
--
-- Usage:
--   local listener_domains = require 'kq-extras.listener_domains'
--   kumo.on('get_listener_domain', listener_domains:setup {
--     '/opt/kumomta/etc/policy/listener_domains.toml',
--   })
--
-- Data file: ["DOMAIN"] (wildcards such as "*.example.com" allowed) holds
-- kumo.make_listener_domain keys: relay_to, relay_from, log_oob, log_arf.
local mod = {}
local kumo = require 'kumo'

local function load_data(files)
  local domains = {}
  for _, file in ipairs(files) do
    for domain, params in pairs(kumo.serde.toml_load(file)) do
      domains[domain] = params
    end
  end
  return kumo.domain_map.new(domains)
end

function mod:setup(files)
  local cached_load_data = kumo.memoize(load_data, {
    name = 'kq_listener_domains_data',
    ttl = '5 minutes',
    capacity = 10,
  })
  return function(domain, listener, conn_meta)
    local params = cached_load_data(files)[domain]
    if params then
      return kumo.make_listener_domain(params)
    end
  end
end

return mod
