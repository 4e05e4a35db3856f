-- kumoq/kumo_http: kumo.http.build_client and its Client, Request and
-- Response objects (KumoMTA's docs/reference/kumo.http/). A Request is a
-- builder held in Lua; request:send() yields (PENDING, 'http', request) to
-- the event coroutine kumoq runs every handler in, as kumo.dns.lookup_mx
-- does, and kumoq.lua.http_api performs the request with aiohttp while the
-- event loop carries on. Arguments: py (the Python functions of
-- kumoq.lua.kumo_api.python_api), M (kumoq's private table) and kumo.
--
-- Loaded by kumo.lua as the chunk '=kumoq/kumo_http'. Formatted with stylua
-- and KumoMTA's stylua.toml.

local py, M, kumo = ...
local ERR, PENDING, EVENT_COROUTINES = M.ERR, M.PENDING, M.EVENT_COROUTINES
local setmetatable, type, error, tostring, pairs, lower =
  setmetatable, type, error, tostring, pairs, string.lower
local running, isyieldable, yield =
  coroutine.running, coroutine.isyieldable, coroutine.yield

local http = {}
kumo.http = http

local function checked(r, e)
  if r == ERR then
    error(e, 3)
  end
  return r
end

local function expect(what, value, kind)
  if type(value) ~= kind then
    error(
      'kumo.http: ' .. what .. ' must be a ' .. kind .. ', got '
        .. type(value),
      3
    )
  end
end

-- Response --------------------------------------------------------------

local Response = {}
local RESPONSE_MT = {
  __index = Response,
  __metatable = false,
  __tostring = function()
    return 'kumo.http Response'
  end,
}
local RESPONSES = setmetatable({}, { __mode = 'k' })

local function status(self)
  local r = RESPONSES[self]
  if r == nil then
    error('kumo.http: expected a Response object (call it with :)', 3)
  end
  return r
end

function Response:status_code()
  return status(self).status
end
function Response:status_reason()
  return status(self).reason
end
local function status_in(lo, hi)
  return function(self)
    local code = status(self).status
    return code >= lo and code <= hi
  end
end
Response.status_is_informational = status_in(100, 199)
Response.status_is_success = status_in(200, 299)
Response.status_is_redirection = status_in(300, 399)
Response.status_is_client_error = status_in(400, 499)
Response.status_is_server_error = status_in(500, 599)
function Response:content_length()
  return status(self).content_length
end
function Response:text()
  return status(self).text
end
function Response:bytes()
  return status(self).bytes
end
-- the headers, indexed case-insensitively; pairs gives lowercase names
function Response:headers()
  local out = {}
  for k, v in pairs(status(self).headers) do
    out[k] = v
  end
  return setmetatable(out, {
    __index = function(t, k)
      if type(k) == 'string' then
        return rawget(t, lower(k))
      end
      return nil
    end,
  })
end

-- Request ---------------------------------------------------------------

local Request = {}
local REQUEST_MT = {
  __index = Request,
  __metatable = false,
  __tostring = function()
    return 'kumo.http Request'
  end,
}
local REQUESTS = setmetatable({}, { __mode = 'k' })

local function spec(self)
  local s = REQUESTS[self]
  if s == nil then
    error('kumo.http: expected a Request object (call it with :)', 3)
  end
  return s
end

function Request:header(name, value)
  local s = spec(self)
  expect('a header name', name, 'string')
  expect('a header value', value, 'string')
  s.headers[#s.headers + 1] = { name, value }
  return self
end

function Request:headers(headers)
  local s = spec(self)
  expect('request:headers() argument', headers, 'table')
  for name, value in pairs(headers) do
    expect('a header name', name, 'string')
    expect('a header value', value, 'string')
    s.headers[#s.headers + 1] = { name, value }
  end
  return self
end

function Request:body(body)
  local s = spec(self)
  expect('the body', body, 'string')
  s.body, s.form = body, nil
  return self
end

function Request:form_url_encoded(params)
  local s = spec(self)
  expect('request:form_url_encoded() argument', params, 'table')
  local form = {}
  for k, v in pairs(params) do
    expect('a form field name', k, 'string')
    expect('a form field value', v, 'string')
    form[k] = v
  end
  s.form, s.body = form, nil
  return self
end

function Request:basic_auth(user, password)
  local s = spec(self)
  expect('the user name', user, 'string')
  if password ~= nil then
    expect('the password', password, 'string')
  end
  s.basic_auth, s.bearer_auth = { user = user, password = password }, nil
  return self
end

function Request:bearer_auth(token)
  local s = spec(self)
  expect('the token', token, 'string')
  s.bearer_auth, s.basic_auth = token, nil
  return self
end

function Request:timeout(duration)
  local s = spec(self)
  if type(duration) ~= 'string' and type(duration) ~= 'number' then
    error(
      'kumo.http: the timeout must be a duration (a number of seconds '
        .. "or a string such as '30 seconds'), got "
        .. type(duration),
      2
    )
  end
  s.timeout = checked(py.kumo_http_duration(duration))
  return self
end

function Request:send()
  local s = spec(self)
  if not EVENT_COROUTINES[running()] or not isyieldable() then
    error(
      'kumo.http: request:send() cannot wait here; call it from the '
        .. 'handler itself, not from a coroutine, metamethod or callback '
        .. "of the policy's own",
      2
    )
  end
  local ok, res = yield(PENDING, 'http', s)
  if not ok then
    error(res, 2)
  end
  local response = setmetatable({}, RESPONSE_MT)
  RESPONSES[response] = res
  return response
end

-- Client ----------------------------------------------------------------

local Client = {}
local CLIENT_MT = {
  __index = Client,
  __metatable = false,
  __tostring = function()
    return 'kumo.http Client'
  end,
}
local CLIENTS = setmetatable({}, { __mode = 'k' })

local function request(method)
  return function(self, url)
    local params = CLIENTS[self]
    if params == nil then
      error('kumo.http: expected a Client object (call it with :)', 2)
    end
    expect('the URL', url, 'string')
    local r = setmetatable({}, REQUEST_MT)
    REQUESTS[r] = {
      method = method,
      url = url,
      headers = {},
      timeout = params.timeout,
      user_agent = params.user_agent,
      insecure = params.insecure,
    }
    return r
  end
end
Client.get = request 'GET'
Client.post = request 'POST'
Client.put = request 'PUT'
function Client:close()
  if CLIENTS[self] == nil then
    error('kumo.http: expected a Client object (call it with :)', 2)
  end
end

function http.build_client(params)
  if params == nil then
    params = {}
  end
  expect('kumo.http.build_client() argument', params, 'table')
  local c = setmetatable({}, CLIENT_MT)
  CLIENTS[c] = checked(py.kumo_http_client(M.plain(params)))
  return c
end

function http.build_url(base, params)
  expect('the base URL', base, 'string')
  if params == nil then
    params = {}
  end
  expect('kumo.http.build_url() parameters', params, 'table')
  return checked(py.kumo_http_build_url(base, M.plain(params)))
end
