"""The ``kumoq`` admin commands against a real ``kumoq serve`` (issue 11): each command is run
as a shell user runs it (``python -m kumoq ... --endpoint URL``, a separate process talking
HTTP) and checked for its output, its effect on the mail, and its exit status: 0 done, 1 the
server said no, 2 a usage error, 3 kumoq cannot be reached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.e2e.admin_support import admin_policy as make_policy
from tests.e2e.admin_support import (
    campaign_headers,
    delivered,
    endpoint,
    reception_ids,
    wait_for_record,
)

pytestmark = pytest.mark.integration


def run(daemon, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``kumoq ARGV --endpoint <daemon>``; the daemon's endpoint is left out when ``daemon`` is
    None (then KUMOQ_ENDPOINT or the default applies)."""
    args = [*argv, "--endpoint", endpoint(daemon)] if daemon is not None else list(argv)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KUMOQ_")}
    return subprocess.run([sys.executable, "-m", "kumoq", *args], capture_output=True,
                          text=True, timeout=60, env={**clean, **(env or {})})  # fmt: skip


def done(daemon, *argv: str, **kw) -> str:
    """A command that must succeed; its stdout."""
    result = run(daemon, *argv, **kw)
    assert result.returncode == 0, (argv, result.stdout, result.stderr)
    return str(result.stdout)


def test_bounce_and_suspend_commands_steer_delivery(kumoq, sink):
    daemon = kumoq(make_policy(sink.port))
    rule_id = done(daemon, "bounce", "--domain", "bounce.test", "--reason", "bad send",
                   "--duration", "10m").strip()  # fmt: skip
    daemon.send("s@example.com", ["late@bounce.test"])
    wait_for_record(daemon, "AdminBounce", "late@bounce.test")
    listing = done(daemon, "bounce-list").splitlines()
    assert listing[0].split() == ["ID", "REASON", "REMAIN", "BOUNCED", "CRITERIA"]
    assert listing[1].startswith(rule_id)
    assert "bad send" in listing[1]
    assert listing[1].rstrip().endswith("1  domain=bounce.test")
    assert json.loads(done(daemon, "bounce-list", "--json"))[0]["id"] == rule_id
    assert done(daemon, "bounce-cancel", "--id", rule_id).strip() == "OK"
    assert done(daemon, "bounce-list").strip() == "no bounce rules in effect"

    suspend_id = done(daemon, "suspend", "--domain", "held.test", "--reason", "pm").strip()
    daemon.send("s@example.com", ["a@held.test", "b@held.test", "c@held.test"])
    ids = reception_ids(daemon, 4)
    for rcpt in ("a@held.test", "b@held.test", "c@held.test"):
        wait_for_record(daemon, "TransientFailure", rcpt)
    assert suspend_id in done(daemon, "suspend-list")

    # why is a@held.test waiting? one sentence
    out = done(daemon, "inspect-message", ids["a@held.test"])
    assert "recipient: a@held.test" in out
    sentence = out.strip().splitlines()[-1]
    assert sentence.startswith(f"Message {ids['a@held.test']} in held.test is waiting for its "
                               "next attempt: its next attempt is due at ")  # fmt: skip
    assert "its queue is suspended until" in sentence
    assert sentence.endswith(": pm.")

    sched = done(daemon, "inspect-sched-q", "held.test", "--limit", "2")
    assert "scheduled:    3" in sched
    assert sum(ids[r] in sched for r in ("a@held.test", "b@held.test", "c@held.test")) == 2

    page = done(daemon, "queue-messages", "held.test", "--limit", "2")
    assert page.startswith("held.test: 3 scheduled, 2 shown")
    more = page.strip().splitlines()[-1]
    assert more.startswith("more: kumoq queue-messages held.test --limit 2 --cursor ")
    cursor = more.rsplit(" ", 1)[1]
    rest = done(daemon, "queue-messages", "held.test", "--limit", "2", "--cursor", cursor)
    assert "3 scheduled, 1 shown" in rest
    assert "more:" not in rest

    summary = done(daemon, "queue-summary").splitlines()
    assert summary[0].split() == ["SITE", "SOURCE", "PROTO", "D", "T", "C", "Q"]
    (held,) = [line for line in summary if line.startswith("held.test ")]
    assert held.split()[:4] == ["held.test", "3", "suspended:", "pm"]

    assert done(daemon, "suspend-cancel", "--id", suspend_id).strip() == "OK"
    for rcpt in ("a@held.test", "b@held.test", "c@held.test"):
        delivered(daemon, sink, rcpt)
    assert done(daemon, "suspend-list").strip() == "no suspensions in effect"


