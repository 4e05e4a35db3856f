"""Two real ``kumoq serve`` workers of one run (``kumoq serve --workers 2``, their environment
set by hand as the supervisor sets it): the admin API and the metrics of either worker answer
for both (kumoq.http.fanout).

Each worker gets its own listeners here (port 0), so that a test can choose which worker it
talks to; under the supervisor they share one port and the kernel chooses.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kumoq.testing.harness import KumoqDaemon
from tests.e2e.admin_support import A, admin_policy, call, running_sink

pytestmark = pytest.mark.integration

_RECEIVED = re.compile(r'^total_messages_received\{service="esmtp_listener"\} (\S+)$', re.M)


@pytest.fixture
def two_workers(
    kumoq: Callable[..., KumoqDaemon], tmp_path: Path
) -> Iterator[tuple[KumoqDaemon, KumoqDaemon]]:
    registry = tmp_path / "registry"
    registry.mkdir(mode=0o700)
    token = secrets.token_hex(16)
    with running_sink() as sink:
        policy = admin_policy(sink.port)
        workers = []
        for index in range(2):
            env = {"KUMOQ_WORKER_INDEX": str(index), "KUMOQ_WORKERS": "2",
                   "KUMOQ_WORKERS_DIR": str(registry), "KUMOQ_WORKERS_TOKEN": token}  # fmt: skip
            workers.append(kumoq(policy, name=f"worker{index}", env=env))
        wait_until(lambda: all((registry / f"worker-{i}.json").exists() for i in range(2)))
        yield workers[0], workers[1]


def wait_until(check: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def scrape(daemon: KumoqDaemon) -> str:
    import http.client

    host, port = daemon.listeners["http"]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        conn.close()


def received(text: str) -> float:
    match = _RECEIVED.search(text)
    return float(match.group(1)) if match else 0.0


def test_metrics_of_either_worker_count_the_mail_of_both(
    two_workers: tuple[KumoqDaemon, KumoqDaemon],
) -> None:
    one, two = two_workers
    for _ in range(3):
        one.send("s@example.com", ["a@one.test"])
    for _ in range(2):
        two.send("s@example.com", ["b@two.test"])
    wait_until(lambda: received(scrape(one)) == 5)
    for daemon in (one, two):
        text = scrape(daemon)
        assert received(text) == 5
        assert text.count("# TYPE total_messages_received counter") == 1
    assert call(one, "GET", "/metrics.json")[1]["total_messages_received"]["value"] == {
        "service": {"esmtp_listener": 5}
    }  # fmt: skip


def test_a_suspension_made_through_one_worker_is_one_rule_on_both(
    two_workers: tuple[KumoqDaemon, KumoqDaemon],
) -> None:
    one, two = two_workers
    status, rule = call(one, "POST", f"{A}/suspend/v1", {"domain": "held.test", "reason": "pm"})
    assert status == 200
    status, listed = call(two, "GET", f"{A}/suspend/v1")
    assert status == 200
    assert [(r["id"], r["domain"], r["reason"]) for r in listed] == [
        (rule["id"], "held.test", "pm")
    ]  # fmt: skip

    # each worker holds its own share of held.test's mail
    one.send("s@example.com", ["x@held.test"])
    two.send("s@example.com", ["y@held.test"])
    wait_until(lambda: call(one, "GET", f"{A}/inspect-sched-q/v1?queue_name=held.test")[0] == 200
               and call(one, "GET", f"{A}/inspect-sched-q/v1?queue_name=held.test")[1]
               ["num_scheduled"] == 2)  # fmt: skip
    status, queue = call(two, "GET", f"{A}/queue-messages/v1?queue_name=held.test&limit=1")
    assert (status, queue["num_scheduled"], len(queue["messages"])) == (200, 2, 2)  # 1 per worker
    ids = {m["id"] for m in queue["messages"]}
    while queue["next_cursor"] is not None:
        path = f"{A}/queue-messages/v1?queue_name=held.test&limit=1&cursor={queue['next_cursor']}"
        status, queue = call(one, "GET", path)
        assert status == 200
        ids |= {m["id"] for m in queue["messages"]}
    assert len(ids) == 2

    assert call(two, "DELETE", f"{A}/suspend/v1", {"id": rule["id"]}) == (200, {})
    for daemon in (one, two):
        assert call(daemon, "GET", f"{A}/suspend/v1") == (200, [])
    assert call(one, "DELETE", f"{A}/suspend/v1", {"id": rule["id"]})[0] == 404


def test_a_worker_that_is_gone_is_named_and_the_other_still_answers(
    two_workers: tuple[KumoqDaemon, KumoqDaemon],
) -> None:
    one, two = two_workers
    two.stop()
    status, answer = call(one, "POST", f"{A}/retry/v1", {"everything": True})
    assert status == 200
    assert answer["retried"] == 0
    assert answer["workers_unreachable"] == [1]
