-- kumoq benchmark policy: relay.lua with DKIM signing on, as KumoMTA's examples sign.
-- Used by `python -m bench.run --with-dkim`, which writes a 2048-bit RSA key into the run's
-- scratch directory and names it in KUMOQ_BENCH_DKIM_KEY.
-- The signer is asked for per message, as KumoMTA's dkim_sign helper does: kumo.dkim keeps it
-- (and its parsed key) for `ttl`, so the cost measured is the signing itself.
local kumo = require 'kumo'
require 'relay' -- the relay case: listener, spools, logs, queue config, egress path

local key = os.getenv 'KUMOQ_BENCH_DKIM_KEY' or 'dkim.key'

kumo.on('smtp_server_message_received', function(msg)
  local signer = kumo.dkim.rsa_sha256_signer {
    domain = msg:sender().domain,
    selector = 'bench',
    headers = { 'From', 'To', 'Subject', 'Date', 'Message-ID' },
    key = key,
  }
  msg:dkim_sign(signer)
end)
