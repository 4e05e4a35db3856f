"""End to end: a log hook posts Reception and Delivery records to a webhook over HTTP.

The policy builds its hook the way KumoMTA's ``policy-extras/log_hooks.lua`` helper does
(``new_json``: ``configure_log_hook`` in ``pre_init``, a ``should_enqueue_log_record`` handler
that skips records about the hook's own messages and queues the others into
``<name>.log_hook``, a ``get_queue_config`` handler giving that queue a ``custom_lua``
constructor, and a constructor whose connection POSTs each record with ``kumo.http``). The
webhook is an aiohttp server on 127.0.0.1 in a thread of the test; it is taken down (its port
closed) and then answers 503 for a while: the records wait in their queue, retried, and arrive
once it is back, none lost and none twice.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from kumoq.testing.harness import KumoqDaemon
from tests.e2e.policies import MAILDIR_QUEUE, policy

pytestmark = pytest.mark.integration

HOOK_HELPER = """
-- new_json_hook{name, url, log_parameters, queue_config}: as log_hooks:new_json
local function new_json_hook(options)
  local domain_name = options.name .. '.log_hook'
  local constructor_name = 'make.' .. domain_name

  kumo.on('pre_init', function()
    local params = { name = options.name }
    for k, v in pairs(options.log_parameters or {}) do
      params[k] = v
    end
    kumo.configure_log_hook(params)
  end)

  kumo.on('should_enqueue_log_record', function(msg, hook_name)
    if hook_name ~= options.name then
      return
    end
    local log_record = msg:get_meta 'log_record'
    -- never log that we logged that we logged...
    if log_record.reception_protocol == 'LogRecord' then
      return false
    end
    msg:set_meta('queue', domain_name)
    return true
  end)

  local queue_config = { retry_interval = '1s', max_retry_interval = '2s' }
  for k, v in pairs(options.queue_config or {}) do
    queue_config[k] = v
  end
  queue_config.protocol = { custom_lua = { constructor = constructor_name } }
  kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
    if domain ~= domain_name then
      return
    end
    return kumo.make_queue_config(queue_config)
  end)

  kumo.on(constructor_name, function(domain, tenant, campaign)
    local connection = {}
    local client = kumo.http.build_client {}
    function connection:send(message)
      local response = client
        :post(options.url)
        :header('Content-Type', 'application/json')
        :body(message:get_data())
        :send()
      local disposition = string.format(
        '%d %s: %s',
        response:status_code(),
        response:status_reason(),
        response:text()
      )
      if response:status_is_success() then
        return disposition
      end
      -- a 4xx reject: the record is retried with the queue's backoff
      kumo.reject(400, disposition)
    end
    function connection:close()
      client:close()
    end
    return connection
  end)
end

new_json_hook {
  name = 'webhook',
  url = 'http://127.0.0.1:{port}/log',
  log_parameters = { headers = { 'Subject' }, meta = { 'campaign' } },
}
"""

HOOK_QUEUE = "webhook.log_hook"


class Webhook:
    """An aiohttp server on 127.0.0.1:``port`` in a thread; ``down()`` closes the port,
    ``up(failing=n)`` opens it again, answering 503 to the next ``n`` posts."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.records: list[dict[str, Any]] = []
        self.refused = 0
        self._failing = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._lock:
            if self._failing > 0:
                self._failing -= 1
                self.refused += 1
                return web.Response(status=503, text="busy")
            self.records.append(json.loads(body))
        return web.Response(text="thanks")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/log", self._post)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._runner = runner

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _run(self, coro: Any) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def up(self, failing: int = 0) -> None:
        with self._lock:
            self._failing = failing
        self._run(self._start())

    def down(self) -> None:
        self._run(self._stop())

    def got(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.records)

    def close(self) -> None:
        self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    hook.up()
    try:
        yield hook
    finally:
        hook.close()


def hook_records(daemon: KumoqDaemon, type: str) -> list[dict[str, Any]]:
    return [r for r in daemon.records(type) if r["queue"] == HOOK_QUEUE]


def wait_for_posts(daemon: KumoqDaemon, webhook: Webhook, n: int) -> list[dict[str, Any]]:
    return daemon.wait_for(
        lambda: got if len(got := webhook.got()) >= n else None,
        timeout=60,
        what=f"{n} records posted to the webhook",
    )


