-- kumoq/sandbox: runs first, in every policy runtime, before any other chunk.
-- Arguments: M (kumoq's private table) and the policy's directory.
--
-- Captures what kumoq's own chunks need (debug.getinfo, debug.sethook, the
-- raw load, collectgarbage) in M, then takes it away from the policy: no python or debug
-- globals, no C modules; load, loadfile, dofile and require accept text
-- chunks only, and require finds modules in the policy's directory first,
-- naming their chunks relative to it (as error locations show them).
--
-- Where require looks, in order (package.path): the policy's directory;
-- each entry of the KUMOQ_LUA_PATH environment variable (';'-separated: a
-- directory, or a Lua template holding '?'); where KumoMTA installs its
-- helpers and keeps its policy (/opt/kumomta/share, then
-- /opt/kumomta/etc/policy, as kumod prefixes them); then Lua's default path.
-- Each directory D gives D/?.lua and D/?/init.lua, so
-- require 'policy-extras.queue' finds D/policy-extras/queue.lua.
--
-- Loaded by kumoq.lua.runtime as the chunk '=kumoq/sandbox'. Formatted with
-- stylua and KumoMTA's stylua.toml.

local M, policy_dir = ...
M.getinfo, M.sethook = debug.getinfo, debug.sethook
M.collectgarbage = collectgarbage
local raw_load, raw_loadfile = load, loadfile
M.load = raw_load
python = nil
package.loaded.python = nil
debug = nil
package.loaded.debug = nil
package.loadlib = nil
package.cpath = ''
local select = select

load = function(chunk, chunkname, mode, ...)
  if select('#', ...) > 0 then
    return raw_load(chunk, chunkname, 't', (...))
  end
  return raw_load(chunk, chunkname, 't')
end
loadfile = function(filename, mode, ...)
  if select('#', ...) > 0 then
    return raw_loadfile(filename, 't', (...))
  end
  return raw_loadfile(filename, 't')
end
dofile = function(filename)
  local chunk, err = raw_loadfile(filename, 't')
  if chunk == nil then
    error(err, 0)
  end
  return chunk()
end

local prefix = policy_dir .. '/'
local search = { prefix .. '?.lua', prefix .. '?/init.lua' }
local function add_dir(dir)
  dir = dir:gsub('/+$', '')
  search[#search + 1] = dir .. '/?.lua'
  search[#search + 1] = dir .. '/?/init.lua'
end
for entry in (os.getenv 'KUMOQ_LUA_PATH' or ''):gmatch '[^;]+' do
  entry = entry:match '^%s*(.-)%s*$'
  if entry:find('?', 1, true) then
    search[#search + 1] = entry
  elseif entry ~= '' then
    add_dir(entry)
  end
end
add_dir '/opt/kumomta/share'
add_dir '/opt/kumomta/etc/policy'
package.path = table.concat(search, ';') .. ';' .. package.path
local searchpath, open = package.searchpath, io.open

local function lua_searcher(name)
  local filename, err = searchpath(name, package.path)
  if filename == nil then
    return '\n\t' .. err
  end
  local f, oerr = open(filename, 'rb')
  if f == nil then
    error(oerr, 0)
  end
  local src = f:read 'a'
  f:close()
  local chunkname = filename
  if filename:sub(1, #prefix) == prefix then
    chunkname = filename:sub(#prefix + 1)
  end
  local chunk, lerr = raw_load(src, '@' .. chunkname, 't')
  if chunk == nil then
    error(lerr, 0)
  end
  return chunk, filename
end
package.searchers = { package.searchers[1], lua_searcher }
