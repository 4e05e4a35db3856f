-- kq-extras/sources: egress sources and pools from data files, in the style
-- of KumoMTA's policy-extras/sources.lua (kumoq's own code, written for
-- kumoq's tests).
--
-- Usage:
--   local sources = require 'kq-extras.sources'
--   sources:setup { '/opt/kumomta/etc/policy/sources.toml' }
--
-- Data file: [source.NAME] holds kumo.make_egress_source keys (the name is
-- added); [pool.NAME.SOURCE] gives a source's weight in a pool.
local mod = {}
local kumo = require 'kumo'

local function load_data(files)
  local data = { source = {}, pool = {} }
  for _, file in ipairs(files) do
    local part = kumo.serde.toml_load(file)
    for name, params in pairs(part.source or {}) do
      data.source[name] = params
    end
    for name, members in pairs(part.pool or {}) do
      data.pool[name] = members
    end
  end
  return data
end

function mod:setup(files)
  if mod.CONFIGURED then
    error 'sources helper has already been configured'
  end
  local cached_load_data = kumo.memoize(load_data, {
    name = 'kq_sources_data',
    ttl = '5 minutes',
    capacity = 10,
  })
  local function get_data()
    return cached_load_data(files)
  end
  mod.CONFIGURED = { files = files, get_data = get_data }

  kumo.on('get_egress_source', function(source_name)
    local params = { name = source_name }
    for k, v in pairs(get_data().source[source_name] or {}) do
      params[k] = v
    end
    return kumo.make_egress_source(params)
  end)

  kumo.on('get_egress_pool', function(pool_name)
    local entries = {}
    for source, member in pairs(get_data().pool[pool_name] or {}) do
      entries[#entries + 1] = { name = source, weight = member.weight }
    end
    table.sort(entries, function(a, b)
      return a.name < b.name
    end)
    return kumo.make_egress_pool { name = pool_name, entries = entries }
  end)
end

kumo.on('validate_config', function()
  if not mod.CONFIGURED then
    return
  end
  local data = mod.CONFIGURED.get_data()
  for pool, members in pairs(data.pool) do
    for source in pairs(members) do
      if not data.source[source] then
        print(
          string.format('sources: pool %s names an undefined source %s', pool, source)
        )
        kumo.validation_failed()
      end
    end
  end
end)

return mod
