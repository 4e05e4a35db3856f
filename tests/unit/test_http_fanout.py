"""``kumoq serve --workers N`` over real HTTP on 127.0.0.1, two workers in one process, each
with a fake ``AdminSeam``: the private listener lets in only the run's token, and a public
listener's admin and metrics answers are every worker's, merged (kumoq.http.fanout).

tests/e2e/test_workers_fanout.py runs two real ``kumoq serve`` processes.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kumoq.clock import FakeClock
from kumoq.config.http import HttpListenerConfig
from kumoq.http import HttpListener, HttpServices, start_http_listener, start_worker_listener
from kumoq.http.fanout import ANSWERED_HEADER, UNREACHABLE_HEADER
from kumoq.metrics import REGISTRY, ExactCounter
from kumoq.workers import RULE_ID_HEADER, WORKER_TOKEN_HEADER, WorkerSlot
from tests.unit.admin_support import RULE, FakeAdmin, _Policy, _Reception

pytestmark = pytest.mark.integration

A = "/api/admin"
TOKEN = "s3cret-token"


@dataclass
class Worker:
    admin: FakeAdmin
    public: HttpListener
    private: HttpListener

    @staticmethod
    def url(listener: HttpListener) -> str:
        assert listener.address is not None
        return f"http://127.0.0.1:{listener.address[1]}"


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[list[Worker]]:
    started: list[Worker] = []
    cfg = HttpListenerConfig.from_mapping({"listen": "127.0.0.1:0", "hostname": "h.test"})
    for index in range(2):
        slot = WorkerSlot(index, 2, tmp_path, TOKEN)
        fake = FakeAdmin()
        services = HttpServices(_Reception(), _Policy(), FakeClock(), admin=fake, slot=slot)
        public = await start_http_listener(cfg, services)
        private = await start_worker_listener(cfg, services, slot)
        assert private is not None
        started.append(Worker(fake, public, private))
    yield started
    for worker in started:
        await worker.public.close()
        await worker.private.close()


async def request(url: str, method: str, path: str, body: Any = None,
                  headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:  # fmt: skip
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url + path, json=body, headers=headers) as got,
    ):
        text = await got.text()
        document = await got.json(content_type=None) if "json" in got.content_type else text
        return got.status, document, got.headers


async def test_the_private_listener_answers_only_the_runs_token(
    workers: list[Worker], tmp_path: Path
) -> None:
    private = Worker.url(workers[1].private)
    assert (tmp_path / "worker-1.json").read_text().count(private) == 1  # registered
    for headers in ({}, {WORKER_TOKEN_HEADER: "wrong"}, {WORKER_TOKEN_HEADER: TOKEN + "x"},
                    {"Authorization": "Basic ZGFuaWVsOnRpZ2Vy"}):  # fmt: skip
        for path in ("/metrics", f"{A}/suspend/v1"):
            status, _document, _ = await request(private, "GET", path, headers=headers)
            assert status == 401, (headers, path)
    status, _, _ = await request(private, "GET", "/metrics", headers={WORKER_TOKEN_HEADER: TOKEN})
    assert status == 200
    # injection is not served there
    status, _, _ = await request(private, "POST", "/api/inject/v1", {},
                                 headers={WORKER_TOKEN_HEADER: TOKEN})  # fmt: skip
    assert status == 404
    await workers[1].private.close()
    assert not (tmp_path / "worker-1.json").exists()  # unregistered at close


async def test_a_rule_id_is_taken_only_from_a_sibling(workers: list[Worker]) -> None:
    other = "11111111-2222-3333-4444-555555555555"
    body = {"reason": "pm", "domain": "x.test"}
    await request(Worker.url(workers[1].private), "POST", f"{A}/suspend/v1", body,
                  headers={WORKER_TOKEN_HEADER: TOKEN, RULE_ID_HEADER: other})  # fmt: skip
    assert workers[1].admin.rule_ids == [other]
    workers[1].admin.rule_ids.clear()
    await workers[0].private.close()  # worker 1 alone: its public listener asks nobody
    status, _, _ = await request(Worker.url(workers[1].public), "POST", f"{A}/suspend/v1", body,
                                 headers={RULE_ID_HEADER: other})  # fmt: skip
    assert status == 200
    assert workers[1].admin.rule_ids == [None]


async def test_a_rule_made_through_one_worker_is_made_on_every_worker_under_one_id(
    workers: list[Worker],
) -> None:
    body = {"reason": "pm", "domain": "x.test"}
    status, document, headers = await request(Worker.url(workers[0].public), "POST",
                                              f"{A}/suspend/v1", body)  # fmt: skip
    assert (status, document) == (200, {"id": RULE})
    assert workers[0].admin.rule_ids == [None]
    assert workers[1].admin.rule_ids == [RULE]
    assert headers[ANSWERED_HEADER] == "0,1"
    assert UNREACHABLE_HEADER not in headers
    assert [c[0] for c in workers[1].admin.calls] == ["suspend"]
    # a malformed request is refused by the receiving worker alone
    status, document, _ = await request(Worker.url(workers[1].public), "POST",
                                        f"{A}/suspend/v1", {"domain": "x"})  # fmt: skip
    assert (status, document["field"]) == (400, "reason")
    assert len(workers[0].admin.calls) == 1


async def test_lists_and_counts_merge_and_a_missing_worker_is_named(
    workers: list[Worker], tmp_path: Path
) -> None:
    rule = {"id": RULE, "reason": "x", "bounced": {"a.test": 1}, "total_bounced": 1}
    workers[0].admin.answers["bounce_list"] = [rule]
    workers[1].admin.answers["bounce_list"] = [{**rule, "bounced": {"a.test": 2},
                                                "total_bounced": 2}]  # fmt: skip
    status, document, _ = await request(Worker.url(workers[1].public), "GET", f"{A}/bounce/v1")
    assert document == [{**rule, "bounced": {"a.test": 3}, "total_bounced": 3}]

    workers[0].admin.answers["retry"] = {"retried": 2}
    workers[1].admin.answers["retry"] = {"retried": 5}
    await workers[1].private.close()  # worker 1 gone: worker 0 answers alone, and says so
    status, document, headers = await request(Worker.url(workers[0].public), "POST",
                                              f"{A}/retry/v1", {"everything": True})  # fmt: skip
    assert (status, document["retried"]) == (200, 2)
    assert document["workers_unreachable"] == [1]
    assert headers[UNREACHABLE_HEADER] == "1"

    with socket.socket() as closed:  # registered, but nothing listens there
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    (tmp_path / "worker-1.json").write_text(
        f'{{"index": 1, "pid": 1, "admin_url": "http://127.0.0.1:{port}"}}'
    )
    status, document, headers = await request(Worker.url(workers[0].public), "POST",
                                              f"{A}/retry/v1", {"everything": True})  # fmt: skip
    assert (status, document["retried"], document["workers_unreachable"]) == (200, 2, [1])


async def test_queue_messages_page_through_every_worker(workers: list[Worker]) -> None:
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = "?queue_name=q&limit=5" + (f"&cursor={cursor}" if cursor else "")
        status, document, _ = await request(Worker.url(workers[0].public), "GET",
                                            f"{A}/queue-messages/v1{query}")  # fmt: skip
        assert status == 200
        assert document["num_scheduled"] == 4
        seen += [m["id"] for m in document["messages"]]
        pages += 1
        cursor = document["next_cursor"]
        if cursor is None:
            break
    assert pages == 2
    assert len(seen) == 4
    assert len(set(seen)) == 2
    path = f"{A}/queue-messages/v1?queue_name=q&cursor=page2"  # a worker's own cursor
    status, document, _ = await request(Worker.url(workers[0].public), "GET", path)
    assert (status, document["field"]) == (400, "cursor")


async def test_metrics_are_the_sum_of_the_workers(workers: list[Worker]) -> None:
    counter = ExactCounter("fanout_test_total_things", "things", "kind", registry=REGISTRY)
    try:
        counter.inc("a", 3)
        _, text, _ = await request(Worker.url(workers[1].public), "GET", "/metrics")
        assert 'fanout_test_total_things{kind="a"} 6.0\n' in text  # both workers: one registry
        assert text.count("# TYPE fanout_test_total_things counter") == 1
        _, document, _ = await request(Worker.url(workers[1].public), "GET", "/metrics.json")
        assert document["fanout_test_total_things"]["value"] == {"kind": {"a": 6.0}}
    finally:
        REGISTRY.unregister(counter)
