"""Startup, graceful shutdown, the spool lock and schedules that survive a restart."""

from __future__ import annotations

import os
import stat
import time

import pytest

from kumoq.testing import KumoqDaemon, KumoqStartError
from tests.e2e.policies import MAILDIR_QUEUE, policy

pytestmark = pytest.mark.integration

# Deliveries fail while the file ./blocker exists (the maildir would have to live under it).
BLOCKABLE_QUEUE = """
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local f = io.open('./blocker', 'r')
  local path = './var/maildir'
  if f then f:close(); path = './blocker/maildir' end
  return kumo.make_queue_config {{
    retry_interval = '{retry}', protocol = {{ maildir_path = path }},
  }}
end)
"""


def test_sigterm_drains_and_exits_0_with_logs_sealed(kumoq):
    daemon = kumoq(policy(MAILDIR_QUEUE))
    daemon.send("s@example.com", ["r@example.com"])
    daemon.wait_for_records("Delivery", 1)
    assert daemon.stop() == 0
    assert any("shutdown complete" in line for line in daemon.stderr_lines)
    segments = [p for p in daemon.log_dir.iterdir() if p.is_file()]
    assert segments
    assert all(not (p.stat().st_mode & stat.S_IWUSR) for p in segments), "segments stay writable"


def test_second_instance_on_the_same_spool_is_refused(kumoq, tmp_path):
    first = kumoq(policy(MAILDIR_QUEUE), name="first")
    second = KumoqDaemon(first.workdir, policy(MAILDIR_QUEUE), start_timeout=20)
    with pytest.raises(KumoqStartError) as info:
        second.start()
    assert "locked by pid" in str(info.value)
    assert second.stop() == 1
    # The first instance is unaffected.
    first.send("s@example.com", ["r@example.com"])
    first.wait_for_maildir_count(1)


def test_restart_keeps_attempt_count(kumoq):
    daemon = kumoq(policy(BLOCKABLE_QUEUE.format(retry="1s")), start=False)
    (daemon.workdir / "blocker").write_text("deliveries fail while this file exists")
    daemon.start()
    daemon.send("s@example.com", ["r@example.com"])
    daemon.wait_for_records("TransientFailure", 2, timeout=15)
    daemon.stop()
    before = max(r["num_attempts"] for r in daemon.records("TransientFailure"))
    daemon.start()
    count = len(daemon.records("TransientFailure"))
    after = daemon.wait_for_records("TransientFailure", count + 1, timeout=30)[-1]
    # The count carried on from the spool instead of starting again at 0.
    assert after["num_attempts"] > before


def test_restart_keeps_due_time(kumoq):
    daemon = kumoq(policy(BLOCKABLE_QUEUE.format(retry="1 hour")), start=False)
    (daemon.workdir / "blocker").write_text("deliveries fail while this file exists")
    daemon.start()
    daemon.send("s@example.com", ["r@example.com"])
    daemon.wait_for_records("TransientFailure", 1)
    daemon.stop()
    os.remove(daemon.workdir / "blocker")
    daemon.start()
    time.sleep(3)
    # Due in an hour: the restart did not make it due now (KumoMTA would infer it was).
    assert daemon.records("Delivery") == []
    assert any("1 messages re-queued" in line for line in daemon.stderr_lines)
