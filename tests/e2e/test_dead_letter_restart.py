"""Dead letters and admin state across a restart of a real ``kumoq serve``: a dead letter is
still listed (not queued, not delivered) after a graceful stop and after kill -9, and can be
requeued then; a message's last response survives the restart too."""

from __future__ import annotations

import pytest

from tests.e2e.admin_support import (
    A,
    delivered,
    ok,
    reception_ids,
    wait_for_record,
)
from tests.e2e.admin_support import admin_policy as make_policy

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_dead_letter_survives_a_restart_and_is_requeued_after_it(kumoq, sink, how):
    daemon = kumoq(make_policy(sink.port))
    daemon.send("s@example.com", ["permfail@dead.test", "tempfail@dead.test"])
    ids = reception_ids(daemon, 2)
    wait_for_record(daemon, "Bounce", "permfail@dead.test")
    wait_for_record(daemon, "TransientFailure", "tempfail@dead.test")
    daemon.wait_for(
        lambda: ok(daemon, "GET", f"{A}/dead-letters/v1")["total"] == 1, 10, what="dead letter"
    )
    if how == "kill":
        daemon.kill()
    else:
        assert daemon.stop() == 0
    daemon.start()
    assert any("1 dead letters kept" in line for line in daemon.stderr_lines)

    listing = ok(daemon, "GET", f"{A}/dead-letters/v1")
    assert [m["id"] for m in listing["messages"]] == [ids["permfail@dead.test"]]
    assert listing["messages"][0]["record_type"] == "Bounce"
    assert "550" in listing["messages"][0]["response"]
    # the transiently failed one is queued again with its attempt and its last response
    waiting = ok(daemon, "GET", f"{A}/inspect-message/v1?id={ids['tempfail@dead.test']}")
    assert waiting["message"]["num_attempts"] == 1
    assert "450" in waiting["waiting"]["detail"]

    sink.refuse.clear()
    assert ok(daemon, "POST", f"{A}/dead-letters/requeue/v1", {"everything": True}) == {
        "requeued": 1
    }
    delivered(daemon, sink, "permfail@dead.test")
    assert sink.recipients().count("permfail@dead.test") == 1

    def steps() -> list[str]:
        records = daemon.records("DeadLetter")
        mine = [r for r in records if r["id"] == ids["permfail@dead.test"]]
        return [r["response"]["content"].split(" ")[0] for r in mine]

    daemon.wait_for(lambda: len(steps()) == 2, 10, what="the requeued record")
    assert steps() == ["kept", "requeued"]
