"""End to end: a runaway policy handler no longer freezes the daemon (issue 10, defect 4).

A handler that never returns used to block the event loop for good: no banner for new
connections, no deliveries, SIGTERM ignored. With the Lua time budget the call is stopped: its
transaction gets ``451 4.3.0``, the connection stays usable, and the daemon carries on. The
event loop is blocked while Lua runs, so another client is served right after the budget
fires, not during it.
"""

from __future__ import annotations

import smtplib
import threading
import time
from typing import Any

import pytest

from kumoq.testing import KumoqStartError
from tests.e2e.policies import MAILDIR_QUEUE, policy

pytestmark = pytest.mark.integration

BUDGET = 0.5
SLACK = 4.0  # seconds of scheduling noise allowed on a shared machine
ENV = {"KUMOQ_LUA_TIME_BUDGET": "500ms"}

RUNAWAY = """
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  if msg:recipient().user == 'loop' then
    while true do end
  end
end)
"""


def body(to: str) -> bytes:
    return f"From: <s@example.com>\r\nTo: <{to}>\r\nSubject: test\r\n\r\nhello\r\n".encode()


def test_a_runaway_handler_gets_451_and_the_daemon_stays_responsive(kumoq):
    text = policy(MAILDIR_QUEUE, RUNAWAY)
    loop_line = text.splitlines().index("    while true do end") + 1
    daemon = kumoq(text, env=ENV)

    outcome: dict[str, Any] = {}

    def runaway_client() -> None:
        with daemon.smtp_client(timeout=10) as client:
            start = time.monotonic()
            try:
                client.sendmail("s@example.com", ["loop@example.com"], body("loop@example.com"))
            except smtplib.SMTPDataError as exc:
                outcome["reply"] = (exc.smtp_code, exc.smtp_error)
            outcome["took"] = time.monotonic() - start
            # the connection stays: the next transaction on it goes through
            client.sendmail("s@example.com", ["again@example.com"], body("again@example.com"))
            outcome["again"] = True

    runaway = threading.Thread(target=runaway_client)
    runaway.start()
    time.sleep(BUDGET / 2)  # the handler is looping now (or about to)
    start = time.monotonic()
    with daemon.smtp_client(timeout=10) as client:  # connects; the banner waits for the budget
        banner_after = time.monotonic() - start
        client.sendmail("s@example.com", ["other@example.com"], body("other@example.com"))
    runaway.join(15)
    assert not runaway.is_alive()

    code, reply = outcome["reply"]
    assert code == 451
    assert reply.startswith(b"4.3.0 ")
    assert b"smtp_server_message_received exceeded its Lua time budget" in reply
    assert BUDGET <= outcome["took"] < BUDGET + SLACK
    assert banner_after < BUDGET + SLACK
    assert outcome["again"] is True
    daemon.wait_for_maildir_count(2)
    delivered = {m["To"] for m in daemon.maildir_messages()}
    assert delivered == {"<other@example.com>", "<again@example.com>"}

    (rejection,) = daemon.wait_for_records("Rejection", 1)
    assert rejection["response"]["code"] == 451
    stopped = f"init.lua:{loop_line}: smtp_server_message_received: stopped after running past"
    assert any(stopped in line for line in daemon.stderr_lines), daemon.stderr_lines[-10:]

    start = time.monotonic()
    assert daemon.stop(timeout=20) == 0
    assert time.monotonic() - start < 10


def test_a_runaway_init_stops_startup_naming_the_line(kumoq):
    daemon = kumoq(
        "local kumo = require 'kumo'\n"
        "kumo.on('init', function()\n"
        "  local n = 0\n"
        "  while true do n = n + 1 end\n"
        "end)\n",
        start=False,
        env=ENV,
    )
    start = time.monotonic()
    with pytest.raises(KumoqStartError) as info:
        daemon.start()
    assert time.monotonic() - start < BUDGET + SLACK + 5  # interpreter start-up included
    assert "init.lua:4: init: stopped after running past its Lua time budget" in str(info.value)
    assert daemon.stop() == 1 or daemon.returncode == 1
