"""Expiry of messages that wait in a ready queue that cannot make progress (issue 9, defect 6):
the peer accepts TCP connections and never says a word, so the one session the path allows
waits for a banner for a minute. Both messages (one held by that session, one in the FIFO)
expire at their max_age, not at the next requeue, and leave the spool."""

from __future__ import annotations

import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from kumoq.message import spool_id_created
from tests.e2e.policies import policy

pytestmark = pytest.mark.integration

MAX_AGE = 2.0
# The stuck session is aborted at shutdown after 1 s, not after the default 25 s.
BOUNDS = {"KUMOQ_SHUTDOWN_LISTENER_DRAIN": "1", "KUMOQ_SHUTDOWN_DELIVERY_DRAIN": "1"}


def silent_policy(port: int) -> str:
    return policy(
        f"""
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    max_age = '{int(MAX_AGE)}s', retry_interval = '1s',
    protocol = {{ smtp = {{ mx_list = {{ '127.0.0.1:{port}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function(routing_domain, source, site)
  return kumo.make_egress_path {{
    prohibited_hosts = {{}}, enable_tls = 'Disabled', connection_limit = 1,
    banner_timeout = '60s',
  }}
end)
"""
    )


def event_time(record: dict[str, Any]) -> float:
    head, _, frac = record["event_time"].rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{frac[:6]}+00:00").timestamp()


def spooled(workdir: Path) -> list[Path]:
    return [p for p in (workdir / "var/spool/meta/data").rglob("*") if p.is_file()]


def test_messages_waiting_on_a_silent_peer_expire_at_max_age(kumoq):
    with socket.socket() as silent:  # listens, never accepts: connects, then no banner
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        daemon = kumoq(silent_policy(silent.getsockname()[1]), env=BOUNDS)
        daemon.send("s@example.com", ["a@example.com", "b@example.com"])
        expirations = daemon.wait_for_records("Expiration", 2, timeout=MAX_AGE + 5)
        for record in expirations:
            waited = event_time(record) - spool_id_created(record["id"])  # exact, not whole s
            assert MAX_AGE <= waited <= MAX_AGE + 1.0, waited
            assert record["response"]["content"].startswith("Next delivery time PT2")
            assert record["response"]["code"] == 551
        assert sorted(r["recipient"] for r in expirations) == ["a@example.com", "b@example.com"]
        assert daemon.records("TransientFailure") == []  # expired while waiting, not at requeue
        assert daemon.records("Delivery") == []
        daemon.wait_for(lambda: not spooled(daemon.workdir), timeout=5, what="an empty spool")
        time.sleep(0.5)
        assert daemon.stop() == 0
