"""One MTA from N workers (``kumoq serve --workers N``): the admin API and the metrics of a
public listener answer for every worker, not just the one the kernel gave the connection to.

Each worker also serves its routes on a private listener (127.0.0.1, an ephemeral port, only
for requests carrying the run's ``X-Kumoq-Worker-Token``; kumoq.http.server starts it and
publishes its address through ``WorkerSlot.register``). ``Fanout.wrap`` puts every admin
route, ``/metrics`` and ``/metrics.json`` of a public listener behind a handler that:

1. answers the request locally, as a lone process would;
2. sends the same request (method, path, query, body, decompressed) to every other registered
   worker's private listener with the token, all at once, each within ``PEER_TIMEOUT``;
3. merges the answers (kumoq.http.merge_admin, kumoq.http.merge_metrics) into one.

A request the receiving worker refuses as malformed (400, 413, 415) is answered at once: every
worker would say the same. A POST that makes a rule (bounce, suspend, suspend-ready-q) goes to
the others with the id the receiving worker made (``X-Kumoq-Rule-Id``), so a rule has one id
everywhere and one DELETE cancels it everywhere. queue-messages and dead-letters page with a
merged cursor that holds each worker's own (``merge_admin.page_queries``).

A worker that does not answer in time, answers 401 or 5xx, or answers something that is not
its JSON is logged as a warning and left out: the merged answer still comes, and names the
workers missing from it (whether they failed or never registered) in the header
``X-Kumoq-Workers-Unreachable: 1,3`` and, in a JSON object answer, the field
``workers_unreachable: [1, 3]``. ``X-Kumoq-Workers-Answered`` lists those included.

Imports kumoq.http.admin (its paths), .app, .auth, .body, .errors, .merge_admin,
.merge_metrics and kumoq.workers; kumoq.http.server uses it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from yarl import URL

from kumoq.http import merge_admin as ma
from kumoq.http.admin import PATHS
from kumoq.http.app import Handler, Route
from kumoq.http.auth import AuthInfo
from kumoq.http.body import read_body
from kumoq.http.errors import ApiError
from kumoq.http.merge_metrics import merge_metrics_json, merge_prometheus_text
from kumoq.workers import RULE_ID_HEADER, WORKER_TOKEN_HEADER, Peer

__all__ = ["ANSWERED_HEADER", "PEER_TIMEOUT", "UNREACHABLE_HEADER", "Answer", "Fanout", "Siblings"]

log = logging.getLogger("kumoq.http")

#: Seconds one worker has to answer a forwarded request.
PEER_TIMEOUT: Final = 10.0
UNREACHABLE_HEADER: Final = "X-Kumoq-Workers-Unreachable"
ANSWERED_HEADER: Final = "X-Kumoq-Workers-Answered"
#: A local answer with one of these is the answer: the request itself is wrong.
_MALFORMED: Final = frozenset({400, 413, 415})


class Siblings(Protocol):
    """What the fan-out needs of this worker's place (``kumoq.workers.WorkerSlot``)."""

    @property
    def index(self) -> int: ...

    @property
    def count(self) -> int: ...

    @property
    def token(self) -> str: ...

    def peers(self) -> list[Peer]: ...


@dataclass(frozen=True, slots=True)
class Answer:
    """One worker's answer as it came: status, body bytes."""

    worker: int
    status: int
    body: bytes


#: Merges the answers (the receiving worker's first) for the request's query, given every
#: worker of the run; also says which workers' answers it used.
Merge = Callable[[list[Answer], Mapping[str, str], range], tuple[web.Response, list[int]]]
Queries = Callable[[Mapping[str, str], Sequence[int]], dict[int, dict[str, str]]]


@dataclass(frozen=True, slots=True)
class Spread:
    """How one route is spread: ``merge``; ``queries`` when each worker is asked its own
    query (paging); ``names_rule`` when peers make the rule under the receiver's id."""

    merge: Merge
    queries: Queries | None = None
    names_rule: bool = False


