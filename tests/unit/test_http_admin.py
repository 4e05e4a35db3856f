"""The admin API's routes over real HTTP on 127.0.0.1, with a fake ``AdminSeam`` behind them:
each endpoint's request reaches the seam as the right call, its answer comes back as JSON, and
every kind of bad input gets a 4xx JSON answer naming the field.

tests/e2e/test_admin_api.py runs the same endpoints against a real ``kumoq serve``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from kumoq.errors import AdminRequestError
from kumoq.scheduler.admin_rules import AdminCriteria
from tests.unit.admin_support import MSG, RULE, AdminRig, AdminRigs, FakeAdmin

pytestmark = pytest.mark.integration


@pytest.fixture
async def admin_rig() -> AsyncIterator[Callable[..., Awaitable[AdminRig]]]:
    async with AdminRigs() as rigs:
        yield rigs.start


A = "/api/admin"
NOW = 1_700_000_000.0  # FakeClock's start: 2023-11-14T22:13:20Z


async def call(
    url: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    params: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    session: aiohttp.ClientSession | None = None,
) -> tuple[int, Any]:
    own = session is None
    client = session or aiohttp.ClientSession()
    try:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json", **(headers or {})}
        async with client.request(
            method, url + path, data=data, params=params, headers=sent
        ) as response:
            assert response.content_type == "application/json", await response.text()
            return response.status, await response.json()
    finally:
        if own:
            await client.close()


# -- every endpoint: the seam call it makes and the answer ---------------------------------

SUCCESS = [
    pytest.param(
        "POST", f"{A}/bounce/v1",
        {"reason": "bad send", "domain": "example.com", "duration": "1h 30m",
         "suppress_logging": True},
        None,
        ("bounce", (AdminCriteria(domain="example.com"), "bad send", 5400.0, True)),
        {"id": RULE, "bounced": {"example.com": 2}, "total_bounced": 2},
        id="bounce",
    ),
    pytest.param(
        "POST", f"{A}/bounce/v1",
        {"reason": "all", "queue_names": ["a.com", "b.com"], "routing_domain": "r.test",
         "campaign": "c", "tenant": "t"},
        None,
        ("bounce", (AdminCriteria(routing_domain="r.test", campaign="c", tenant="t",
                                  queue_names=("a.com", "b.com")), "all", 300.0, False)),
        None,
        id="bounce-criteria-default-duration",
    ),
    pytest.param("GET", f"{A}/bounce/v1", None, None, ("bounce_list", ()), None,
                 id="bounce-list"),
    pytest.param("DELETE", f"{A}/bounce/v1", {"id": RULE}, None, ("bounce_cancel", (RULE,)),
                 {}, id="bounce-cancel"),
    pytest.param(
        "POST", f"{A}/suspend/v1", {"reason": "pm", "tenant": "t", "duration": "2 days"}, None,
        ("suspend", (AdminCriteria(tenant="t"), "pm", 172800.0)), {"id": RULE}, id="suspend",
    ),
    pytest.param("GET", f"{A}/suspend/v1", None, None, ("suspend_list", ()), None,
                 id="suspend-list"),
    pytest.param("DELETE", f"{A}/suspend/v1", {"id": RULE}, None, ("suspend_cancel", (RULE,)),
                 {}, id="suspend-cancel"),
    pytest.param(
        "POST", f"{A}/suspend-ready-q/v1", {"name": "src->site@smtp_client", "reason": "m",
                                            "duration": "300s"},
        None, ("suspend_ready_q", ("src->site@smtp_client", "m", 300.0)), {"id": RULE},
        id="suspend-ready-q",
    ),
    pytest.param("GET", f"{A}/suspend-ready-q/v1", None, None, ("suspend_ready_q_list", ()),
                 None, id="suspend-ready-q-list"),
    pytest.param("DELETE", f"{A}/suspend-ready-q/v1", {"id": RULE}, None,
                 ("suspend_ready_q_cancel", (RULE,)), {}, id="suspend-ready-q-cancel"),
    pytest.param(
        "POST", f"{A}/rebind/v1",
        {"reason": "move", "data": {"queue": "b.com"}, "domain": "a.com", "always_flush": True,
         "trigger_rebind_event": True},
        None,
        ("rebind", (AdminCriteria(domain="a.com"), "move", {"queue": "b.com"}, True, False,
                    True)),
        {"rebound": 3},
        id="rebind",
    ),
    pytest.param("GET", f"{A}/inspect-sched-q/v1", None,
                 {"queue_name": "example.com", "want_body": "true", "limit": "5"},
                 ("inspect_sched_q", ("example.com", True, 5)), None, id="inspect-sched-q"),
    pytest.param("GET", f"{A}/inspect-sched-q/v1", None, {"queue_name": "example.com"},
                 ("inspect_sched_q", ("example.com", False, None)), None,
                 id="inspect-sched-q-no-limit"),
    pytest.param("GET", f"{A}/inspect-message/v1", None, {"id": MSG.upper()},
                 ("inspect_message", (MSG, False)), None, id="inspect-message"),
    pytest.param("GET", f"{A}/ready-q-states/v1", None, [("queues", "a,b"), ("queues", "c")],
                 ("ready_q_states", (["a", "b", "c"],)),
                 {"states_by_ready_queue": {"a": {}, "b": {}, "c": {}}}, id="ready-q-states"),
    pytest.param("GET", f"{A}/ready-q-states/v1", None, None, ("ready_q_states", ([],)),
                 {"states_by_ready_queue": {}}, id="ready-q-states-all"),
    pytest.param("GET", f"{A}/queue-messages/v1", None, {"queue_name": "example.com"},
                 ("queue_messages", ("example.com", None, 100)), None, id="queue-messages"),
    pytest.param("GET", f"{A}/queue-messages/v1", None,
                 {"queue_name": "example.com", "cursor": "page2", "limit": "1000"},
                 ("queue_messages", ("example.com", "page2", 1000)), None,
                 id="queue-messages-cursor"),
    pytest.param("POST", f"{A}/retry/v1", {"id": MSG}, None, ("retry", (MSG, None, None)),
                 {"retried": 2}, id="retry-id"),
    pytest.param("POST", f"{A}/retry/v1", {"queue_name": "q"}, None,
                 ("retry", (None, "q", None)), None, id="retry-queue"),
    pytest.param("POST", f"{A}/retry/v1", {"campaign": "fall"}, None,
                 ("retry", (None, None, AdminCriteria(campaign="fall"))), None,
                 id="retry-criteria"),
    pytest.param("POST", f"{A}/retry/v1", {"everything": True}, None,
                 ("retry", (None, None, AdminCriteria())), None, id="retry-everything"),
    pytest.param("POST", f"{A}/delete-message/v1", {"id": MSG, "reason": "oops"}, None,
                 ("delete_message", (MSG, "oops")), {"id": MSG, "deleted": True},
                 id="delete-message"),
    pytest.param("POST", f"{A}/delete-message/v1", {"id": MSG}, None,
                 ("delete_message", (MSG, "deleted by an administrator")), None,
                 id="delete-message-default-reason"),
    pytest.param("GET", f"{A}/campaign-progress/v1", None, {"campaign": "fall"},
                 ("campaign_progress", ("fall", None)), None, id="campaign-progress"),
    pytest.param("GET", f"{A}/dead-letters/v1", None, {"queue_name": "q", "limit": "7"},
                 ("dead_letter_list", ("q", None, 7)), None, id="dead-letters"),
    pytest.param("GET", f"{A}/dead-letter/v1", None, {"id": MSG, "want_body": "1"},
                 ("dead_letter_show", (MSG, True)), None, id="dead-letter"),
    pytest.param("POST", f"{A}/dead-letters/requeue/v1", {"ids": [MSG]}, None,
                 ("dead_letter_requeue", ([MSG], None)), {"requeued": 1}, id="requeue-ids"),
    pytest.param("POST", f"{A}/dead-letters/requeue/v1", {"everything": True}, None,
                 ("dead_letter_requeue", (None, None)), None, id="requeue-everything"),
    pytest.param("POST", f"{A}/dead-letters/purge/v1", {"queue_name": "q"}, None,
                 ("dead_letter_purge", (None, "q")), {"purged": 1}, id="purge-queue"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "params", "seam_call", "answer"), SUCCESS)
async def test_each_endpoint_calls_the_seam_and_answers_json(
    admin_rig, method, path, body, params, seam_call, answer
):
    rig = await admin_rig()
    status, got = await call(rig.url, method, path, body, params=params)
    assert status == 200, got
    assert rig.admin.calls == [seam_call]
    if answer is not None:
        assert got == answer


async def test_expires_is_an_rfc3339_time_and_wins_over_duration(admin_rig):
    rig = await admin_rig()
    later = "2023-11-14T22:18:20Z"  # NOW + 300 s
    await call(rig.url, "POST", f"{A}/suspend/v1",
               {"reason": "r", "expires": later, "duration": "1h"})  # fmt: skip
    await call(rig.url, "POST", f"{A}/bounce/v1",
               {"reason": "r", "expires": "2023-11-14T23:13:20+01:00"})  # fmt: skip
    await call(rig.url, "POST", f"{A}/suspend-ready-q/v1",
               {"name": "n", "reason": "r", "expires": "2000-01-01T00:00:00Z"})  # fmt: skip
    durations = [args[2] for _, args in rig.admin.calls]
    assert durations == [300.0, 0.0, 0.0]


# -- bad input: each answers 4xx JSON naming what was wrong --------------------------------

BAD = [
    pytest.param("POST", f"{A}/bounce/v1", b"{not json", None, 400, "malformed JSON", None,
                 id="malformed-json"),
    pytest.param("POST", f"{A}/suspend/v1", b"[1, 2]", None, 400, "must be a JSON object",
                 None, id="not-an-object"),
    pytest.param("POST", f"{A}/bounce/v1", {"reason": "r", "domian": "x"}, None, 400,
                 "unknown field 'domian'; allowed: campaign, domain, duration, expires, "
                 "queue_names, reason, routing_domain, suppress_logging, tenant", "domian",
                 id="unknown-key"),
    pytest.param("POST", f"{A}/suspend/v1", {"reason": "r", "routing_domain": "x"}, None, 400,
                 "unknown field 'routing_domain'", "routing_domain",
                 id="suspend-has-no-routing-domain"),
    pytest.param("POST", f"{A}/bounce/v1", {"domain": "x"}, None, 400,
                 "missing field 'reason'", "reason", id="missing-reason"),
    pytest.param("POST", f"{A}/rebind/v1", {"reason": "r"}, None, 400, "missing field 'data'",
                 "data", id="rebind-missing-data"),
    pytest.param("POST", f"{A}/rebind/v1", {"reason": "r", "data": {"queue": 5}}, None, 400,
                 "expected an object of string values", "data", id="rebind-data-not-str"),
    pytest.param("POST", f"{A}/bounce/v1", {"reason": 5}, None, 400,
                 "reason: expected a string, got a number", "reason", id="wrong-type"),
    pytest.param("POST", f"{A}/bounce/v1", {"reason": "r", "queue_names": "a.com"}, None, 400,
                 "expected an array of strings", "queue_names", id="queue-names-not-list"),
    pytest.param("POST", f"{A}/bounce/v1", {"reason": "r", "suppress_logging": "yes"}, None,
                 400, "expected true or false", "suppress_logging", id="flag-not-bool"),
    pytest.param("POST", f"{A}/bounce/v1", {"reason": "r", "duration": "5 fortnights"}, None,
                 400, "invalid duration '5 fortnights'", "duration", id="bad-duration"),
    pytest.param("POST", f"{A}/suspend/v1", {"reason": "r", "duration": -5}, None,
                 400, "must not be negative", "duration", id="negative-duration"),
    pytest.param("POST", f"{A}/suspend/v1", {"reason": "r", "expires": "tomorrow"}, None,
                 400, "expected an RFC 3339 time", "expires", id="bad-expires"),
    pytest.param("POST", f"{A}/suspend/v1", {"reason": "r", "expires": "2030-01-01T00:00:00"},
                 None, 400, "needs a zone offset", "expires", id="expires-without-zone"),
    pytest.param("DELETE", f"{A}/bounce/v1", {"id": "552016f1-08e7-4e90-9da3-000000000000"},
                 None, 404, "no such bounce rule", "id", id="cancel-unknown-bounce"),
    pytest.param("DELETE", f"{A}/suspend/v1", {"id": "552016f1-08e7-4e90-9da3-000000000000"},
                 None, 404, "no such suspension", "id", id="cancel-unknown-suspend"),
    pytest.param("DELETE", f"{A}/suspend-ready-q/v1",
                 {"id": "552016f1-08e7-4e90-9da3-000000000000"}, None, 404,
                 "no such ready queue suspension", "id", id="cancel-unknown-ready-q"),
    pytest.param("DELETE", f"{A}/bounce/v1", {"id": "nope"}, None, 400,
                 "expected a rule id", "id", id="cancel-not-a-uuid"),
    pytest.param("DELETE", f"{A}/bounce/v1", {}, None, 400, "missing field 'id'", "id",
                 id="cancel-without-id"),
    pytest.param("POST", f"{A}/suspend-ready-q/v1", {"reason": "r"}, None, 400,
                 "missing field 'name'", "name", id="ready-q-missing-name"),
    pytest.param("GET", f"{A}/inspect-sched-q/v1", None, {}, 400,
                 "missing query parameter 'queue_name'", "queue_name", id="missing-query"),
    pytest.param("GET", f"{A}/inspect-sched-q/v1", None, {"queue_name": "q", "limit": "many"},
                 400, "limit: expected a whole number, got 'many'", "limit", id="bad-int"),
    pytest.param("GET", f"{A}/inspect-sched-q/v1", None, {"queue_name": "q", "limit": "-1"},
                 400, "expected 0 or more", "limit", id="negative-limit"),
    pytest.param("GET", f"{A}/inspect-message/v1", None, {"id": MSG, "want_body": "maybe"},
                 400, "want_body: expected true or false, got 'maybe'", "want_body",
                 id="bad-bool"),
    pytest.param("GET", f"{A}/inspect-message/v1", None, {"id": "xyz"}, 400,
                 "expected a spool id", "id", id="bad-spool-id"),
    pytest.param("GET", f"{A}/inspect-message/v1", None, {"id": "0" * 32}, 404,
                 "no such message", "id", id="unknown-message"),
    pytest.param("GET", f"{A}/inspect-sched-q/v1", None, {"queue_name": "missing"}, 404,
                 "no such scheduled queue: missing", "queue_name", id="unknown-queue"),
    pytest.param("GET", f"{A}/queue-messages/v1", None, {"queue_name": "q", "limit": "1001"},
                 400, "limit: expected 1 to 1000, got 1001", "limit", id="page-too-big"),
    pytest.param("GET", f"{A}/queue-messages/v1", None, {"queue_name": "q", "limit": "0"},
                 400, "expected 1 to 1000", "limit", id="page-zero"),
    pytest.param("GET", f"{A}/queue-messages/v1", None, {"queue_name": "missing"}, 404,
                 "no such scheduled queue", "queue_name", id="queue-messages-unknown"),
    pytest.param("GET", f"{A}/queue-messages/v1", None, {"queue_name": "q", "cursor": "zz"},
                 400, "cursor 'zz' does not parse", "cursor", id="seam-rejects-cursor"),
    pytest.param("GET", f"{A}/queue-messages/v1", None, [("queue_name", "a"),
                                                         ("queue_name", "b")],
                 400, "given more than once", "queue_name", id="repeated-param"),
    pytest.param("GET", f"{A}/queue-messages/v1", None, {"queue": "q"}, 400,
                 "unknown query parameter 'queue'; allowed: cursor, limit, queue_name", "queue",
                 id="unknown-param"),
    pytest.param("GET", f"{A}/bounce/v1", None, {"x": "1"}, 400, "unknown query parameter",
                 "x", id="list-takes-no-params"),
    pytest.param("POST", f"{A}/retry/v1", {}, None, 400, "say which messages to retry", None,
                 id="retry-without-selector"),
    pytest.param("POST", f"{A}/retry/v1", {"everything": False}, None, 400,
                 "say which messages to retry", None, id="retry-everything-false"),
    pytest.param("POST", f"{A}/retry/v1", {"domain": None}, None, 400,
                 "say which messages to retry", None, id="retry-null-criteria"),
    pytest.param("POST", f"{A}/retry/v1", {"id": MSG, "queue_name": "q"}, None, 400,
                 "give only one of", "queue_name", id="retry-two-forms"),
    pytest.param("POST", f"{A}/retry/v1", {"domain": "a.com", "everything": True}, None, 400,
                 "got criteria and everything", "everything", id="retry-criteria-and-all"),
    pytest.param("POST", f"{A}/delete-message/v1", {"id": "0" * 32}, None, 404,
                 "no such message", "id", id="delete-unknown"),
    pytest.param("POST", f"{A}/delete-message/v1", {"reason": "r"}, None, 400,
                 "missing field 'id'", "id", id="delete-without-id"),
    pytest.param("GET", f"{A}/dead-letter/v1", None, {"id": "0" * 32}, 404,
                 "no such dead letter", "id", id="dead-letter-unknown"),
    pytest.param("POST", f"{A}/dead-letters/requeue/v1", {}, None, 400,
                 "say which messages to requeue: ids, queue_name or everything: true", None,
                 id="requeue-without-selector"),
    pytest.param("POST", f"{A}/dead-letters/purge/v1", {"everything": False}, None, 400,
                 "say which messages to purge", None, id="purge-without-selector"),
    pytest.param("POST", f"{A}/dead-letters/purge/v1", {"ids": [], }, None, 400,
                 "expected a non-empty array of spool ids", "ids", id="purge-empty-ids"),
    pytest.param("POST", f"{A}/dead-letters/purge/v1", {"ids": [MSG], "everything": True},
                 None, 400, "give only one of", "everything", id="purge-ids-and-all"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "params", "status", "error", "field"), BAD)
async def test_bad_input_gets_a_4xx_json_answer_naming_the_field(
    admin_rig, method, path, body, params, status, error, field
):
    rig = await admin_rig()
    raw = body if isinstance(body, bytes) else None
    got_status, got = await call(rig.url, method, path, None if raw else body, params=params,
                                 raw=raw)  # fmt: skip
    assert got_status == status, got
    assert error in got["error"]
    assert got.get("field") == field
    if status == 400:
        assert not [c for c in rig.admin.calls if c[0] not in ("queue_messages",)]


async def test_a_body_over_the_limit_is_413_and_a_wrong_content_type_415(admin_rig):
    rig = await admin_rig(request_body_limit=64)
    status, got = await call(rig.url, "POST", f"{A}/bounce/v1", {"reason": "x" * 100})
    assert status == 413
    assert "length limit exceeded (64 bytes)" in got["error"]
    status, got = await call(rig.url, "POST", f"{A}/bounce/v1", {"reason": "x"},
                             headers={"Content-Type": "text/plain"})  # fmt: skip
    assert status == 415
    assert rig.admin.calls == []


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", f"{A}/suspend/v1", {"reason": "r"}),
        ("GET", f"{A}/bounce/v1", None),
        ("POST", f"{A}/retry/v1", {"everything": True}),
    ],
)
async def test_an_admin_request_error_from_the_seam_is_its_status_and_message(
    admin_rig, method, path, body
):
    fake = FakeAdmin(fail=AdminRequestError(409, "the spool is read-only now", "queue_name"))
    rig = await admin_rig(admin=fake)
    assert await call(rig.url, method, path, body) == (
        409,
        {"error": "the spool is read-only now", "field": "queue_name"},
    )


async def test_a_peer_outside_trusted_hosts_needs_basic_auth(admin_rig):
    rig = await admin_rig()
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as outside:
        status, got = await call(rig.url, "GET", f"{A}/bounce/v1", session=outside)
        assert status == 401
        assert "error" in got
        status, _ = await call(rig.url, "POST", f"{A}/bounce/v1", {"reason": "r"}, session=outside)
        assert status == 401
        assert rig.admin.calls == []
        auth = "Basic " + base64.b64encode(b"daniel:tiger").decode()
        status, got = await call(rig.url, "GET", f"{A}/suspend/v1",
                                 headers={"Authorization": auth}, session=outside)  # fmt: skip
        assert status == 200
        assert got[0]["campaign"] == "fall"


async def test_a_wrong_method_is_405_json(admin_rig):
    rig = await admin_rig()
    status, got = await call(rig.url, "PUT", f"{A}/bounce/v1", {"reason": "r"})
    assert status == 405
    assert "allowed: DELETE, GET, POST" in got["error"]
