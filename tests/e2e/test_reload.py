"""SIGHUP and kumo.bump_config_epoch reload the policy (issue 9, defect 7).

The new policy is loaded and validated; queue and egress configs are refreshed; listeners and
spooled messages stay. A policy that fails to load leaves the running one in place, and the
reason (file and line) is logged.
"""

from __future__ import annotations

import pytest

from tests.e2e.policies import policy

pytestmark = pytest.mark.integration


def routed_to(box: str, retry: str = "1s") -> str:
    """A policy that delivers every message into the maildir ./var/<box>."""
    return policy(
        f"""
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    retry_interval = '{retry}', protocol = {{ maildir_path = './var/{box}' }},
  }}
end)
"""
    )


def test_sighup_loads_the_new_policy_and_keeps_listeners_and_spool(kumoq):
    daemon = kumoq(routed_to("first"))
    address = daemon.smtp_address
    daemon.send("s@example.com", ["r@example.com"])
    daemon.wait_for(lambda: daemon.maildir_files(daemon.workdir / "var/first"), what="first")
    line = daemon.reload(routed_to("second"))
    assert "reload: policy" in line
    assert "config epoch 1" in line
    assert daemon.running
    # The same listener, and the existing queue now has the new config.
    daemon.send("s@example.com", ["r@example.com"])
    daemon.wait_for(lambda: daemon.maildir_files(daemon.workdir / "var/second"), what="second")
    assert daemon.smtp_address == address
    assert len(daemon.maildir_files(daemon.workdir / "var/first")) == 1
    assert daemon.stop() == 0


def test_a_policy_that_fails_to_load_leaves_the_running_one(kumoq):
    daemon = kumoq(routed_to("first"))
    broken = routed_to("second") + "\nthis is not lua\n"
    line = daemon.reload(broken)
    assert "the running policy stays" in line
    assert "init.lua:" in line  # names the file and the line
    assert daemon.running
    daemon.send("s@example.com", ["r@example.com"])
    daemon.wait_for(lambda: daemon.maildir_files(daemon.workdir / "var/first"), what="first")
    assert not (daemon.workdir / "var/second").exists()
    assert daemon.stop() == 0


def test_changes_to_listeners_are_said_to_need_a_restart(kumoq):
    daemon = kumoq(routed_to("first"))
    changed = routed_to("first").replace("hostname = 'mx.test'", "hostname = 'mx2.test'")
    daemon.reload(changed)
    assert any(
        "changes to ESMTP listeners take effect at the next restart" in line
        for line in daemon.stderr_lines
    )
    assert daemon.running


def test_messages_waiting_in_the_spool_survive_a_reload(kumoq):
    # A queue that fails every attempt (its maildir lives under a file), retried every 2 s.
    blocked = policy(
        """
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    retry_interval = '2s', protocol = { maildir_path = './blocker/maildir' },
  }
end)
"""
    )
    daemon = kumoq(blocked, start=False)
    (daemon.workdir / "blocker").write_text("deliveries fail while this file exists")
    daemon.start()
    daemon.send("s@example.com", ["r@example.com"])
    daemon.wait_for_records("TransientFailure", 1)
    daemon.reload(routed_to("after"))
    # The message that was waiting is delivered by the new policy's config at its retry.
    daemon.wait_for(
        lambda: daemon.maildir_files(daemon.workdir / "var/after"), timeout=15, what="retry"
    )
    assert daemon.stop() == 0


def test_bump_config_epoch_from_the_policy_reloads(kumoq):
    bumping = (
        routed_to("first")
        + """
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  if msg:get_first_named_header_value 'Subject' == 'bump' then
    kumo.bump_config_epoch()
  end
end)
"""
    )
    daemon = kumoq(bumping)
    seen = len(daemon.stderr_lines)
    daemon.policy_path.write_text(routed_to("second"))
    daemon.send("s@example.com", ["r@example.com"], subject="bump")
    daemon.wait_for(
        lambda: any("config epoch 1" in line for line in daemon.stderr_lines[seen:]),
        what="the reload",
    )
    daemon.send("s@example.com", ["r@example.com"])
    daemon.wait_for(lambda: daemon.maildir_files(daemon.workdir / "var/second"), what="second")
    assert daemon.stop() == 0