def _json(merge: Callable[[list[ma.Reply], Mapping[str, str]], ma.Merged]) -> Merge:
    def run(
        answers: list[Answer], query: Mapping[str, str], every: range
    ) -> tuple[web.Response, list[int]]:
        replies: list[ma.Reply] = []
        for answer in answers:
            try:
                replies.append(ma.Reply(answer.worker, answer.status, json.loads(answer.body)))
            except ValueError:
                log.warning("worker %d: its answer is not JSON; left out", answer.worker)
        status, document = merge(replies, query)
        used = [r.worker for r in replies]
        missing = sorted(set(every) - set(used))
        if missing and isinstance(document, dict):
            document = {**document, "workers_unreachable": missing}
        return web.json_response(document, status=status), used

    return run


def _metrics_text(
    answers: list[Answer], query: Mapping[str, str], every: range
) -> tuple[web.Response, list[int]]:
    used = [a for a in answers if a.status == 200]
    body = merge_prometheus_text([a.body for a in used])
    response = web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
    return response, [a.worker for a in used]


def _metrics_json(
    answers: list[Answer], query: Mapping[str, str], every: range
) -> tuple[web.Response, list[int]]:
    documents: list[dict[str, Any]] = []
    used: list[int] = []
    for answer in answers:
        try:
            document = json.loads(answer.body)
        except ValueError:
            document = None
        if isinstance(document, dict):
            documents.append(document)
            used.append(answer.worker)
        else:
            log.warning("worker %d: its /metrics.json is not a JSON object; left out",
                        answer.worker)  # fmt: skip
    return web.json_response(merge_metrics_json(documents)), used


def _limit(query: Mapping[str, str]) -> int | None:
    try:
        return int(query["limit"])
    except (KeyError, ValueError):
        return None


def spreads() -> dict[tuple[str, str], Spread]:
    """Every spread route by ``(method, path)`` (docs/operations.md lists what each shows)."""
    counts = Spread(_json(lambda r, q: ma.merge_counts(r)))
    rule = Spread(counts.merge, names_rule=True)
    rules = Spread(_json(lambda r, q: ma.merge_rules(r)))
    first = Spread(_json(lambda r, q: ma.merge_first(r)))
    table: dict[tuple[str, str], Spread] = {}
    for name in ("bounce", "suspend", "suspend-ready-q"):
        table |= {("POST", PATHS[name]): rule, ("GET", PATHS[name]): rules,
                  ("DELETE", PATHS[name]): counts}  # fmt: skip
    for name in ("rebind", "retry", "delete-message", "dead-letters-requeue",
                 "dead-letters-purge"):  # fmt: skip
        table[("POST", PATHS[name])] = counts
    table |= {
        ("GET", PATHS["inspect-message"]): first,
        ("GET", PATHS["dead-letter"]): first,
        ("GET", PATHS["inspect-sched-q"]): Spread(
            _json(lambda r, q: ma.merge_sched_q(r, _limit(q)))
        ),
        ("GET", PATHS["ready-q-states"]): Spread(_json(lambda r, q: ma.merge_ready_q_states(r))),
        ("GET", PATHS["campaign-progress"]): Spread(_json(lambda r, q: ma.merge_campaigns(r))),
        ("GET", PATHS["queue-messages"]): Spread(
            _json(lambda r, q: ma.merge_page(r, q, "messages", "num_scheduled")),
            queries=ma.page_queries,
        ),
        ("GET", PATHS["dead-letters"]): Spread(
            _json(lambda r, q: ma.merge_page(r, q, "messages", "total")),
            queries=ma.page_queries,
        ),
        ("GET", "/metrics"): Spread(_metrics_text),
        ("GET", "/metrics.json"): Spread(_metrics_json),
    }
    return table


