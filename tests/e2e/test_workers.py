"""End to end: ``kumoq serve --workers N`` (kumoq.cli.supervisor, kumoq.workers).

Real supervisors and worker processes on real ports: both workers take connections on one
listener (SO_REUSEPORT), each spools into its own directory, both log into one directory, a
restart with one process adopts the second worker's spool and delivers every message once, a
worker that dies is started again, and a policy that cannot start stops the whole run."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kumoq.logs.tail import read_all_records
from kumoq.testing.harness import KumoqDaemon
from tests.e2e.test_smtp_relay import free_port
from tests.e2e.test_throttles import TimedSink

pytestmark = pytest.mark.integration

POLICY = """
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:{port}', hostname = 'mx.test' }}
  kumo.define_spool {{ name = 'data', path = './var/spool/data' }}
  kumo.define_spool {{ name = 'meta', path = './var/spool/meta' }}
  kumo.configure_local_logs {{ log_dir = './var/log', max_segment_duration = '1s' }}
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  {queue}
end)
"""

# A maildir that cannot be made (/dev/null is no directory): every attempt fails with a 400,
# and the messages stay spooled, due again within two seconds.
HELD = """return kumo.make_queue_config {
    retry_interval = '1s', max_retry_interval = '2s',
    protocol = { maildir_path = '/dev/null/maildir' },
  }"""
MAILDIR = "return kumo.make_queue_config { protocol = { maildir_path = './var/maildir' } }"


def send(port: int, count: int, tag: str, *, clients: int = 1) -> None:
    """``count`` messages, one connection each (so the kernel spreads them over the workers),
    from ``clients`` threads at once."""

    def one(i: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail(
                "sender@example.com",
                [f"rcpt{i}@example.com"],
                f"Subject: {tag} {i}\r\nMessage-ID: <{tag}-{i}@test>\r\n\r\nbody\r\n".encode(),
            )

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(count)))


def spooled(meta: Path) -> int:
    """Meta files under ``meta`` (os.walk skips what a running daemon removes meanwhile)."""
    return sum(len(files) for _, _, files in os.walk(meta / "data"))


def test_workers_share_the_listener_and_a_restart_adopts_every_spool(tmp_path: Path) -> None:
    port = free_port()
    workdir = tmp_path / "mta"
    two = KumoqDaemon(workdir, POLICY.format(port=port, queue=HELD), workers=2)
    two.start()
    try:
        send(port, 40, "held")
    finally:
        assert two.stop() == 0
    meta = workdir / "var/spool/meta"
    own, second = spooled(meta), spooled(meta / "worker-1")
    assert own + second == 40
    assert own, f"worker 1 took every connection ({second})"
    assert second, f"worker 0 took every connection ({own})"
    records = read_all_records(workdir / "var/log")
    assert sum(r["type"] == "Reception" for r in records) == 40
    # Both workers wrote segments into the one log directory; all are complete (read-only).
    for segment in (workdir / "var/log").iterdir():
        assert not segment.stat().st_mode & 0o222, segment

    one = KumoqDaemon(workdir, POLICY.format(port=port, queue=MAILDIR))
    one.start()
    try:
        one.wait_for_maildir_count(40, timeout=60)
        deadline = time.monotonic() + 30
        while spooled(meta) + spooled(meta / "worker-1") and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        assert one.stop() == 0
    lines = "\n".join(one.stderr_lines)
    assert f"adopted {second} messages" in lines
    subjects = sorted(m["Subject"] for m in one.maildir_messages())
    assert subjects == sorted(f"held {i}" for i in range(40))  # each once
    assert spooled(meta) == spooled(meta / "worker-1") == 0


def test_a_worker_that_dies_is_started_again(tmp_path: Path) -> None:
    port = free_port()
    daemon = KumoqDaemon(tmp_path / "mta", POLICY.format(port=port, queue=MAILDIR), workers=2)
    daemon.start()
    try:
        supervisor = daemon._proc
        assert supervisor is not None
        children = _children(supervisor.pid)
        assert len(children) == 2
        os.kill(children[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while daemon._initialized < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert daemon._initialized == 3, "\n".join(daemon.stderr_lines[-20:])
        assert any("exited with status -9" in line for line in daemon.stderr_lines)
        again = _children(supervisor.pid)
        assert len(again) == 2
        assert children[0] not in again
        send(port, 10, "after")
        daemon.wait_for_maildir_count(10, timeout=30)
    finally:
        assert daemon.stop() == 0


def test_a_policy_that_cannot_start_stops_every_worker(tmp_path: Path) -> None:
    policy = tmp_path / "init.lua"
    policy.write_text("local kumo = require 'kumo'\nkumo.on('init', function() nope() end)\n")
    proc = subprocess.run(
        [sys.executable, "-m", "kumoq", "serve", "--policy", str(policy), "--workers", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "failed at start" in proc.stderr
    assert "init.lua:2" in proc.stderr  # the policy error names file and line


def test_workers_takes_a_positive_count(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kumoq", "serve", "--policy", "x.lua", "--workers", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--workers takes a number from 1 to 256" in proc.stderr


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return sorted(int(x) for x in out.split())


RELAY = """
return kumo.make_queue_config {{
    retry_interval = '1s', protocol = {{ smtp = {{ mx_list = {{ '127.0.0.1:{sink}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function(routing_domain, source, site)
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, enable_tls = 'Disabled', {path} }}
"""


def relay_workers(tmp_path: Path, sink_port: int, path: str) -> tuple[KumoqDaemon, int]:
    port = free_port()
    queue = RELAY.format(sink=sink_port, path=path)
    return KumoqDaemon(tmp_path / "mta", POLICY.format(port=port, queue=queue), workers=2), port


def test_a_path_rate_holds_for_the_box_not_for_each_worker(tmp_path: Path, sink_of) -> None:
    sink = sink_of(TimedSink)
    daemon, port = relay_workers(tmp_path, sink.port, "max_message_rate = '10/s',")
    daemon.start()
    try:
        send(port, 60, "rate")
        daemon.wait_for_records("Delivery", 60, timeout=120)
    finally:
        assert daemon.stop() == 0
    assert len(sink.arrivals) == 60
    assert len({r["nodeid"] for r in daemon.records("Delivery")}) == 1
    # Shared: 60 at 10/s after a burst of 10 take (60 - 10) / 10 = 5 s; each worker alone
    # (20/s together) would need 2.5 s. Sending one message per connection takes a while too,
    # so only the rate's floor is checked, with a little slack for timer granularity.
    span = max(sink.arrivals) - min(sink.arrivals)
    assert span >= 5.0 - 0.5, span


class HoldingSink(TimedSink):
    hold = 0.5  # DATA takes a while, so that the queues fill and sessions overlap


def test_a_connection_limit_holds_for_the_box(tmp_path: Path, sink_of) -> None:
    sink = sink_of(HoldingSink)
    daemon, port = relay_workers(tmp_path, sink.port, "connection_limit = 3,")
    daemon.start()
    try:
        send(port, 60, "limit", clients=8)
        daemon.wait_for_records("Delivery", 60, timeout=180)
    finally:
        assert daemon.stop() == 0
    assert len(sink.messages) == 60
    assert sink.max_open <= 3, sink.max_open  # each worker alone would open 3
