-- kumoq/sandbox: runs first, in every policy runtime, before any other chunk.
-- Arguments: M (kumoq's private table) and the policy's directory.
--
-- Captures what kumoq's own chunks need (debug.getinfo, debug.sethook, the
-- raw load, collectgarbage) in M, then takes it away from the policy: no python or debug
-- globals, no C modules; load, loadfile, dofile and require accept text
-- chunks only, and require finds modules in the policy's directory first,
-- naming their chunks relative to it (as error locations show them).
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
package.path = prefix .. '?.lua;' .. prefix .. '?/init.lua;' .. package.path
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
