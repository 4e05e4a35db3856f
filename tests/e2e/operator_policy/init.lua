-- An operator's policy in the shape of KumoMTA's example policy
-- (docs/userguide/configuration/example.md), built on kumoq's own helpers in
-- kq-extras/, each written in the style of the KumoMTA helper of the same
-- name. kumoq's end-to-end tests install a copy and change only its paths
-- (tests/e2e/test_operator_policy.py).

-- This require statement is needed in any script passed to KumoMTA.
local kumo = require 'kumo'

-- Where the data files live.
local ETC = '/opt/kumomta/etc/policy'

-- Load the policy helpers to simplify common configuration use cases
local queue_module = require 'kq-extras.queue'
local listener_domains = require 'kq-extras.listener_domains'
local sources = require 'kq-extras.sources'
local dkim_sign = require 'kq-extras.dkim_sign'

-- START SETUP

-- Configure the sending IP addresses: pools and sources from a data file.
sources:setup { ETC .. '/sources.toml' }

-- Configure DKIM signing by the From domain.
local dkim_signer = dkim_sign:setup { ETC .. '/dkim_data.toml' }

-- The queue helper, set up last (see the end of this file).
local queue_helper

-- Traffic shaping from a data file (kumo.shaping.load, as the shaping helper).
local shaper = kumo.shaping.load { ETC .. '/shaping.toml' }

-- Called On Startup, handles initial configuration
kumo.on('init', function()
  -- Changes to the data files take effect at a reload; say which files they are.
  kumo.set_config_monitor_globs { ETC .. '/*.toml' }

  -- Configure the spool, with one spool for the data and one for the meta.
  kumo.define_spool {
    name = 'data',
    path = '/var/spool/kumoq-operator/data',
  }
  kumo.define_spool {
    name = 'meta',
    path = '/var/spool/kumoq-operator/meta',
  }

  -- Configure logging to local disk, with the meta the helpers set.
  kumo.configure_local_logs {
    log_dir = '/var/log/kumoq-operator',
    max_segment_duration = '1 second',
    meta = { 'tenant', 'campaign', 'dkim_domain', 'requeued' },
  }

  -- Define an SMTP listener.
  kumo.start_esmtp_listener {
    listen = '0.0.0.0:25',
    hostname = 'mail.example.com',
    -- override the default set of relay hosts
    relay_hosts = { '127.0.0.1', '192.168.1.0/24' },
  }
end) -- END OF THE INIT EVENT

-- Listener domains: relaying, bounces and feedback reports.
kumo.on(
  'get_listener_domain',
  listener_domains:setup { ETC .. '/listener_domains.toml' }
)

-- Shaping per destination site.
kumo.on(
  'get_egress_path_config',
  function(routing_domain, egress_source, site_name)
    return kumo.make_egress_path(
      shaper:get_egress_path_config(routing_domain, egress_source, site_name)
    )
  end
)

-- Processing of incoming messages via SMTP
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  -- Assign tenant and campaign based on headers.
  queue_helper:apply(msg)

  -- A Message-ID and a Date for the messages that lack them.
  msg:check_fix_conformance(
    '',
    'MISSING_MESSAGE_ID_HEADER|MISSING_DATE_HEADER'
  )

  -- SIGNING MUST COME LAST OR YOU COULD BREAK YOUR DKIM SIGNATURES
  dkim_signer(msg)
end)

-- A transient failure: note it, and give up after a few attempts.
kumo.on('requeue_message', function(msg, smtp_response)
  msg:set_meta('requeued', 'yes')
  if msg:num_attempts() >= 20 then
    kumo.reject(550, '5.4.7 gave up after ' .. msg:num_attempts() .. ' attempts')
  end
end)

-- Configure queue management settings. This is not throttling; it is
-- how long and how often to retry. The queue helper registers its
-- get_queue_config handler last, as it checks in validate_config.
queue_helper = queue_module:setup { ETC .. '/queue.toml' }
