-- One maildir per tenant and recipient domain; the tenant comes from X-Tenant.
-- Messages sent to the "blackhole.example" domain go to the null queue (accepted, never stored).
local kumo = require 'kumo'

kumo.on('init', function()
  kumo.start_esmtp_listener {
    listen = '127.0.0.1:0',
    max_message_size = '10 MiB',
    max_recipients_per_message = 100,
  }
  kumo.define_spool { name = 'data', path = './var/spool/data', kind = 'LocalDisk' }
  kumo.define_spool { name = 'meta', path = './var/spool/meta', kind = 'LocalDisk' }
  kumo.configure_local_logs {
    log_dir = './var/log',
    max_segment_duration = '10 seconds',
    meta = { 'tenant' },
    headers = { 'Subject', 'X-*' },
  }
end)

-- X-Tenant comes from whoever sends the message: use it only when it is a plain name (letters,
-- digits, '_' and '-', at most 64 of them). Anything else, such as '../../etc' or a value with
-- '@', ':' or '!' that would change the queue name, is ignored: the message goes to 'none'.
-- (kumoq also encodes every value expanded into maildir_path, so that no value can leave the
-- maildir root whatever the policy lets through; see docs/security.md, "Maildir paths".)
local function plain_tenant(value)
  if value and #value <= 64 and value:match '^[%w_-]+$' then
    return value
  end
  return nil
end

kumo.on('smtp_server_message_received', function(msg)
  msg:import_x_headers { 'x-tenant' }
  local tenant = plain_tenant(msg:get_meta 'x_tenant')
  if tenant then
    msg:set_meta('tenant', tenant)
  end
  if msg:recipient().domain == 'blackhole.example' then
    msg:set_meta('queue', 'null')
  end
end)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    retry_interval = '30 seconds',
    max_retry_interval = '10 minutes',
    protocol = {
      maildir_path = './var/maildir/{{ tenant or "none" }}/{{ domain }}',
      dir_mode = tonumber('750', 8),
      file_mode = tonumber('640', 8),
    },
  }
end)
