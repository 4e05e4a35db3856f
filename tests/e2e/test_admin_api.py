"""The admin API of a real ``kumoq serve`` through real HTTP (issue 11): every endpoint's
success and bad input, rules that apply to messages arriving after the call, suspensions that
hold delivery until cancelled, per-message control, campaign progress, dead letters, and 401
for a peer outside ``trusted_hosts``.

Mail goes out to an aiosmtpd sink (tests/e2e/admin_support.py); the policy retries after an
hour, so whatever moves here was moved by an admin call.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.admin_support import (
    AUTH,
    A,
    call,
    campaign_headers,
    delivered,
    ok,
    reception_ids,
    records_for,
    wait_for_record,
)
from tests.e2e.admin_support import admin_policy as make_policy

pytestmark = pytest.mark.integration


def test_bounce_applies_to_messages_arriving_after_the_call_until_cancelled(kumoq, sink):
    daemon = kumoq(make_policy(sink.port))
    rule = ok(daemon, "POST", f"{A}/bounce/v1",
              {"domain": "bounce.test", "reason": "cleaning up", "duration": "10m"})  # fmt: skip
    assert set(rule) == {"id", "bounced", "total_bounced"}

    daemon.send("s@example.com", ["late@bounce.test", "fine@other.test"])
    record = wait_for_record(daemon, "AdminBounce", "late@bounce.test")
    assert record["response"]["code"] == 551
    assert record["response"]["content"] == "Administrator bounced with reason: cleaning up"
    delivered(daemon, sink, "fine@other.test")
    assert "late@bounce.test" not in sink.recipients()

    (entry,) = ok(daemon, "GET", f"{A}/bounce/v1")
    assert entry["id"] == rule["id"]
    assert (entry["domain"], entry["reason"], entry["total_bounced"]) == (
        "bounce.test", "cleaning up", 1
    )  # fmt: skip
    assert entry["duration"].startswith(("9m", "10m"))

    assert ok(daemon, "DELETE", f"{A}/bounce/v1", {"id": rule["id"]}) == {}
    assert call(daemon, "DELETE", f"{A}/bounce/v1", {"id": rule["id"]})[0] == 404
    assert ok(daemon, "GET", f"{A}/bounce/v1") == []
    daemon.send("s@example.com", ["again@bounce.test"])
    delivered(daemon, sink, "again@bounce.test")

    # bad input: each a 4xx JSON answer naming the field
    for body, status, field in [
        ({"domain": "x"}, 400, "reason"),
        ({"reason": "r", "domains": "x"}, 400, "domains"),
        ({"reason": "r", "duration": "5 parsecs"}, 400, "duration"),
        ({"reason": "r", "expires": "yesterday"}, 400, "expires"),
        ({"reason": "r", "queue_names": "one"}, 400, "queue_names"),
    ]:
        got = call(daemon, "POST", f"{A}/bounce/v1", body)
        assert (got[0], got[1].get("field")) == (status, field), got
    assert call(daemon, "POST", f"{A}/bounce/v1", b"{oops")[0] == 400
    assert call(daemon, "DELETE", f"{A}/bounce/v1", {"id": "x"})[1]["field"] == "id"


def test_suspend_holds_delivery_and_cancel_resumes_it(kumoq, sink):
    daemon = kumoq(make_policy(sink.port))
    rule = ok(daemon, "POST", f"{A}/suspend/v1", {"domain": "held.test", "reason": "pm"})
    daemon.send("s@example.com", ["a@held.test", "b@held.test", "c@held.test"])
    ids = reception_ids(daemon, 3)
    for rcpt in ids:
        failure = wait_for_record(daemon, "TransientFailure", rcpt)
        assert failure["response"]["content"].endswith("scheduled queue is suspended: pm")
    time.sleep(0.5)
    assert sink.recipients() == []

    (entry,) = ok(daemon, "GET", f"{A}/suspend/v1")
    assert (entry["id"], entry["domain"], entry["reason"]) == (rule["id"], "held.test", "pm")

    # why is it waiting? the suspension says so
    answer = ok(daemon, "GET", f"{A}/inspect-message/v1?id={ids['a@held.test']}")
    assert answer["id"] == ids["a@held.test"]
    assert answer["queue"] == "held.test"
    assert answer["message"]["recipient"] == "a@held.test"
    assert answer["message"]["num_attempts"] == 1
    assert "data" not in answer["message"]
    assert answer["waiting"]["reason"] == "scheduled"
    assert "its queue is suspended" in answer["waiting"]["detail"]
    assert "pm" in answer["waiting"]["detail"]
    with_body = ok(daemon, "GET", f"{A}/inspect-message/v1?id={ids['a@held.test']}&want_body=1")
    assert "This is the body." in with_body["message"]["data"]

    sched = ok(daemon, "GET", f"{A}/inspect-sched-q/v1?queue_name=held.test&limit=2")
    assert sched["queue_name"] == "held.test"
    assert sched["num_scheduled"] == 3
    assert len(sched["messages"]) == 2

    # a queue's messages, a page at a time
    first = ok(daemon, "GET", f"{A}/queue-messages/v1?queue_name=held.test&limit=2")
    assert first["num_scheduled"] == 3
    assert len(first["messages"]) == 2
    assert first["next_cursor"]
    second = ok(daemon, "GET", f"{A}/queue-messages/v1?queue_name=held.test&limit=2"
                               f"&cursor={first['next_cursor']}")  # fmt: skip
    assert second["next_cursor"] is None
    listed = [m["id"] for m in first["messages"] + second["messages"]]
    assert sorted(listed) == sorted(ids.values())
    assert {m["last_response"] for m in first["messages"]} == {
        "451 4.4.4 KumoMTA internal: scheduled queue is suspended: pm"
    }

    assert ok(daemon, "DELETE", f"{A}/suspend/v1", {"id": rule["id"]}) == {}
    for rcpt in ids:
        delivered(daemon, sink, rcpt)
    assert ok(daemon, "GET", f"{A}/suspend/v1") == []

    for method, path, body, status, field in [
        ("DELETE", "suspend/v1", {"id": rule["id"]}, 404, "id"),
        ("POST", "suspend/v1", {"reason": "r", "routing_domain": "x"}, 400, "routing_domain"),
        ("POST", "suspend/v1", {"reason": 1}, 400, "reason"),
    ]:
        got = call(daemon, method, f"{A}/{path}", body)
        assert (got[0], got[1].get("field")) == (status, field), got
    for query, status, field in [
        ("inspect-message/v1?id=" + "0" * 32, 404, "id"),
        ("inspect-message/v1?id=nope", 400, "id"),
        ("inspect-message/v1?id=" + "0" * 32 + "&want_body=maybe", 400, "want_body"),
        ("inspect-sched-q/v1?queue_name=nowhere.test", 404, "queue_name"),
        ("inspect-sched-q/v1?queue_name=held.test&limit=lots", 400, "limit"),
        ("queue-messages/v1?queue_name=held.test&cursor=garbage", 400, "cursor"),
        ("queue-messages/v1?queue_name=held.test&limit=5000", 400, "limit"),
        ("queue-messages/v1?queue_name=nowhere.test", 404, "queue_name"),
        ("queue-messages/v1", 400, "queue_name"),
    ]:
        got = call(daemon, "GET", f"{A}/{query}")
        assert (got[0], got[1].get("field")) == (status, field), (query, got)


def test_suspend_ready_q_then_retry_makes_a_waiting_message_go_now(kumoq, sink):
    daemon = kumoq(make_policy(sink.port))
    rule = ok(daemon, "POST", f"{A}/suspend-ready-q/v1",
              {"name": sink.ready_queue, "reason": "maintenance", "duration": "1h"})  # fmt: skip
    daemon.send("s@example.com", ["r@ready.test"])
    msg_id = reception_ids(daemon, 1)["r@ready.test"]
    failure = wait_for_record(daemon, "TransientFailure", "r@ready.test")
    assert failure["response"]["code"] == 451
    (entry,) = ok(daemon, "GET", f"{A}/suspend-ready-q/v1")
    assert (entry["id"], entry["name"], entry["reason"]) == (rule["id"], sink.ready_queue,
                                                             "maintenance")  # fmt: skip
    states = ok(daemon, "GET", f"{A}/ready-q-states/v1")["states_by_ready_queue"]
    assert "suspended" in states[sink.ready_queue]
    named = ok(daemon, "GET", f"{A}/ready-q-states/v1?queues=other,{sink.ready_queue}")
    assert list(named["states_by_ready_queue"]) == [sink.ready_queue]

    assert ok(daemon, "DELETE", f"{A}/suspend-ready-q/v1", {"id": rule["id"]}) == {}
    assert call(daemon, "DELETE", f"{A}/suspend-ready-q/v1", {"id": rule["id"]})[0] == 404
    time.sleep(0.5)
    assert sink.recipients() == []  # it waits for its retry, an hour away...
    assert ok(daemon, "POST", f"{A}/retry/v1", {"id": msg_id}) == {"retried": 1}
    delivered(daemon, sink, "r@ready.test")  # ...unless told to go now

    # the other selectors, with nothing left to retry
    assert ok(daemon, "POST", f"{A}/retry/v1", {"queue_name": "ready.test"}) == {"retried": 0}
    assert ok(daemon, "POST", f"{A}/retry/v1", {"domain": "ready.test"}) == {"retried": 0}
    assert ok(daemon, "POST", f"{A}/retry/v1", {"everything": True}) == {"retried": 0}
    for body, field in [({}, None), ({"id": msg_id, "everything": True}, "everything"),
                        ({"id": "short"}, "id")]:  # fmt: skip
        got = call(daemon, "POST", f"{A}/retry/v1", body)
        assert (got[0], got[1].get("field")) == (400, field), got
    assert call(daemon, "POST", f"{A}/retry/v1", {"id": "0" * 32})[0] == 404
    got = call(daemon, "POST", f"{A}/suspend-ready-q/v1", {"reason": "r"})
    assert (got[0], got[1]["field"]) == (400, "name")


def test_rebind_moves_waiting_messages_to_their_new_queue(kumoq, sink):
    daemon = kumoq(make_policy(sink.port))
    ok(daemon, "POST", f"{A}/suspend/v1", {"domain": "held.test", "reason": "pm"})
    daemon.send("s@example.com", ["m@held.test"])
    wait_for_record(daemon, "TransientFailure", "m@held.test")
    move = {"reason": "move it", "domain": "held.test", "data": {"queue": "moved.test"}}
    answer = ok(daemon, "POST", f"{A}/rebind/v1", move)
    assert answer == {"rebound": 1}
    rebind = wait_for_record(daemon, "AdminRebind", "m@held.test")
    assert "moved.test" in rebind["response"]["content"]
    delivered(daemon, sink, "m@held.test")
    assert wait_for_record(daemon, "Delivery", "m@held.test")["queue"] == "moved.test"
    for body, field in [
        ({"reason": "r"}, "data"),
        ({"reason": "r", "data": {"a": 1}}, "data"),
        ({"reason": "r", "data": {}, "queue_names": ["x"]}, "queue_names"),
    ]:
        got = call(daemon, "POST", f"{A}/rebind/v1", body)
        assert (got[0], got[1].get("field")) == (400, field), got


def test_delete_message_and_campaign_progress(kumoq, sink):
    daemon = kumoq(make_policy(sink.port))
    headers = campaign_headers("fall", "news")
    for rcpt in ("tempfail1@r.test", "tempfail2@r.test", "permfail@r.test", "ok@r.test"):
        daemon.send("s@example.com", [rcpt], headers=headers)
    ids = reception_ids(daemon, 4)
    wait_for_record(daemon, "Delivery", "ok@r.test")
    wait_for_record(daemon, "Bounce", "permfail@r.test")
    wait_for_record(daemon, "TransientFailure", "tempfail1@r.test")
    wait_for_record(daemon, "TransientFailure", "tempfail2@r.test")
    (row,) = ok(daemon, "GET", f"{A}/campaign-progress/v1?campaign=fall")
    assert row == {"campaign": "fall", "tenant": "news", "received": 4, "delivered": 1,
                   "transient_failures": 2, "bounced": 1, "expired": 0, "pending": 2}  # fmt: skip
    assert ok(daemon, "GET", f"{A}/campaign-progress/v1?campaign=winter") == []

    doomed = ids["tempfail2@r.test"]
    assert ok(daemon, "POST", f"{A}/delete-message/v1", {"id": doomed, "reason": "stale"}) == {
        "id": doomed, "deleted": True
    }  # fmt: skip
    record = wait_for_record(daemon, "AdminBounce", "tempfail2@r.test")
    assert record["response"]["content"] == "Administrator bounced with reason: stale"
    page = ok(daemon, "GET", f"{A}/queue-messages/v1?queue_name=fall:news@r.test")
    assert [m["id"] for m in page["messages"]] == [ids["tempfail1@r.test"]]
    got = call(daemon, "POST", f"{A}/delete-message/v1", {"id": doomed})
    assert (got[0], got[1]["field"]) == (404, "id")
    assert call(daemon, "POST", f"{A}/delete-message/v1", {"reason": "x"})[0] == 400

    sink.refuse.clear()
    assert ok(daemon, "POST", f"{A}/retry/v1", {"queue_name": "fall:news@r.test"}) == {
        "retried": 1
    }  # fmt: skip
    delivered(daemon, sink, "tempfail1@r.test")
    daemon.wait_for(lambda: ok(daemon, "GET", f"{A}/campaign-progress/v1?tenant=news")[0]
                    ["delivered"] == 2, what="two deliveries counted")  # fmt: skip
    (row,) = ok(daemon, "GET", f"{A}/campaign-progress/v1?tenant=news")
    assert (row["delivered"], row["bounced"], row["pending"]) == (2, 2, 0)
    got = call(daemon, "GET", f"{A}/campaign-progress/v1?campain=fall")
    assert (got[0], got[1]["field"]) == (400, "campain")


def test_dead_letters_are_kept_listed_requeued_and_purged(kumoq, sink):
    daemon = kumoq(make_policy(sink.port))
    daemon.send("s@example.com", ["permfail1@dead.test", "permfail2@dead.test"])
    ids = reception_ids(daemon, 2)
    for rcpt in ids:
        wait_for_record(daemon, "Bounce", rcpt)
    listing = ok(daemon, "GET", f"{A}/dead-letters/v1")
    assert listing["total"] == 2
    assert sorted(m["id"] for m in listing["messages"]) == sorted(ids.values())
    first = next(m for m in listing["messages"] if m["recipient"] == "permfail1@dead.test")
    assert first["queue"] == "dead.test"
    assert first["record_type"] == "Bounce"
    assert "550" in first["response"]
    paged = ok(daemon, "GET", f"{A}/dead-letters/v1?queue_name=dead.test&limit=1")
    assert len(paged["messages"]) == 1
    assert paged["next_cursor"]

    shown = ok(daemon, "GET", f"{A}/dead-letter/v1?id={first['id']}&want_body=true")
    assert shown["record_type"] == "Bounce"
    assert "This is the body." in shown["message"]["data"]
    inspected = ok(daemon, "GET", f"{A}/inspect-message/v1?id={first['id']}")
    assert inspected["state"] == "dead_letter"
    assert inspected["waiting"]["reason"] == "dead_letter"

    sink.refuse.clear()
    assert ok(daemon, "POST", f"{A}/dead-letters/requeue/v1", {"ids": [first["id"]]}) == {
        "requeued": 1
    }  # fmt: skip
    delivered(daemon, sink, "permfail1@dead.test")
    assert ok(daemon, "GET", f"{A}/dead-letters/v1")["total"] == 1
    assert ok(daemon, "POST", f"{A}/dead-letters/purge/v1", {"queue_name": "dead.test"}) == {
        "purged": 1
    }  # fmt: skip
    assert ok(daemon, "GET", f"{A}/dead-letters/v1") == {"messages": [], "total": 0,
                                                         "next_cursor": None}  # fmt: skip
    assert "permfail2@dead.test" not in sink.recipients()
    assert records_for(daemon, "Delivery", "permfail2@dead.test") == []
    assert ok(daemon, "POST", f"{A}/dead-letters/purge/v1", {"everything": True}) == {"purged": 0}

    for path, body, field in [
        ("requeue", {}, None),
        ("purge", {"everything": False}, None),
        ("purge", {"ids": []}, "ids"),
        ("requeue", {"ids": [first["id"]], "queue_name": "dead.test"}, "queue_name"),
    ]:
        got = call(daemon, "POST", f"{A}/dead-letters/{path}/v1", body)
        assert (got[0], got[1].get("field")) == (400, field), got
    got = call(daemon, "GET", f"{A}/dead-letter/v1?id={first['id']}")
    assert (got[0], got[1]["field"]) == (404, "id")
    assert call(daemon, "GET", f"{A}/dead-letters/v1?cursor=zzz")[0] == 400


def test_outside_trusted_hosts_the_admin_api_needs_basic_auth(kumoq, sink):
    daemon = kumoq(make_policy(sink.port, http="request_body_limit = 1024"))
    for method, path, body in [
        ("GET", f"{A}/bounce/v1", None),
        ("POST", f"{A}/suspend/v1", {"reason": "r", "domain": "d"}),
        ("POST", f"{A}/retry/v1", {"everything": True}),
        ("GET", f"{A}/dead-letters/v1", None),
        ("GET", "/api/openapi.json", None),
    ]:
        status, answer = call(daemon, method, path, body, source="127.0.0.2")
        assert status == 401, (path, answer)
        assert "error" in answer
    assert ok(daemon, "GET", f"{A}/suspend/v1") == []  # nothing was made
    status, answer = call(daemon, "GET", f"{A}/bounce/v1", headers=AUTH, source="127.0.0.2")
    assert (status, answer) == (200, [])

    # the served OpenAPI document names every admin path
    doc = ok(daemon, "GET", "/api/openapi.json")
    assert doc["openapi"].startswith("3.1")
    assert f"{A}/dead-letters/requeue/v1" in doc["paths"]
    assert set(doc["paths"][f"{A}/bounce/v1"]) == {"get", "post", "delete"}

    status, answer = call(daemon, "POST", f"{A}/bounce/v1", {"reason": "x" * 2000})
    assert status == 413
    assert "length limit exceeded" in answer["error"]
    status, answer = call(daemon, "POST", f"{A}/bounce/v1", b"[]")
    assert (status, "JSON object" in answer["error"]) == (400, True)
