--[[
kq.routing: per-domain delivery settings kept in a TOML file, in the style
of KumoMTA's policy-extras helpers. kumoq's end-to-end test installs this
directory on KUMOQ_LUA_PATH, as an operator would install a helper.

Usage:

  local routing = require('kq.routing'):setup { '/path/to/routing.toml' }
  local settings = routing.settings 'gmail.com'

routing.toml:

  [defaults]
  maildir = 'default'
  retry_interval = '1 minute'

  [domain.'*.example.test']
  maildir = 'wildcard'
]]
local mod = {}
local kumo = require 'kumo'

local function load_routing(file_names)
  local defaults, domains = {}, {}
  for _, file_name in ipairs(file_names) do
    local data = kumo.toml_load(file_name)
    for k, v in pairs(data.defaults or {}) do
      defaults[k] = v
    end
    for domain, params in pairs(data.domain or {}) do
      domains[domain] = params
    end
  end
  return { defaults = defaults, domains = kumo.domain_map.new(domains) }
end

function mod:setup(file_names)
  local cached_load = kumo.memoize(load_routing, {
    name = 'kq_routing',
    ttl = '5 minutes',
    capacity = 4,
  })

  local helper = {}
  -- the merged settings for a destination domain: defaults, then the best
  -- match in the domain map (exact, else wildcard)
  function helper.settings(domain)
    local data = cached_load(file_names)
    local result = {}
    for k, v in pairs(data.defaults) do
      result[k] = v
    end
    local params = data.domains[domain]
    if params then
      for k, v in pairs(params) do
        result[k] = v
      end
    end
    return result
  end
  return helper
end

return mod