def test_ready_queue_suspension_retry_and_rebind_commands(kumoq, sink):
    daemon = kumoq(make_policy(sink.port))
    rule_id = done(daemon, "suspend-ready-q", "--name", sink.ready_queue, "--reason", "maint",
                   "--duration", "1h").strip()  # fmt: skip
    daemon.send("s@example.com", ["r@ready.test"])
    msg_id = reception_ids(daemon, 1)["r@ready.test"]
    wait_for_record(daemon, "TransientFailure", "r@ready.test")
    listing = done(daemon, "suspend-ready-q-list")
    assert rule_id in listing
    assert sink.ready_queue in listing
    summary = done(daemon, "queue-summary")
    assert "suspended: maint" in summary
    assert done(daemon, "suspend-ready-q-cancel", "--id", rule_id).strip() == "OK"
    time.sleep(0.5)
    assert sink.recipients() == []
    assert done(daemon, "retry", "--id", msg_id).strip() == "retried 1 message(s)"
    delivered(daemon, sink, "r@ready.test")
    assert done(daemon, "retry", "--everything").strip() == "retried 0 message(s)"
    assert done(daemon, "retry", "--domain", "ready.test").strip() == "retried 0 message(s)"

    done(daemon, "suspend", "--domain", "held.test", "--reason", "pm")
    daemon.send("s@example.com", ["m@held.test"])
    wait_for_record(daemon, "TransientFailure", "m@held.test")
    out = done(daemon, "rebind", "--domain", "held.test", "--reason", "move", "--set",
               "queue=moved.test", "--always-flush")  # fmt: skip
    assert out.strip() == "rebound 1 message(s)"
    delivered(daemon, sink, "m@held.test")


def test_delete_progress_and_dead_letter_commands(kumoq, sink):
    daemon = kumoq(make_policy(sink.port))
    headers = campaign_headers("fall", "news")
    for rcpt in ("tempfail1@r.test", "tempfail2@r.test", "permfail@r.test", "ok@r.test"):
        daemon.send("s@example.com", [rcpt], headers=headers)
    ids = reception_ids(daemon, 4)
    wait_for_record(daemon, "Delivery", "ok@r.test")
    wait_for_record(daemon, "Bounce", "permfail@r.test")
    wait_for_record(daemon, "TransientFailure", "tempfail1@r.test")
    wait_for_record(daemon, "TransientFailure", "tempfail2@r.test")

    table = done(daemon, "campaign-progress").splitlines()
    assert table[0].split() == ["CAMPAIGN", "TENANT", "RECEIVED", "DELIVERED", "TRANSFAIL",
                                "BOUNCED", "EXPIRED", "PENDING"]  # fmt: skip
    assert table[1].split() == ["fall", "news", "4", "1", "2", "1", "0", "2"]

    doomed = ids["tempfail2@r.test"]
    assert done(daemon, "delete-message", doomed, "--reason", "stale").strip() == (
        f"deleted {doomed}"
    )  # fmt: skip
    wait_for_record(daemon, "AdminBounce", "tempfail2@r.test")
    gone = run(daemon, "delete-message", doomed)
    assert gone.returncode == 1
    assert "404: no such message" in gone.stderr

    dead_id = ids["permfail@r.test"]
    listing = done(daemon, "dead-letter", "list")
    assert listing.startswith("1 dead letter(s), 1 shown")
    assert dead_id in listing
    assert "550 5.1.1 no such user" in listing
    shown = done(daemon, "dead-letter", "show", dead_id, "--want-body")
    assert "record_type:" in shown
    assert "This is the body." in shown
    sink.refuse.clear()
    assert done(daemon, "dead-letter", "requeue", dead_id).strip() == "requeued 1 dead letter(s)"
    delivered(daemon, sink, "permfail@r.test")
    assert done(daemon, "dead-letter", "purge", "--everything").strip() == (
        "purged 0 dead letter(s)"
    )  # fmt: skip
    assert json.loads(done(daemon, "dead-letter", "list", "--json"))["total"] == 0
    usage = run(daemon, "dead-letter", "purge")
    assert usage.returncode == 2
    assert "say which dead letters to purge" in usage.stderr


def test_exit_codes_and_auth(kumoq, sink):
    daemon = kumoq(make_policy(sink.port, http="trusted_hosts = { '10.0.0.0/8' }"))
    refused = run(daemon, "bounce-list")
    assert refused.returncode == 1
    assert ": 401: " in refused.stderr
    assert "set --user/--password or KUMOQ_USER/KUMOQ_PASSWORD" in refused.stderr
    creds = {"KUMOQ_USER": "daniel", "KUMOQ_PASSWORD": "tiger"}
    assert done(daemon, "bounce-list", env=creds).strip() == "no bounce rules in effect"
    assert run(daemon, "suspend-list", "--user", "daniel", "--password", "tiger").returncode == 0
    env = {**creds, "KUMOQ_ENDPOINT": endpoint(daemon)}
    assert done(None, "suspend-ready-q-list", env=env).strip() == (
        "no ready queue suspensions in effect"
    )  # fmt: skip

    unknown = run(daemon, "inspect-message", "0" * 32, env=creds)
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == (
        f"kumoq: GET /api/admin/inspect-message/v1: 404: no such message: {'0' * 32} (field: id)"
    )
    usage = run(daemon, "bounce", "--reason", "r", env=creds)
    assert usage.returncode == 2
    assert "use --everything if you mean to bounce every queue" in usage.stderr

    url = endpoint(daemon)
    daemon.stop()
    gone = run(None, "queue-summary", "--endpoint", url)
    assert gone.returncode == 3
    assert gone.stderr.startswith(f"kumoq: cannot reach {url}: ")
    assert "is kumoq running? (set --endpoint or KUMOQ_ENDPOINT)" in gone.stderr
