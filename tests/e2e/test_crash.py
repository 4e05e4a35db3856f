"""Kill -9 under load: every message that got 250 is delivered after a restart."""

from __future__ import annotations

import re
import smtplib
import threading

import pytest

from tests.e2e.policies import policy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# While KUMOQ_HOLD is set, deliveries fail (the maildir path is under a regular file), so
# accepted messages pile up in the spool with their retry schedule persisted.
HOLDING_QUEUE = """
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local path = './var/maildir'
  if os.getenv('KUMOQ_HOLD') then path = './hold-blocker/maildir' end
  return kumo.make_queue_config { retry_interval = '1s', protocol = { maildir_path = path } }
end)
"""

ID_IN_RECEIVED = re.compile(rb"with ESMTP id ([0-9a-f]{32})")


def _blast(daemon, acked: list[str], stop: threading.Event, worker: int) -> None:
    n = 0
    while not stop.is_set():
        try:
            with daemon.smtp_client(timeout=5) as client:
                while not stop.is_set():
                    n += 1
                    client.mail(f"w{worker}@example.com")
                    client.rcpt(f"r{n}@example.com")
                    code, text = client.data(b"Subject: crash\r\n\r\n" + (b"x" * 76 + b"\r\n") * 26)
                    if code == 250:
                        acked.append(text.decode().split("ids=")[1].strip())
        except (OSError, smtplib.SMTPException):
            return


def _delivered_ids(daemon) -> set[str]:
    ids = set()
    for path in daemon.maildir_files():
        m = ID_IN_RECEIVED.search(path.read_bytes())
        if m:
            ids.add(m.group(1).decode())
    return ids


@pytest.mark.parametrize("hold", [True, False], ids=["held-in-spool", "in-flight"])
def test_kill_9_under_load_loses_nothing(kumoq, hold):
    daemon = kumoq(policy(HOLDING_QUEUE), start=False)
    (daemon.workdir / "hold-blocker").write_text("not a directory")
    if hold:
        daemon.env["KUMOQ_HOLD"] = "1"
    daemon.start()

    acked: list[str] = []
    stop = threading.Event()
    workers = [threading.Thread(target=_blast, args=(daemon, acked, stop, i)) for i in range(6)]
    for w in workers:
        w.start()
    daemon.wait_for(lambda: len(acked) >= 300, timeout=60, what="300 acknowledged messages")
    daemon.kill()
    stop.set()
    for w in workers:
        w.join(10)
    acked_ids = set(acked)
    assert len(acked_ids) >= 300

    daemon.env.pop("KUMOQ_HOLD", None)
    daemon.start()
    daemon.wait_for(
        lambda: acked_ids <= _delivered_ids(daemon),
        timeout=60,
        what=f"all {len(acked_ids)} acknowledged messages in the maildir",
    )
    daemon.stop()
    missing = acked_ids - _delivered_ids(daemon)
    assert not missing
    if hold:
        # None could be delivered before the kill, so all of them came back from the spool.
        assert any(
            "re-queued" in line and " 0 messages" not in line for line in daemon.stderr_lines
        )
