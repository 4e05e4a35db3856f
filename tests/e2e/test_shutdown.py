"""SIGTERM within a documented bound (issue 9, defect 8): with a peer that hangs mid-DATA the
daemon still exits within KUMOQ_SHUTDOWN_LISTENER_DRAIN + KUMOQ_SHUTDOWN_DELIVERY_DRAIN +
KUMOQ_SHUTDOWN_FLUSH, says what it waited for and what it abandoned, loses nothing, and after
a restart the message is delivered exactly once."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from kumoq.testing import KumoqStartError
from tests.e2e.policies import MAILDIR_QUEUE, policy
from tests.e2e.test_smtp_relay import free_port, relay_policy

pytestmark = pytest.mark.integration

# Small bounds keep the test short: 1 + 1 + 5 = 7 s in all.
BOUNDS = {
    "KUMOQ_SHUTDOWN_LISTENER_DRAIN": "1",
    "KUMOQ_SHUTDOWN_DELIVERY_DRAIN": "1s",
    "KUMOQ_SHUTDOWN_FLUSH": "5",
}
BOUND = 7.0


class HangingSink:
    """Reads the whole message, then never answers the final dot while ``hang`` is set;
    once cleared it accepts (250) and keeps what it accepted."""

    def __init__(self) -> None:
        self.hang = True
        self.hung = threading.Event()
        self.accepted: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.hang:
            self.hung.set()
            await asyncio.sleep(3600)
        assert isinstance(envelope.content, bytes)
        self.accepted.append(envelope.content)
        return "250 2.0.0 queued"


def test_sigterm_with_a_peer_hanging_mid_data_is_bounded_and_loses_nothing(kumoq):
    sink = HangingSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        daemon = kumoq(relay_policy(controller.port), env=BOUNDS)
        daemon.send("s@example.com", ["r@example.com"])
        assert sink.hung.wait(15), "the message never reached the sink"
        started = time.monotonic()
        assert daemon.stop(timeout=30) == 0
        elapsed = time.monotonic() - started
        assert elapsed < BOUND, f"shutdown took {elapsed:.1f}s"
        text = "\n".join(daemon.stderr_lines)
        assert "shutdown: bound 7s: listener drain 1s, delivery drain 1s, flush 5s" in text
        assert "shutdown: waiting up to 1s for 1 delivery attempts in flight" in text
        assert "smtp egress: aborting 1 sessions still busy after" in text
        assert "shutdown complete in" in text
        assert "exiting now" not in text
        assert daemon.records("Delivery") == []  # nothing was claimed for the aborted attempt
        assert daemon.records("TransientFailure") == []

        sink.hang = False
        daemon.start()
        daemon.wait_for_records("Delivery", 1, timeout=15)
        time.sleep(1.5)  # a duplicate would show up now
        assert len(daemon.records("Delivery")) == 1
        assert len(sink.accepted) == 1
        assert b"This is the body." in sink.accepted[0]
    finally:
        controller.stop()


def test_sigterm_when_idle_logs_each_phase(kumoq):
    daemon = kumoq(policy(MAILDIR_QUEUE), env=BOUNDS)
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < BOUND
    text = "\n".join(daemon.stderr_lines)
    for line in (
        "shutdown: waiting up to 1s for 0 SMTP sessions to end",
        "shutdown: listeners closed in",
        "shutdown: waiting up to 1s for 0 delivery attempts in flight",
        "shutdown: deliveries ended in",
        "shutdown: flushing the maildir writer, the spool and the logs",
        "shutdown complete in",
    ):
        assert line in text


def test_a_bad_bound_stops_the_start(kumoq):
    daemon = kumoq(policy(MAILDIR_QUEUE), env={"KUMOQ_SHUTDOWN_FLUSH": "soon"}, start=False)
    with pytest.raises(KumoqStartError) as info:
        daemon.start()
    assert "KUMOQ_SHUTDOWN_FLUSH" in str(info.value)
