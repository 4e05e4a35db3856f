-- The smallest useful policy: accept mail from localhost and drop it in a maildir.
local kumo = require 'kumo'

kumo.on('init', function()
  kumo.start_esmtp_listener { listen = '127.0.0.1:0' }
  kumo.define_spool { name = 'data', path = './var/spool/data' }
  kumo.define_spool { name = 'meta', path = './var/spool/meta' }
  kumo.configure_local_logs { log_dir = './var/log' }
end)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config { protocol = { maildir_path = './var/maildir' } }
end)