class Fanout:
    """Spreads a public listener's admin and metrics routes over the workers ``slot`` knows."""

    def __init__(self, slot: Siblings, body_limit: int, timeout: float = PEER_TIMEOUT) -> None:
        self._slot = slot
        self._body_limit = body_limit
        self._timeout = timeout

    def wrap(self, routes: Sequence[Route]) -> list[Route]:
        """``routes`` with every spread one behind the fan-out; the others as they are."""
        table = spreads()
        return [
            Route(r.method, r.path, self._spread(r.handler, table[(r.method, r.path)]), r.public)
            if (r.method, r.path) in table
            else r
            for r in routes
        ]

    def _spread(self, handler: Handler, spread: Spread) -> Handler:
        async def handle(request: web.Request, auth: AuthInfo) -> web.StreamResponse:
            return await self._fan_out(request, auth, handler, spread, self._slot.peers())

        return handle

    async def _fan_out(
        self,
        request: web.Request,
        auth: AuthInfo,
        handler: Handler,
        spread: Spread,
        peers: list[Peer],
    ) -> web.StreamResponse:
        me, original = self._slot.index, request.query
        body = await read_body(request, self._body_limit) if request.body_exists else None
        queries: dict[int, dict[str, str]] | None = None
        if spread.queries is not None:
            try:
                queries = spread.queries(request.query, [me, *(p.index for p in peers)])
            except ValueError as exc:
                raise ApiError(400, f"cursor: {exc}", field="cursor") from None
            request = request.clone(rel_url=request.rel_url.with_query(queries[me]))
        try:
            local = await handler(request, auth)
        except ApiError as exc:
            local = exc.response()
        if local.status in _MALFORMED or not isinstance(local, web.Response):
            return local
        headers = {WORKER_TOKEN_HEADER: self._slot.token}
        if body is not None:
            headers["Content-Type"] = request.headers.get("Content-Type", "application/json")
        if spread.names_rule and local.status == 200:
            rule_id = _rule_id(local)
            if rule_id is not None:
                headers[RULE_ID_HEADER] = rule_id
        answered: list[Answer] = []
        if peers:
            timeout = aiohttp.ClientTimeout(total=self._timeout)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                asked = [self._ask(session, peer, request, queries, body, headers)
                         for peer in peers]  # fmt: skip
                answered = [a for a in await asyncio.gather(*asked) if a is not None]
        answers = [Answer(me, local.status, _body(local)), *answered]
        every = range(self._slot.count)
        response, used = spread.merge(answers, original, every)
        got = sorted(set(used))
        missing = sorted(set(every) - set(got))
        response.headers[ANSWERED_HEADER] = ",".join(map(str, got))
        if missing:
            response.headers[UNREACHABLE_HEADER] = ",".join(map(str, missing))
        return response

    async def _ask(
        self,
        session: aiohttp.ClientSession,
        peer: Peer,
        request: web.Request,
        queries: dict[int, dict[str, str]] | None,
        body: bytes | None,
        headers: dict[str, str],
    ) -> Answer | None:
        query: Any = request.query if queries is None else queries[peer.index]
        url = URL(peer.admin_url).with_path(request.path).with_query(query)
        try:
            async with session.request(request.method, url, data=body, headers=headers) as got:
                content = await got.read()
                status = got.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("worker %d (%s) did not answer %s %s: %s", peer.index, peer.admin_url,
                        request.method, request.path, str(exc) or type(exc).__name__)  # fmt: skip
            return None
        if status == 401 or status >= 500:
            log.warning("worker %d (%s) answered %s %s with %d; left out", peer.index,
                        peer.admin_url, request.method, request.path, status)  # fmt: skip
            return None
        return Answer(peer.index, status, content)


def _body(response: web.Response) -> bytes:
    body = response.body
    return bytes(body) if isinstance(body, bytes | bytearray) else b""


def _rule_id(response: web.Response) -> str | None:
    try:
        document = json.loads(_body(response))
    except ValueError:
        return None
    rule_id = document.get("id") if isinstance(document, dict) else None
    return rule_id if isinstance(rule_id, str) else None
