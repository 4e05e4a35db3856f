"""The ``kumoq`` admin commands through real HTTP: ``main([...])`` runs in a thread against a
listener on 127.0.0.1 that serves a fake ``AdminSeam``; each command sends the right request,
prints a readable answer (or the JSON with ``--json``), and exits 0, 1 (the server said no), 2
(usage) or 3 (kumoq cannot be reached) with a message a shell user can act on.

tests/e2e/test_admin_cli.py runs the same commands against a real ``kumoq serve``.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from kumoq.cli import main
from kumoq.cli.queue_summary import ready_parts, rows_from_metrics
from kumoq.cli.render import humantime, table, waiting_sentence
from kumoq.gauges import LiveGauges
from kumoq.metrics import REGISTRY
from kumoq.scheduler.admin_rules import AdminCriteria
from tests.unit.admin_support import MSG, OTHER_MSG, RULE, AdminRig, AdminRigs

pytestmark = pytest.mark.integration


@pytest.fixture
async def admin_rig() -> AsyncIterator[Callable[..., Awaitable[AdminRig]]]:
    async with AdminRigs() as rigs:
        yield rigs.start


async def kumoq(rig, *argv: str) -> int:
    """``kumoq ARGV --endpoint <rig>`` in a thread (the listener runs on this loop)."""
    return await asyncio.to_thread(main, [*argv, "--endpoint", rig.url])


# -- each command: its request and its readable answer --------------------------------------

COMMANDS = [
    pytest.param(["bounce", "--domain", "example.com", "--reason", "bad send", "--duration",
                  "1h"], ("bounce", (AdminCriteria(domain="example.com"), "bad send", 3600.0,
                                     False)), [RULE], id="bounce"),
    pytest.param(["bounce", "--everything", "--reason", "all", "--suppress-logging"],
                 ("bounce", (AdminCriteria(), "all", 300.0, True)), [RULE],
                 id="bounce-everything"),
    pytest.param(["bounce", "--queue", "a.com", "--queue", "b.com", "--reason", "r"],
                 ("bounce", (AdminCriteria(queue_names=("a.com", "b.com")), "r", 300.0,
                             False)), [RULE], id="bounce-queues"),
    pytest.param(["bounce-list"], ("bounce_list", ()),
                 ["ID", "REASON", "REMAIN", "BOUNCED", "CRITERIA", RULE, "bad send", "4m 59s",
                  "1,234", "domain=example.com"], id="bounce-list"),
    pytest.param(["bounce-cancel", "--id", RULE], ("bounce_cancel", (RULE,)), ["OK"],
                 id="bounce-cancel"),
    pytest.param(["suspend", "--campaign", "fall", "--reason", "pm"],
                 ("suspend", (AdminCriteria(campaign="fall"), "pm", 300.0)), [RULE],
                 id="suspend"),
    pytest.param(["suspend-list"], ("suspend_list", ()), ["REMAIN", "campaign=fall", "1h"],
                 id="suspend-list"),
    pytest.param(["suspend-cancel", "--id", RULE], ("suspend_cancel", (RULE,)), ["OK"],
                 id="suspend-cancel"),
    pytest.param(["suspend-ready-q", "--name", "s->site@smtp_client", "--reason", "m",
                  "--duration", "2 days"],
                 ("suspend_ready_q", ("s->site@smtp_client", "m", 172800.0)), [RULE],
                 id="suspend-ready-q"),
    pytest.param(["suspend-ready-q-list"], ("suspend_ready_q_list", ()),
                 ["NAME", "unspecified->mx.example.com@smtp_client", "maint"],
                 id="suspend-ready-q-list"),
    pytest.param(["suspend-ready-q-cancel", "--id", RULE], ("suspend_ready_q_cancel", (RULE,)),
                 ["OK"], id="suspend-ready-q-cancel"),
    pytest.param(["rebind", "--domain", "a.com", "--reason", "move", "--data",
                  '{"queue": "b.com"}', "--set", "tenant=t", "--always-flush"],
                 ("rebind", (AdminCriteria(domain="a.com"), "move",
                             {"queue": "b.com", "tenant": "t"}, True, False, False)),
                 ["rebound 3 message(s)"], id="rebind"),
    pytest.param(["inspect-sched-q", "example.com", "--want-body"],
                 ("inspect_sched_q", ("example.com", True, 5)),
                 ["queue:", "example.com", "scheduled:", MSG, "rcpt@example.com", "hello"],
                 id="inspect-sched-q"),
    pytest.param(["inspect-sched-q", "example.com", "--no-limit"],
                 ("inspect_sched_q", ("example.com", False, None)), [MSG],
                 id="inspect-sched-q-no-limit"),
    pytest.param(["inspect-message", MSG],
                 ("inspect_message", (MSG, False)),
                 ["sender:", "sender@example.com", "attempts:", "2",
                  f"Message {MSG} in example.com is waiting for its next attempt: its next "
                  "attempt after 451 4.7.1 try later, until 2023-11-14T22:18:20Z"],
                 id="inspect-message"),
    pytest.param(["queue-messages", "example.com", "--limit", "1"],
                 ("queue_messages", ("example.com", None, 1)),
                 ["example.com: 2 scheduled, 1 shown", "LAST RESPONSE", MSG,
                  "451 4.7.1 try later",
                  "more: kumoq queue-messages example.com --limit 1 --cursor page2"],
                 id="queue-messages"),
    pytest.param(["queue-messages", "example.com", "--cursor", "page2"],
                 ("queue_messages", ("example.com", "page2", 100)), [OTHER_MSG],
                 id="queue-messages-page2"),
    pytest.param(["retry", "--id", MSG], ("retry", (MSG, None, None)),
                 ["retried 2 message(s)"], id="retry-id"),
    pytest.param(["retry", "--queue-name", "q"], ("retry", (None, "q", None)), ["retried"],
                 id="retry-queue"),
    pytest.param(["retry", "--tenant", "t"], ("retry", (None, None, AdminCriteria(tenant="t"))),
                 ["retried"], id="retry-criteria"),
    pytest.param(["retry", "--everything"], ("retry", (None, None, AdminCriteria())),
                 ["retried"], id="retry-everything"),
    pytest.param(["delete-message", MSG, "--reason", "spam"], ("delete_message", (MSG, "spam")),
                 [f"deleted {MSG}"], id="delete-message"),
    pytest.param(["campaign-progress", "--tenant", "news"], ("campaign_progress", (None, "news")),
                 ["CAMPAIGN", "TRANSFAIL", "PENDING", "fall", "news", "1,200", "168"],
                 id="campaign-progress"),
    pytest.param(["dead-letter", "list", "--queue", "q", "--limit", "5"],
                 ("dead_letter_list", ("q", None, 5)),
                 ["1 dead letter(s), 1 shown", "550 5.1.1 no such user", "Bounce"],
                 id="dead-letter-list"),
    pytest.param(["dead-letter", "show", MSG, "--want-body"], ("dead_letter_show", (MSG, True)),
                 ["record_type:", "Bounce", "recipient:", "hello"], id="dead-letter-show"),
    pytest.param(["dead-letter", "requeue", MSG, OTHER_MSG],
                 ("dead_letter_requeue", ([MSG, OTHER_MSG], None)),
                 ["requeued 1 dead letter(s)"], id="dead-letter-requeue"),
    pytest.param(["dead-letter", "requeue", "--everything"], ("dead_letter_requeue",
                                                              (None, None)),
                 ["requeued"], id="dead-letter-requeue-everything"),
    pytest.param(["dead-letter", "purge", "--queue", "q"], ("dead_letter_purge", (None, "q")),
                 ["purged 1 dead letter(s)"], id="dead-letter-purge"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "seam_call", "shown"), COMMANDS)
async def test_each_command_sends_its_request_and_prints_a_readable_answer(
    admin_rig, capsys, argv, seam_call, shown
):
    rig = await admin_rig()
    assert await kumoq(rig, *argv) == 0
    out = capsys.readouterr().out
    assert rig.admin.calls == [seam_call]
    for text in shown:
        assert text in out, out


async def test_json_prints_the_servers_answer(admin_rig, capsys):
    rig = await admin_rig()
    assert await kumoq(rig, "bounce-list", "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["total_bounced"] == 1234
    assert await kumoq(rig, "inspect-message", MSG, "--json") == 0
    assert json.loads(capsys.readouterr().out)["waiting"]["reason"] == "scheduled"


async def test_a_server_error_exits_1_with_its_status_and_message(admin_rig, capsys):
    rig = await admin_rig()
    assert await kumoq(rig, "inspect-message", "0" * 32) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        f"kumoq: GET /api/admin/inspect-message/v1: 404: no such message: {'0' * 32} (field: id)"
    )
    assert await kumoq(rig, "queue-messages", "q", "--limit", "5000") == 1
    assert "400: limit: expected 1 to 1000, got 5000 (field: limit)" in capsys.readouterr().err
    assert await kumoq(rig, "bounce-cancel", "--id", "nope") == 1
    assert "expected a rule id" in capsys.readouterr().err


async def test_outside_trusted_hosts_basic_auth_comes_from_flags_or_environment(
    admin_rig, capsys, monkeypatch
):
    rig = await admin_rig(trusted_hosts=["10.0.0.0/8"])
    assert await kumoq(rig, "suspend-list") == 1
    err = capsys.readouterr().err
    assert ": 401: " in err
    assert "set --user/--password or KUMOQ_USER/KUMOQ_PASSWORD" in err
    assert await kumoq(rig, "suspend-list", "--user", "daniel", "--password", "tiger") == 0
    capsys.readouterr()
    monkeypatch.setenv("KUMOQ_USER", "daniel")
    monkeypatch.setenv("KUMOQ_PASSWORD", "tiger")
    assert await kumoq(rig, "suspend-list") == 0
    assert "campaign=fall" in capsys.readouterr().out


async def test_the_endpoint_comes_from_kumoq_endpoint(admin_rig, capsys, monkeypatch):
    rig = await admin_rig()
    monkeypatch.setenv("KUMOQ_ENDPOINT", rig.url.removeprefix("http://"))
    assert await asyncio.to_thread(main, ["bounce-list"]) == 0
    assert RULE in capsys.readouterr().out
    # the option before the subcommand counts too, as kcli's does
    monkeypatch.delenv("KUMOQ_ENDPOINT")
    assert await asyncio.to_thread(main, ["--endpoint", rig.url, "suspend-list"]) == 0


def test_cannot_reach_exits_3_and_says_what_to_do(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        assert main(["bounce-list", "--endpoint", f"http://127.0.0.1:{port}"]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"kumoq: cannot reach http://127.0.0.1:{port}: ")
    assert err.strip().endswith("is kumoq running? (set --endpoint or KUMOQ_ENDPOINT)")


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["bounce", "--reason", "r"], "use --everything if you mean to bounce every queue"),
        (["bounce", "--everything", "--domain", "d", "--reason", "r"], "does not combine"),
        (["bounce", "--queue", "q", "--tenant", "t", "--reason", "r"], "--queue does not"),
        (["bounce", "--domain", "d"], "arguments are required: --reason"),
        (["bounce", "--domain", "d", "--reason", "r", "--duration", "soon"], "invalid duration"),
        (["suspend", "--reason", "r"], "if you mean to suspend every queue"),
        (["rebind", "--reason", "r", "--everything", "--data", "[1]"], "--data: expected"),
        (["rebind", "--reason", "r", "--everything", "--set", "novalue"], "--set: expected"),
        (["retry"], "if you mean to retry every queue"),
        (["retry", "--id", MSG, "--queue-name", "q"], "give one of"),
        (["dead-letter", "purge"], "say which dead letters to purge"),
        (["dead-letter", "requeue", MSG, "--everything"], "exactly one"),
        (["inspect-message"], "give the message's spool id"),
        (["inspect-sched-q", "q", "--limit", "3", "--no-limit"], "not allowed with"),
        (["no-such-command"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2_before_sending_anything(capsys, argv, error):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--endpoint", "http://127.0.0.1:9"])
    assert exit_.value.code == 2
    assert error in capsys.readouterr().err


# -- queue-summary ---------------------------------------------------------------------------

METRICS = {
    "total_messages_delivered": {"type": "counter", "value": {"service": {
        "smtp_client": 9.0, "smtp_client:src->mx.example.com@smtp_client": 1234.0}}},
    "total_messages_transfail": {"type": "counter", "value": {"service": {
        "smtp_client:src->mx.example.com@smtp_client": 3.0}}},
    "connection_count": {"type": "gauge", "value": {"service": {
        "esmtp_listener": 4.0, "smtp_client:src->mx.example.com@smtp_client": 2.0,
        "smtp_client:unspecified->mx_list:127.0.0.1:25@smtp_client": 1.0}}},
    "ready_count": {"type": "gauge", "value": {"queue": {
        "src->mx.example.com@smtp_client": 7.0}}},
    "scheduled_count": {"type": "gauge", "value": {"queue": {
        "example.com": 5.0, "fall:news@other.test": 12.0}}},
    "scheduled_count_total": {"type": "gauge", "value": 17.0},
}  # fmt: skip


def test_queue_summary_rows_come_from_kumomtas_metric_names():
    ready, scheduled = rows_from_metrics(METRICS)
    by_name = {r.name: r for r in ready}
    row = by_name["src->mx.example.com@smtp_client"]
    assert (row.delivered, row.transfail, row.connections, row.ready) == (1234, 3, 2, 7)
    assert by_name["unspecified->mx_list:127.0.0.1:25@smtp_client"].connections == 1
    assert len(ready) == 2  # totals without a queue ("smtp_client", "esmtp_listener") are not rows
    assert {(s.name, s.count) for s in scheduled} == {("example.com", 5), ("fall:news@other.test",
                                                                            12)}  # fmt: skip
    assert ready_parts("src->mx.example.com@smtp_client") == (
        "mx.example.com", "src", "smtp_client"
    )  # fmt: skip
    assert ready_parts("src->x.test@lua:my_proto") == ("x.test", "src", "lua:my_proto")


async def test_queue_summary_prints_kclis_columns_with_rule_status(admin_rig, capsys):
    rig = await admin_rig()
    gauges = LiveGauges(
        scheduled=lambda: [("example.com", 5), ("q2.test", 1), ("q10.test", 30)],
        ready=lambda: [("src->mx.example.com@smtp_client", 7)],
        connections=lambda: [("smtp_client:src->mx.example.com@smtp_client", 2)],
    )
    REGISTRY.register(gauges)
    try:
        assert await kumoq(rig, "queue-summary") == 0
        out = capsys.readouterr().out
        assert await kumoq(rig, "queue-summary", "--by-volume", "--limit", "1") == 0
        top = capsys.readouterr().out
        assert await kumoq(rig, "queue-summary", "--json", "--domain", "example.com") == 0
        data = json.loads(capsys.readouterr().out)
    finally:
        REGISTRY.unregister(gauges)
    lines = out.splitlines()
    assert lines[0].split() == ["SITE", "SOURCE", "PROTO", "D", "T", "C", "Q"]
    # other tests may have counted deliveries for other ready queues in the shared registry
    row = next(line.split() for line in lines if line.startswith("mx.example.com"))
    assert row[:3] == ["mx.example.com", "src", "smtp_client"]
    assert row[-2:] == ["2", "7"]
    sched = lines[lines.index("") + 1 :]
    assert sched[0].split() == ["SCHEDULED", "QUEUE", "COUNT"]
    # natural order; the bounce rule (domain=example.com) is named beside its queue
    assert [line.split()[0] for line in sched[1:]] == ["example.com", "q2.test", "q10.test"]
    assert sched[1].split()[1:] == ["5", "bounce:", "bad", "send"]
    assert "q10.test" in top
    assert "q2.test" not in top
    assert data["scheduled"] == [{"name": "example.com", "count": 5}]


# -- printing ----------------------------------------------------------------------------------


def test_tables_align_and_durations_read_like_kcli(capsys):
    table([("NAME", "<"), ("COUNT", ">")], [("a", "1"), ("longer", "1,234")])
    assert capsys.readouterr().out == "NAME    COUNT\na           1\nlonger  1,234\n"
    assert humantime(299.6) == "5m"
    assert humantime(90061) == "1d 1h 1m 1s"
    assert humantime(0) == "0s"


@pytest.mark.parametrize(
    ("waiting", "sentence"),
    [
        (
            {"reason": "scheduled", "until": "2023-11-14T22:18:20Z",
             "detail": "its next attempt is due at 2023-11-14T22:18:20Z (in 5m); after 1 "
                       "attempt(s); last response: 451 4.7.1 later"},
            f"Message {MSG} in example.com is waiting for its next attempt: its next attempt "
            "is due at 2023-11-14T22:18:20Z (in 5m); after 1 attempt(s); last response: 451 "
            "4.7.1 later.",
        ),
        (
            {"reason": "rate_throttled", "until": 1_700_000_060.0, "detail": ""},
            f"Message {MSG} in example.com is held by its queue's rate limit, until "
            "2023-11-14T22:14:20Z (in 1m).",
        ),
        (
            {"reason": "in_flight", "until": None, "detail": "delivering to mx.example.com"},
            f"Message {MSG} in example.com is being delivered now: delivering to "
            "mx.example.com.",
        ),
        (None, f"Message {MSG} in example.com is waiting for its next attempt."),
    ],
)  # fmt: skip
def test_the_waiting_answer_reads_as_one_sentence(waiting, sentence):
    answer = {"id": MSG, "queue": "example.com", "state": "scheduled", "waiting": waiting}
    assert waiting_sentence(answer, now=1_700_000_000.0) == sentence
