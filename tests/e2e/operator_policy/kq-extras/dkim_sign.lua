-- kq-extras/dkim_sign: DKIM signing by the From domain, with keys and
-- selectors from data files, in the style of KumoMTA's
-- policy-extras/dkim_sign.lua (kumoq's own code, written for kumoq's tests).
--
-- Usage:
--   local dkim_sign = require 'kq-extras.dkim_sign'
--   local dkim_signer = dkim_sign:setup { '/opt/kumomta/etc/policy/dkim_data.toml' }
--   kumo.on('smtp_server_message_received', function(msg)
--     dkim_signer(msg)
--   end)
--
-- Data file: [base] (headers, selector) and [domain."DOMAIN"] (selector,
-- filename, headers), as KumoMTA's helper reads them.
local mod = {}
local kumo = require 'kumo'

local function load_data(files)
  local data = { base = {}, domain = {} }
  for _, file in ipairs(files) do
    local part = kumo.serde.toml_load(file)
    for k, v in pairs(part.base or {}) do
      data.base[k] = v
    end
    for name, params in pairs(part.domain or {}) do
      data.domain[name] = params
    end
  end
  return data
end

local function signer_for(data, domain)
  local params = data.domain[domain]
  if not params then
    return nil
  end
  return kumo.dkim.rsa_sha256_signer {
    domain = domain,
    selector = params.selector or data.base.selector,
    headers = params.headers or data.base.headers,
    key = params.filename,
  }
end

function mod:setup(files)
  local cached_load_data = kumo.memoize(load_data, {
    name = 'kq_dkim_data',
    ttl = '5 minutes',
    capacity = 10,
  })
  local function sign(msg)
    local from = msg:from_header()
    local signer = from and signer_for(cached_load_data(files), from.domain)
    if signer then
      msg:dkim_sign(signer)
      msg:set_meta('dkim_domain', from.domain)
    end
  end
  mod.CONFIGURED = { sign = sign, get_data = function()
    return cached_load_data(files)
  end }
  return sign
end

kumo.on('validate_config', function()
  if not mod.CONFIGURED then
    return
  end
  -- Sign a sample message for each domain: a missing key fails here.
  for domain in pairs(mod.CONFIGURED.get_data().domain) do
    local msg = kumo.make_message(
      'postmaster@' .. domain,
      'rcpt@example.net',
      'From: <postmaster@' .. domain .. '>\r\nSubject: validate\r\n\r\nbody\r\n'
    )
    local ok, err = pcall(mod.CONFIGURED.sign, msg)
    if not ok or not msg:get_first_named_header_value 'DKIM-Signature' then
      print('dkim_sign: cannot sign for ' .. domain .. ': ' .. tostring(err))
      kumo.validation_failed()
    end
  end
end)

return mod
