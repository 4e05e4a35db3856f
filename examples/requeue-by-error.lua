-- Retries shaped by why a delivery failed, with KumoMTA's requeue_message
-- event (docs/reference/events/requeue_message.md). Before a message that
-- failed with a 4xx goes back into its queue, the policy looks at the reply:
--
--  * greylisting (4.7.1, or "greylist" in the text) is retried soon: the
--    message moves to the tenant 'greylisted', whose queues retry every
--    GREYLIST_RETRY; moving a message makes it due at once;
--  * a full mailbox (4.2.2, or "full" in the text) is retried later: each
--    such failure counts as two attempts, so the wait doubles once more;
--  * whatever the reason, a message gives up after MAX_ATTEMPTS failed
--    attempts: kumo.reject turns the requeue into a Bounce with that text.
--
-- Try it against the smart sink, which answers by local part:
--   kumoq sink --listen 127.0.0.1:2026
--   KUMOQ_RELAY_HOST=127.0.0.1:2026 \
--     kumoq serve --policy examples/requeue-by-error.lua
--   then send to 450-greylisted@example.com or 452-mailbox-full@example.com.
local kumo = require 'kumo'

local MAX_ATTEMPTS = 6
local RETRY = '10 minutes'
local GREYLIST_RETRY = '2 minutes'

local function env(name, default)
  local value = os.getenv(name)
  if value == nil or value == '' then
    return default
  end
  return value
end

-- Deliver to the MX of each domain, or to one relay host when it is set
-- (a test sink on this machine: plain text, and loopback allowed).
local RELAY_HOST = env('KUMOQ_RELAY_HOST', nil)

kumo.on('init', function()
  kumo.start_esmtp_listener {
    listen = env('KUMOQ_SMTP_LISTEN', '127.0.0.1:2025'),
  }
  kumo.define_spool { name = 'data', path = './var/spool/data' }
  kumo.define_spool { name = 'meta', path = './var/spool/meta' }
  kumo.configure_local_logs { log_dir = './var/log', meta = { 'tenant' } }
end)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local smtp = {}
  if RELAY_HOST then
    smtp.mx_list = { RELAY_HOST }
  end
  return kumo.make_queue_config {
    retry_interval = tenant == 'greylisted' and GREYLIST_RETRY or RETRY,
    max_retry_interval = '4 hours',
    max_age = '3 days',
    protocol = { smtp = smtp },
  }
end)

kumo.on('get_egress_path_config', function(routing_domain, source, site_name)
  if RELAY_HOST then
    return kumo.make_egress_path {
      enable_tls = 'Disabled',
      prohibited_hosts = {},
    }
  end
  return kumo.make_egress_path {}
end)

local function says(response, enhanced, word)
  return response:find(' ' .. enhanced .. ' ', 1, true) ~= nil
    or response:lower():find(word, 1, true) ~= nil
end

kumo.on(
  'requeue_message',
  function(msg, response, insert_context, increment_attempts, delay)
    if not increment_attempts then
      return -- a throttle, not a failed attempt: leave it alone
    end
    -- num_attempts() does not count this failure yet.
    if msg:num_attempts() + 1 >= MAX_ATTEMPTS then
      kumo.reject(
        550,
        string.format(
          '5.4.7 gave up after %d attempts; last reply: %s',
          msg:num_attempts() + 1,
          response
        )
      )
    end
    if says(response, '4.7.1', 'greylist') then
      if msg:get_meta 'tenant' ~= 'greylisted' then
        msg:set_meta('tenant', 'greylisted')
      end
    elseif says(response, '4.2.2', 'full') then
      msg:increment_num_attempts()
    end
  end
)
