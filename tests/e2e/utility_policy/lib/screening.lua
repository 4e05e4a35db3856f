-- lib.screening: recipients refused by pattern, from a JSON file with
-- comments. Lives beside the policy, so require finds it first.
local mod = {}
local kumo = require 'kumo'

local function load_patterns(file_name)
  local data = kumo.serde.json_load(file_name)
  local compiled = {}
  for _, pattern in ipairs(data.blocked) do
    table.insert(compiled, kumo.regex.compile(pattern))
  end
  return compiled
end

local cached_patterns = kumo.memoize(load_patterns, {
  name = 'kq_screening',
  ttl = '1 minute',
  capacity = 1,
})

function mod.blocked(file_name, address)
  for _, re in ipairs(cached_patterns(file_name)) do
    if re:is_match(address) then
      return true
    end
  end
  return false
end

return mod
