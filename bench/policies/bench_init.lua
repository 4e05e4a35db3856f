-- The init every benchmark policy shares (required as 'bench_init'; bench/e2e.py copies it next
-- to the policy): one ESMTP listener, the data and meta spools, and the local logs.
-- KUMOQ_BENCH_LISTEN   listen address (default 127.0.0.1:0, the port is read from stderr)
-- KUMOQ_BENCH_SPOOL    spool kind: LocalDisk (default), RocksDB or SQLite
local kumo = require 'kumo'

return function()
  kumo.start_esmtp_listener {
    listen = os.getenv 'KUMOQ_BENCH_LISTEN' or '127.0.0.1:0',
    hostname = 'kumoq-bench.localdomain',
    relay_hosts = { '127.0.0.1' },
  }
  local kind = os.getenv 'KUMOQ_BENCH_SPOOL' or 'LocalDisk'
  if kind == 'LocalDisk' then
    -- As KumoMTA's documentation writes it, without kind: the policy a KumoMTA user copies.
    kumo.define_spool { name = 'data', path = './var/spool/data' }
    kumo.define_spool { name = 'meta', path = './var/spool/meta' }
  else
    kumo.define_spool { name = 'data', path = './var/spool/data', kind = kind }
    kumo.define_spool { name = 'meta', path = './var/spool/meta', kind = kind }
  end
  kumo.configure_local_logs { log_dir = './var/log', max_segment_duration = '1 minute' }
end