def test_records_reach_the_webhook_also_after_it_was_down(kumoq, webhook):
    daemon = kumoq(policy(HOOK_HELPER.replace("{port}", str(webhook.port)), MAILDIR_QUEUE))
    for i in range(3):
        daemon.send("s@example.com", f"r{i}@dest.test", headers={"X-Campaign": f"c{i}"})
    first = wait_for_posts(daemon, webhook, 6)
    assert Counter(r["type"] for r in first) == {"Reception": 3, "Delivery": 3}
    reception = next(r for r in first if r["type"] == "Reception")
    assert reception["headers"] == {"Subject": "Hello! This is a test"}
    assert reception["reception_protocol"] == "ESMTP"

    webhook.down()
    for i in range(3, 6):
        daemon.send("s@example.com", f"r{i}@dest.test")

    # Each of the 6 new records has failed at least once against the closed port.
    def six_failed() -> list[dict[str, Any]] | None:
        fails = hook_records(daemon, "TransientFailure")
        return fails if len({f["id"] for f in fails}) >= 6 else None

    failed = daemon.wait_for(six_failed, timeout=60, what="6 hook messages failing")
    assert all("kumo.http: POST" in f["response"]["content"] for f in failed)
    assert len(webhook.got()) == 6

    webhook.up(failing=2)  # back, busy for the first two posts
    got = wait_for_posts(daemon, webhook, 12)
    deliveries = daemon.wait_for(
        lambda: ds if len(ds := hook_records(daemon, "Delivery")) >= 12 else None,
        timeout=60, what="12 hook deliveries",
    )  # fmt: skip
    assert all(d["response"]["content"] == "200 OK: thanks" for d in deliveries)
    assert webhook.refused == 2
    got = webhook.got()
    assert len(got) == 12  # none twice, and the hook's own records never posted
    assert len({(r["type"], r["id"]) for r in got}) == 12
    received = {r["id"] for r in daemon.records("Reception")}
    assert {r["id"] for r in got if r["type"] == "Reception"} == received
    assert {r["id"] for r in got if r["type"] == "Delivery"} == received
    assert all(r["queue"] != HOOK_QUEUE for r in got)
    # The hook's messages log no Reception of their own, and their records carry LogRecord.
    assert all(r["reception_protocol"] == "LogRecord" for r in deliveries)
    assert len(daemon.records("Reception")) == 6


def test_records_queued_while_the_webhook_is_down_survive_a_restart(kumoq, webhook):
    webhook.down()
    daemon = kumoq(policy(HOOK_HELPER.replace("{port}", str(webhook.port)), MAILDIR_QUEUE))
    daemon.send("s@example.com", "r@dest.test")
    daemon.wait_for(
        lambda: len({f["id"] for f in hook_records(daemon, "TransientFailure")}) >= 2,
        timeout=60,
        what="both records failing",
    )
    assert daemon.stop() == 0
    assert not [line for line in daemon.stderr_lines if "Traceback" in line]
    webhook.up()
    daemon.start()
    got = wait_for_posts(daemon, webhook, 2)
    assert Counter(r["type"] for r in got) == {"Reception": 1, "Delivery": 1}
    daemon.wait_for(lambda: len(hook_records(daemon, "Delivery")) >= 2, timeout=60)
    assert len(webhook.got()) == 2


def test_records_of_a_stopped_daemon_arrive_after_its_restart(kumoq, webhook):
    daemon = kumoq(policy(HOOK_HELPER.replace("{port}", str(webhook.port)), MAILDIR_QUEUE))
    for i in range(5):
        daemon.send("s@example.com", f"r{i}@dest.test")
    assert daemon.stop() == 0  # at once: the hooks may still be queuing their records
    assert not [line for line in daemon.stderr_lines if "Traceback" in line]
    assert not [line for line in daemon.stderr_lines if "not queued" in line]
    daemon.start()
    got = wait_for_posts(daemon, webhook, 10)
    received = {r["id"] for r in daemon.records("Reception")}
    assert len(received) == 5
    assert {(r["type"], r["id"]) for r in got} == {
        (kind, msg_id) for kind in ("Reception", "Delivery") for msg_id in received
    }


def test_the_hook_policy_passes_validate_and_runs_under_the_harness(harness, webhook, tmp_path):
    """Issue 14: the policies of tests/ in the style of each helper are loaded by ``kumoq
    validate`` and run by the harness fixture; this is the log_hooks one."""
    path = tmp_path / "hook-policy" / "init.lua"
    path.parent.mkdir()
    path.write_text(policy(HOOK_HELPER.replace("{port}", str(webhook.port)), MAILDIR_QUEUE))
    validated = subprocess.run(
        [sys.executable, "-m", "kumoq", "validate", "--policy", str(path)],
        capture_output=True, text=True, cwd=path.parent, timeout=120, check=False,
    )  # fmt: skip
    assert validated.returncode == 0, validated.stdout + validated.stderr
    result = harness(path, messages=20, timeout=120)
    assert result.traffic["accepted"] == 20
    posted = [r for r in webhook.got() if r["queue"] != HOOK_QUEUE]
    deadline = time.monotonic() + 60
    while len(posted) < 40 and time.monotonic() < deadline:
        time.sleep(0.2)
        posted = [r for r in webhook.got() if r["queue"] != HOOK_QUEUE]
    assert Counter(r["type"] for r in posted) == {"Reception": 20, "Delivery": 20}
