"""The merges of the workers' answers (``kumoq serve --workers N``): given each worker's admin
answer or metrics, the one answer of the MTA (kumoq.http.merge_admin, .merge_metrics)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from kumoq.http import merge_admin as ma
from kumoq.http.merge_metrics import merge_metrics_json, merge_prometheus_text
from kumoq.http.metrics import metrics_json, prometheus_text
from kumoq.metrics import ExactCounter


def R(worker: int, document: object, status: int = 200) -> ma.Reply:
    return ma.Reply(worker, status, document)


NOT_FOUND = {"error": "no such message: x", "field": "id"}


# -- actions applied everywhere --------------------------------------------------------------


def test_counts_are_summed_over_the_workers_that_succeeded() -> None:
    got = ma.merge_counts([
        R(0, {"id": "r1", "bounced": {"a.test": 2}, "total_bounced": 2}),
        R(1, {"id": "r1", "bounced": {"a.test": 1, "b.test": 4}, "total_bounced": 5}),
        R(2, {"error": "boom"}, 409),
    ])  # fmt: skip
    assert got == (200, {"id": "r1", "bounced": {"a.test": 3, "b.test": 4}, "total_bounced": 7})
    assert ma.merge_counts([R(0, {"retried": 1}), R(1, {"retried": 0})]) == (200, {"retried": 1})
    deleted = {"id": "ab", "deleted": True}
    assert ma.merge_counts([R(0, NOT_FOUND, 404), R(1, deleted)]) == (200, deleted)
    assert ma.merge_counts([R(0, {}), R(1, {})]) == (200, {})  # a DELETE known to both


def test_with_no_success_a_telling_failure_beats_a_404() -> None:
    busy = {"error": "message x is being delivered now"}
    assert ma.merge_counts([R(0, NOT_FOUND, 404), R(1, busy, 409)]) == (409, busy)
    assert ma.merge_counts([R(0, NOT_FOUND, 404), R(1, NOT_FOUND, 404)]) == (404, NOT_FOUND)


def test_one_message_is_the_answer_of_the_worker_that_has_it() -> None:
    found = {"id": "ab", "state": "scheduled"}
    assert ma.merge_first([R(0, NOT_FOUND, 404), R(1, found)]) == (200, found)
    assert ma.merge_first([R(0, NOT_FOUND, 404), R(1, NOT_FOUND, 404)])[0] == 404


# -- lists -------------------------------------------------------------------------------------


def test_rules_are_listed_once_by_id_with_their_counters_summed() -> None:
    rule = {"id": "r1", "reason": "x", "duration": "4m 59s", "bounced": {"a": 1},
            "total_bounced": 1}  # fmt: skip
    other = {"id": "r2", "reason": "y", "duration": "1m", "bounced": {}, "total_bounced": 0}
    status, rows = ma.merge_rules([
        R(0, [rule]),
        R(1, [{**rule, "duration": "4m 58s", "bounced": {"a": 2, "b": 1}, "total_bounced": 3},
              other]),
    ])  # fmt: skip
    assert status == 200
    assert rows == [{**rule, "bounced": {"a": 3, "b": 1}, "total_bounced": 4}, other]
    assert ma.merge_rules([R(0, []), R(1, [])]) == (200, [])


def test_campaign_rows_are_summed_per_campaign_and_tenant() -> None:
    row = {"campaign": "c", "tenant": "t", "received": 2, "delivered": 1, "pending": 1}
    _status, rows = ma.merge_campaigns([
        R(0, [row]),
        R(1, [{**row, "received": 3, "delivered": 3, "pending": 0},
              {**row, "tenant": "u"}]),
    ])  # fmt: skip
    assert rows == [{**row, "received": 5, "delivered": 4, "pending": 1}, {**row, "tenant": "u"}]


def test_a_scheduled_queue_is_the_sum_of_its_shares() -> None:
    def msg(i: str, due: str | None) -> dict[str, object]:
        return {"id": i, "message": {"due": due}}

    share = {"queue_name": "q", "queue_config": {"a": 1}, "delayed_metric": 2,
             "num_scheduled": 2,
             "messages": [msg("a", "2030-01-01T00:00:02Z"), msg("b", None)]}  # fmt: skip
    other = {**share, "queue_config": {"a": 2}, "delayed_metric": 1, "num_scheduled": 1,
             "messages": [msg("c", "2030-01-01T00:00:01Z")]}  # fmt: skip
    _status, doc = ma.merge_sched_q([R(0, share), R(1, other), R(2, NOT_FOUND, 404)], None)
    assert (doc["num_scheduled"], doc["delayed_metric"], doc["queue_config"]) == (3, 3, {"a": 1})
    assert [m["id"] for m in doc["messages"]] == ["b", "c", "a"]  # due now first, then by due
    assert [m["id"] for m in ma.merge_sched_q([R(0, share), R(1, other)], 2)[1]["messages"]] == [
        "b", "c"
    ]  # fmt: skip
    assert ma.merge_sched_q([R(0, NOT_FOUND, 404)], None)[0] == 404


def test_ready_queue_states_join_each_workers_failures() -> None:
    suspended = {"context": "pm", "since": None, "expires": "2030-01-01T00:00:00Z"}
    got = ma.merge_ready_q_states([
        R(0, {"states_by_ready_queue": {"rq": {"suspended": suspended}}}),
        R(1, {"states_by_ready_queue": {
            "rq": {"suspended": suspended,
                   "connection_failures": {"context": "3 connection failures in a row"}},
            "other": {"connection_failures": {"context": "1 connection failures in a row"}},
        }}),
    ])  # fmt: skip
    assert got == (200, {"states_by_ready_queue": {
        "rq": {"suspended": suspended,
               "connection_failures": {"context": "worker 1: 3 connection failures in a row"}},
        "other": {"connection_failures": {"context": "worker 1: 1 connection failures in a row"}},
    }})  # fmt: skip


# -- paging ------------------------------------------------------------------------------------


def test_a_merged_cursor_round_trips_and_a_foreign_one_is_refused() -> None:
    cursor = ma.encode_cursor({1: "s42", 0: "p7"})
    assert cursor.startswith(ma.CURSOR_PREFIX)
    assert ma.decode_cursor(cursor) == {0: "p7", 1: "s42"}
    for bad in ("s42", "w.!!!", "w.WzFd"):  # a worker's own; not base64; a JSON list
        with pytest.raises(ValueError, match="not a next_cursor"):
            ma.decode_cursor(bad)


def _page(ids: list[str], count: int, next_cursor: str | None) -> dict[str, object]:
    return {"queue_name": "q", "num_scheduled": count, "messages": ids,
            "next_cursor": next_cursor}  # fmt: skip


def test_paging_reads_every_worker_to_its_end_and_each_message_once() -> None:
    queues = {0: [f"a{i}" for i in range(5)], 1: [f"b{i}" for i in range(2)], 2: []}

    def worker_page(worker: int, query: dict[str, str]) -> ma.Reply:
        if worker == 2:
            return R(2, NOT_FOUND, 404)  # does not know the queue
        limit, start = int(query["limit"]), int(query.get("cursor", "0"))
        ids = queues[worker][start : start + limit]
        more = start + limit < len(queues[worker])
        return R(worker, _page(ids, len(queues[worker]), str(start + limit) if more else None))

    seen: list[str] = []
    query: dict[str, str] = {"queue_name": "q", "limit": "2"}
    pages = 0
    while True:
        asked = ma.page_queries(query, [0, 1, 2])
        status, doc = ma.merge_page(
            [worker_page(w, q) for w, q in asked.items()], query, "messages", "num_scheduled"
        )
        assert status == 200
        assert doc["num_scheduled"] == 7
        seen += doc["messages"]
        pages += 1
        if doc["next_cursor"] is None:
            break
        query = {**query, "cursor": doc["next_cursor"]}
    assert sorted(seen) == sorted(queues[0] + queues[1])
    assert len(seen) == 7
    assert pages == 3


def test_a_worker_read_to_its_end_is_asked_only_for_its_counts() -> None:
    cursor = ma.encode_cursor({0: "s9"})
    asked = ma.page_queries({"queue_name": "q", "limit": "50", "cursor": cursor}, [0, 1])
    assert asked == {0: {"queue_name": "q", "limit": "50", "cursor": "s9"},
                     1: {"queue_name": "q", "limit": "1"}}  # fmt: skip
    with pytest.raises(ValueError, match="not a next_cursor"):
        ma.page_queries({"cursor": "s9"}, [0, 1])
    _status, doc = ma.merge_page(
        [R(0, _page(["x"], 1, None)), R(1, _page(["not-again"], 4, "s1"))],
        {"cursor": cursor}, "messages", "num_scheduled",
    )  # fmt: skip
    assert (doc["messages"], doc["num_scheduled"], doc["next_cursor"]) == (["x"], 5, None)


def test_dead_letter_pages_sum_their_totals() -> None:
    _status, doc = ma.merge_page(
        [R(0, {"messages": [1], "total": 3, "next_cursor": "c"}),
         R(1, {"messages": [2], "total": 1, "next_cursor": None})],
        {}, "messages", "total",
    )  # fmt: skip
    assert (doc["messages"], doc["total"]) == ([1, 2], 4)
    assert ma.decode_cursor(doc["next_cursor"]) == {0: "c"}


# -- metrics -----------------------------------------------------------------------------------


def _registry(
    delivered: dict[str, float], queued: float, latencies: list[float]
) -> CollectorRegistry:
    registry = CollectorRegistry()
    exact = ExactCounter("total_messages_delivered", "delivered", "service", registry=registry)
    for service, n in delivered.items():
        exact.inc(service, n)
    Gauge("scheduled_count", "queued", registry=registry).set(queued)
    errors = Counter("spool_errors", "errors", ["kind"], registry=registry)
    errors.labels(kind='a "quoted",{x}').inc(2)
    histogram = Histogram("save_latency", "latency", registry=registry, buckets=(0.1, 1.0))
    for value in latencies:
        histogram.observe(value)
    return registry


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_prometheus_text_sums_every_sample_and_keeps_exact_names() -> None:
    one = _registry({"smtp": 3, "lua": 1}, 5, [0.05, 0.5])
    two = _registry({"smtp": 4}, 2, [2.0])
    merged = merge_prometheus_text([prometheus_text(one), prometheus_text(two)])
    text = merged.decode()
    assert text.count("# TYPE total_messages_delivered counter") == 1
    assert text.count("# HELP scheduled_count queued") == 1
    assert 'total_messages_delivered{service="smtp"} 7.0\n' in text  # its own name, no _total
    assert 'total_messages_delivered{service="lua"} 1.0\n' in text
    samples = _samples(merged)  # (prometheus-client's parser adds _total to counter samples)
    assert samples[("total_messages_delivered_total", (("service", "smtp"),))] == 7
    assert samples[("scheduled_count", ())] == 7
    assert samples[("spool_errors_total", (("kind", 'a "quoted",{x}'),))] == 4
    assert samples[("save_latency_bucket", (("le", "0.1"),))] == 1
    assert samples[("save_latency_bucket", (("le", "1.0"),))] == 2
    assert samples[("save_latency_bucket", (("le", "+Inf"),))] == 3
    assert samples[("save_latency_count", ())] == 3
    assert samples[("save_latency_sum", ())] == pytest.approx(2.55)


def test_prometheus_text_keeps_what_only_one_worker_has() -> None:
    one = b'# HELP a A\n# TYPE a gauge\na{x="1"} 1.0\n'
    two = b'# HELP a A\n# TYPE a gauge\na{x="2"} 2.0\n# HELP b B\n# TYPE b gauge\nb 3.0\n'
    assert merge_prometheus_text([one, two]) == (
        b'# HELP a A\n# TYPE a gauge\na{x="1"} 1.0\na{x="2"} 2.0\n# HELP b B\n# TYPE b gauge\n'
        b"b 3.0\n"
    )
    assert merge_prometheus_text([b"x_created 5.0\n", b"x_created 3.0\n"]) == b"x_created 3.0\n"


def test_metrics_json_sums_each_shape() -> None:
    one = _registry({"smtp": 3, "lua": 1}, 5, [0.05, 0.5])
    two = _registry({"smtp": 4}, 2, [2.0])
    merged = merge_metrics_json([metrics_json(one), metrics_json(two)])
    assert merged["total_messages_delivered"]["value"] == {"service": {"smtp": 7, "lua": 1}}
    assert merged["scheduled_count"]["value"] == 7
    assert merged["spool_errors_total"]["value"] == {"kind": {'a "quoted",{x}': 4}}
    latency = merged["save_latency"]["value"]
    assert (latency["count"], latency["bucket"]) == (3, [[0.1, 1], [1.0, 2]])
    assert latency["avg"] == pytest.approx(2.55 / 3)
    many = [{"a": "1", "b": "2", "@": 1.0}]
    assert merge_metrics_json([{"m": {"type": "gauge", "value": many}},
                               {"m": {"type": "gauge", "value": many}}]) == {
        "m": {"type": "gauge", "value": [{"a": "1", "b": "2", "@": 2.0}]}
    }  # fmt: skip
