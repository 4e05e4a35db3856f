-- A policy in the style of KumoMTA's example policy, built on the utility
-- modules: kumo.toml_load, kumo.memoize and kumo.domain_map (kq.routing, a
-- helper found on KUMOQ_LUA_PATH), kumo.serde.json_load and kumo.regex
-- (lib.screening, beside this file), kumo.serde.yaml_load, kumo.string,
-- kumo.time and kumo.spawn_task. Data files are named relative to the
-- daemon's working directory, as in KumoMTA.
local kumo = require 'kumo'
local routing = require('kq.routing'):setup { 'routing.toml' }
local screening = require 'lib.screening'

local tenants = kumo.serde.yaml_load('tenants.yaml').senders
local SUBJECT_TAG = kumo.regex.compile '^\\[(?<tag>[A-Za-z]+)\\]'

kumo.on('init', function()
  kumo.set_diagnostic_log_filter 'kumod=info,lua=info'
  kumo.start_esmtp_listener {
    listen = '127.0.0.1:0',
    hostname = 'mx.test',
  }
  kumo.define_spool { name = 'data', path = './var/spool/data' }
  kumo.define_spool { name = 'meta', path = './var/spool/meta' }
  kumo.configure_local_logs {
    log_dir = './var/log',
    max_segment_duration = '1s',
    meta = { '*' },
  }
  kumo.spawn_task {
    event_name = 'kq.heartbeat',
    args = { 'utility-policy' },
  }
end)

kumo.on('kq.heartbeat', function(args)
  local started = kumo.time.now()
  kumo.time.sleep(0.05)
  local slept = (kumo.time.now() - started).milliseconds >= 50
  kumo.log_info('heartbeat from', args[1], 'slept', slept)
end)

kumo.on('smtp_server_rcpt_to', function(rcpt, conn_meta)
  if screening.blocked('screening.json', rcpt.email) then
    kumo.reject(550, '5.7.1 recipient refused by policy')
  end
end)

kumo.on('smtp_server_message_received', function(msg, conn_meta)
  local settings = routing.settings(msg:recipient().domain)
  msg:set_meta('route', settings.maildir)

  local sender_domain = kumo.string.rsplitn(msg:sender().email, 2, '@')[1]
  local tenant = tenants[kumo.string.trim(sender_domain)]
  if tenant then
    msg:set_meta('tenant', tenant)
  end

  local subject = msg:get_first_named_header_value 'Subject' or ''
  msg:set_meta('subject_words', #kumo.string.split_whitespace(subject))
  local tag = SUBJECT_TAG:captures(subject)
  if tag then
    msg:set_meta('subject_tag', kumo.string.replace(tag.tag, 'x', 'X'))
  end
  local received = kumo.time.now()
  msg:set_meta('received_at', received.rfc3339)
  msg:set_meta('received_year', received.year)
end)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local settings = routing.settings(domain)
  return kumo.make_queue_config {
    retry_interval = settings.retry_interval,
    max_age = settings.max_age,
    protocol = { maildir_path = './var/maildir/' .. settings.maildir },
  }
end)
